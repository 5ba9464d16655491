"""What is learnt about the user comes from the user's own words (fast layer: no model, no subprocess)."""

from __future__ import annotations

from datetime import datetime

import pytest

from personavlm_cli.core.learning import grounding, patterns
from personavlm_cli.core.learning import profile as profile_schema
from personavlm_cli.core.prompts import MAX_RETRIEVALS, SEARCH_MARK, Context, GenericProfile
from personavlm_cli.core.recall import Hit
from personavlm_cli.core.response_stage import Reasoning, ResponseStage
from tests.kit import ScriptedModel, memory


@pytest.mark.parametrize("message, kind, key", [
    ("My parrot is called Mango and he whistles all day.", "semantic", "Mango"),
    ("I work as a court stenographer.", "semantic", "stenographer"),
    ("I really dislike olives.", "semantic", "olives"),
    ("In August I am going hiking in the Dolomites.", "procedural", "Dolomites"),
    ("I go hiking every Saturday morning", "procedural", "Saturday"),
    ("We adopted a puppy named Biscuit last week!", "semantic", "Biscuit"),
])
def test_statements_about_the_user_are_kept_in_their_own_words(message, kind, key):
    found = patterns.statements_of(message)
    assert [s.kind for s in found] == [kind]
    assert key in found[0].text and grounding.supported(found[0].text, [message])


@pytest.mark.parametrize("message", [
    "Good evening!", "What is my parrot called?", "Suggest something relaxing.", "Tell me a joke.",
    "Long day at work.", "Can you remind me what I said?", "It is raining here.", "Hi!",
])
def test_small_talk_questions_and_requests_teach_nothing(message):
    assert patterns.statements_of(message) == []
    assert patterns.profile_of(message) == {}


def test_the_core_profile_has_a_schema_and_values_cut_from_the_users_sentences():
    said = ("My name is Dana Whitfield. I am 34 years old. I work as a court stenographer. I live in Sapporo. "
            "My brother Caspar is a pilot. My parrot is called Mango. I speak French and German.")
    profile = patterns.profile_of(said)
    assert profile == {"name": "Dana Whitfield", "age": "34", "occupation": "court stenographer",
                       "location": "Sapporo", "family": "brother Caspar", "pets": "parrot Mango",
                       "languages": "French, German"}
    assert set(profile) <= set(profile_schema.FIELDS)
    assert all(grounding.supported(v, [said]) for v in profile.values())
    facts, sources = profile_schema.merge_profile({}, {}, profile, "turn_1")
    facts, sources = profile_schema.merge_profile(facts, sources, {"family": "sister Ines", "location": "Lisbon"}, "turn_2")
    assert facts["family"] == "brother Caspar, sister Ines" and facts["location"] == "Lisbon"
    assert sources["location"] == "turn_2" and sources["name"] == "turn_1"
    assert list(facts) == [k for k in profile_schema.FIELDS if k in facts], "fields in schema order"


def test_a_vegetarian_is_not_an_occupation():
    assert "occupation" not in patterns.profile_of("I am a vegetarian.")
    assert patterns.profile_of("I'm a retired pharmacist.")["occupation"] == "retired pharmacist"


def test_a_change_names_what_it_replaces():
    assert patterns.changes_what("I switched from Sprite to Coke", "I love Sprite, I drink it every day")
    assert not patterns.changes_what("I switched from Sprite to Coke", "My cat is called Zorblax")
    assert patterns.changes_what("I no longer eat meat", "I eat meat every day")
    assert not patterns.changes_what("I love Coke", "I love Sprite"), "no change cue: both stand"


def test_support_is_by_the_users_words_never_the_assistants():
    user = ["I love Sprite, I drink it every day"]
    assert grounding.supported("I drink Sprite every day", user)
    assert not grounding.supported("occupation: sprite", user)
    assert not grounding.supported("welcome to lisbon: the city's history", user)
    assert not grounding.supported("1234567890", user)


# -- retrieve-first with a scripted model (control flow only; the real model is in tests/test_chat_e2e.py)


def _no_decision(messages, schema):
    raise AssertionError("retrieve-first makes no decision call")


class Scripted(ScriptedModel):
    """The kit's model: the next scripted reply for each call, one character at a time; no decision call."""

    def __init__(self, replies):
        super().__init__(replies, default="fine", by="char", json=_no_decision)


def _memory(i, text):
    return memory(text, id=f"sem_{i:010d}", at=datetime(2026, 5, 1, 9, 0).astimezone())


def _ctx(**kw):
    kw.setdefault("message", "What is my parrot called?")
    return Context(user="ada", now=datetime(2026, 5, 8, 10, 0).astimezone(), **kw)


def _stage(model, found):
    queries = []

    def recall(query, k):
        queries.append(query)
        return [Hit(memory=m, score=1.0, signals={"lexical": {"rank": 1, "score": 1.0}}) for m in found.pop(0)] \
            if found else []

    return ResponseStage(model, GenericProfile(), recall, lambda ms: ms), queries


def test_retrieve_first_recalls_before_the_model_and_streams_the_answer_in_one_call():
    model = Scripted(["Your parrot is Mango."])
    stage, queries = _stage(model, [[_memory(1, "My parrot is called Mango")]])
    r = Reasoning()
    text = "".join(stage.respond(_ctx(), r))
    assert text == "Your parrot is Mango."
    assert len(model.prompts) == 1 and model.json_calls == 0, "no decision call before the answer"
    assert queries[0].keywords == "What is my parrot called?"
    assert [s.action for s in r.steps] == ["retrieve", "answer"]
    assert "My parrot is called Mango" in model.prompts[0][-1]["content"], "the memory is in the answer prompt"


def test_the_model_may_ask_for_one_more_search_and_the_answer_follows():
    model = Scripted([f"{SEARCH_MARK} parrot name\n", "It is Mango."])
    stage, queries = _stage(model, [[], [_memory(2, "My parrot is called Mango")]])
    r = Reasoning()
    assert "".join(stage.respond(_ctx(), r)) == "It is Mango."
    assert [q.keywords for q in queries] == ["What is my parrot called?", "parrot name"]
    assert [s.action for s in r.steps] == ["retrieve", "retrieve", "answer"]
    assert SEARCH_MARK not in "".join(m["content"] for m in model.prompts[1] if m["role"] == "assistant")


def test_searches_stop_at_the_limit_and_an_answer_is_forced_never_empty():
    model = Scripted([f"{SEARCH_MARK} more\n"] * MAX_RETRIEVALS + ["Here is what I found."])
    stage, queries = _stage(model, [])
    r = Reasoning()
    text = "".join(stage.respond(_ctx(), r))
    assert len(queries) == MAX_RETRIEVALS
    assert r.steps[-1].action == "answer" and r.steps[-1].forced
    assert text == "Here is what I found."
    # A model that still gives nothing: NoAnswer, and no stand-in text is ever produced as an answer.
    from personavlm_cli.core.errors import NoAnswer

    model = Scripted([f"{SEARCH_MARK} more\n"] * 10 + [""])
    stage, _ = _stage(model, [])
    pieces = []
    with pytest.raises(NoAnswer):
        for piece in stage.respond(_ctx(), Reasoning()):
            pieces.append(piece)
    assert "".join(pieces).strip() == ""


def test_without_long_term_memory_nothing_is_recalled():
    model = Scripted(["Hello!"])
    stage, queries = _stage(model, [])
    r = Reasoning()
    assert "".join(stage.respond(_ctx(has_long_term_memory=False), r)) == "Hello!"
    assert queries == [] and [s.action for s in r.steps] == ["answer"]


def test_a_short_answer_that_looks_like_the_mark_is_still_an_answer():
    model = Scripted(["SEA"])
    stage, _ = _stage(model, [[]])
    assert "".join(stage.respond(_ctx(), Reasoning())) == "SEA"


def test_the_history_is_laid_out_exactly_as_it_was_sent():
    """What changes least comes first, and an earlier turn is rendered with the memories it was sent
    with, so the next prompt starts with the previous one (llama.cpp reuses that prefix)."""
    from personavlm_cli.core.store import new_memory

    profile = GenericProfile()
    at = datetime(2026, 5, 8, 10, 0).astimezone()
    mem = _memory(3, "My parrot is called Mango")
    first = _ctx(core={"pets": "parrot Mango"})
    sent = profile.answer_messages(first, [mem])
    user = new_memory("turn", first.message, at, role="user")
    answer = new_memory("turn", "Mango.", at, role="assistant")
    second = Context(user="ada", now=at.replace(minute=5), message="And my job?", recent=[user, answer],
                     core={"pets": "parrot Mango"}, recalled_for={user.id: [mem]})
    follow = profile.answer_messages(second, [])
    assert follow[: len(sent)] == sent
    assert follow[len(sent)]["content"] == "Mango."
    assert "10:00" not in follow[0]["content"], "the clock is not in the system text"


def test_a_message_made_only_of_questions_tells_nothing_about_the_user():
    from personavlm_cli.core.learning.grounding import only_asks

    assert only_asks("When did I go to the support group?")
    assert only_asks("When did I go? / What did I say about it?")  # a summary of questions
    assert not only_asks("My dog is sick. What should I do?")
    assert not only_asks("I went to a support group yesterday.")
    assert not only_asks("")


def test_the_users_earlier_questions_are_not_recalled_as_memories():
    from personavlm_cli.core.store import new_memory

    at = datetime(2026, 5, 2, 9, 0).astimezone()
    asked = new_memory("turn", "What is my parrot called?", at, role="user", session_id="s1")
    told = new_memory("turn", "My parrot is called Mango and he whistles.", at, role="user", session_id="s1")
    model = Scripted(["Mango."])
    stage, _ = _stage(model, [[asked, told]])
    r = Reasoning()
    "".join(stage.respond(_ctx(), r))
    assert [m.id for m in r.used] == [told.id]
    prompt = model.prompts[0][-1]["content"]
    assert "whistles" in prompt and prompt.count("What is my parrot called?") == 1  # the message itself only


def test_the_compact_answer_stops_where_the_model_starts_a_new_context_block():
    model = Scripted(["It is Mango."])
    stage, _ = _stage(model, [[_memory(1, "My parrot is called Mango")]])
    stage.profile = GenericProfile(style="compact")
    "".join(stage.respond(_ctx(), Reasoning()))
    assert "\nContext:" in model.samplings[-1]["stop"] and "\nQuestion:" in model.samplings[-1]["stop"]


def test_the_compact_layout_sends_the_profile_fields_a_message_asks_about_even_when_recall_finds_nothing():
    """A small model's prompt has no system text: "where do I live?" must still reach the current core
    profile (the turns that said so may be forgotten or superseded), and only the fields asked about."""
    core = {"occupation": "teacher", "location": "Marseille", "family": ["sister Ana"], "pets": ["cat Miso"]}
    model = Scripted(["You live in Marseille and teach."])
    stage, _ = _stage(model, [[]])
    stage.profile = GenericProfile(style="compact")
    r = Reasoning()
    "".join(stage.respond(_ctx(message="Where do I live and what is my job?", core=core), r))
    prompt = model.prompts[0][-1]["content"]
    assert "[now] occupation: teacher; location: Marseille." in prompt
    assert "Ana" not in prompt and "Miso" not in prompt
    assert r.profile == ["occupation: teacher", "location: Marseille"]
    assert r.to_dict()["profile"] == r.profile


@pytest.mark.parametrize("message, expected", [
    ("How is Ana doing these days?", ["family: sister Ana"]),  # a value the message names
    ("What do you know about me?", ["occupation: teacher", "location: Marseille", "family: sister Ana"]),
    ("Suggest a film for tonight.", []),
    ("What did I cook on Sunday?", []),
])
def test_profile_facts_follow_what_the_message_asks(message, expected):
    from personavlm_cli.core.prompts import profile_facts

    core = {"occupation": "teacher", "location": "Marseille", "family": ["sister Ana"]}
    assert profile_facts(core, message) == expected


def test_the_full_layout_keeps_the_profile_in_the_system_text_only():
    core = {"location": "Marseille"}
    model = Scripted(["Marseille."])
    stage, _ = _stage(model, [[]])
    r = Reasoning()
    "".join(stage.respond(_ctx(message="Where do I live?", core=core), r))
    assert "> location: Marseille" in model.prompts[0][0]["content"]
    assert "[now]" not in model.prompts[0][-1]["content"] and r.profile == []


@pytest.mark.parametrize("reply, shown", [
    ("Answer: It is Mango.", "It is Mango."),
    ("A: Mango.", "Mango."),
    ("A cat named Mango.", "A cat named Mango."),
    ("Answers vary: Mango.", "Answers vary: Mango."),
    ("A", "A"),
])
def test_a_reply_that_opens_with_the_prompts_answer_label_is_shown_without_it(reply, shown):
    model = Scripted([reply])
    stage, _ = _stage(model, [[_memory(1, "My parrot is called Mango")]])
    stage.profile = GenericProfile(style="compact")
    assert "".join(stage.respond(_ctx(), Reasoning())).strip() == shown
