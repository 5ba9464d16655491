"""Memory that stays true as life changes (issue 24, items 1, 2, 3): the newest statement wins recall,
only the user's statements are facts, everyday phrasing fills the profile. Fast layer: a real store on
disk (SQLite, Chroma, the ONNX encoder) and a scripted chat model; the real model's turn is in
tests/test_changes_e2e.py. The sentences here are other people's words than the issue's examples."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from personavlm_cli.core import sentences
from personavlm_cli.core.gate import ModelGate
from personavlm_cli.core.learning import changes, grounding, patterns
from personavlm_cli.core.recall import Query, recall
from tests.conftest import run_in_process
from tests.kit import ScriptedModel, real_store

DATA = Path(__file__).parent / "data"
T0 = datetime(2026, 1, 12, 9, 0).astimezone()


def say(store, lines: list[tuple[int, str]], replies: list[str] | None = None, style: str = "compact"):
    """Each (days after T0, message) through the real chat turn (rules learning right after the
    answer); the model answers from ``replies`` in order. Returns the prompts the model was given."""
    from personavlm_cli.core.assistant import Assistant
    from personavlm_cli.core.conversation import Conversation

    replies = list(replies or [])
    prompts = []
    for day, text in lines:
        at = T0 + timedelta(days=day, minutes=len(prompts))
        model = ScriptedModel([replies.pop(0) if replies else "I see."])
        assistant = Assistant(store, model, "ada", model_lock=ModelGate(), prompt_style=style)
        conv = Conversation(assistant, clock=lambda at=at: at, sampling={"max_tokens": 32})
        turn = conv.send(text)
        "".join(turn)
        turn.finish()
        prompts.append(model.prompts)
    return prompts


def order(store, question: str, k: int = 8) -> list[str]:
    return [h.memory.text for h in recall(store, Query(text=question), k=k)]


def first(texts: list[str], word: str) -> int:
    return next((i for i, t in enumerate(texts) if word.lower() in t.lower()), 99)


# -- item 3: sentences and everyday phrasing ----------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("I see Dr. Hoffmann on Mondays. She is kind.", ["I see Dr. Hoffmann on Mondays.", "She is kind."]),
    ("My hero is J. R. R. Tolkien. Yours?", ["My hero is J. R. R. Tolkien.", "Yours?"]),
    ("The rent went up 4.5 percent. Ouch!", ["The rent went up 4.5 percent.", "Ouch!"]),
    ("I get up at 6.15 a.m. every day. It is hard.", ["I get up at 6.15 a.m. every day.", "It is hard."]),
    ("i'm tired. i slept badly", ["i'm tired.", "i slept badly"]),
    ("We flew to the U.S. on Friday", ["We flew to the U.S. on Friday"]),
    ("I live on Elm St. near the park.\nIt's quiet.", ["I live on Elm St. near the park.", "It's quiet."]),
])
def test_sentences_end_where_a_sentence_ends_not_after_abbreviations_initials_decimals_or_times(text, expected):
    assert sentences.split(text) == expected


@pytest.mark.parametrize("message, kind", [
    ("What's my nephew called?", "question"),
    ("whats my nephews name", "question"),
    ("So, where do I work again", "question"),
    ("Hey, could you tell me my shoe size", "question"),
    ("remind me to water the ferns", "request"),
    ("Please book a table for two.", "request"),
    ("I need you to draft an email to my landlord.", "request"),
    ("If I had a boat I would sail to Corsica.", "hypothetical"),
    ("Suppose I quit my job tomorrow.", "hypothetical"),
    ("I wish I lived by the sea.", "hypothetical"),
])
def test_questions_requests_and_hypotheticals_are_never_learnt(message, kind):
    assert sentences.kind(message) == kind
    assert patterns.statements_of(message) == []
    assert patterns.profile_of(message) == {}
    assert grounding.not_a_fact(message) == kind


@pytest.mark.parametrize("statement", ["When I was a kid I lived in Lagos.", "I'd been a cook for years.",
                                       "Will is my best friend and I see him often."])
def test_statements_that_open_like_questions_or_wishes_are_still_statements(statement):
    assert sentences.kind(statement) == "statement"


@pytest.mark.parametrize("message, want", [
    ("hiya, I'm Bogdan Ilic", {"name": "Bogdan Ilic"}),
    ("i'm 58", {"age": "58"}),
    ("I'm 44, and I drive a taxi.", {"age": "44"}),
    ("My tortoise Speedy is older than me.", {"pets": "tortoise Speedy"}),
    ("Our daughter Noor is six.", {"family": "daughter Noor"}),
    ("I teach at St. Catherine's.", {"occupation": "teaches at St. Catherine's"}),
    ("I work as a midwife at Mt. Sinai hospital.", {"occupation": "midwife at Mt. Sinai hospital"}),
    ("my name's rosa delgado and i'm 39", {"name": "Rosa Delgado", "age": "39"}),
    ("I'm Omar, I'm 61 and I live in Tunis.", {"name": "Omar", "age": "61", "location": "Tunis"}),
    ("greta here, 19, student nurse", {"name": "Greta", "age": "19", "occupation": "student nurse"}),
    ("We have two dogs, Rolo and Fudge.", {"pets": "dog Rolo, dog Fudge"}),
    ("i live in ghent with my partner Sam", {"location": "Ghent", "family": "partner Sam"}),
])
def test_the_core_profile_learns_from_everyday_phrasing(message, want):
    got = patterns.profile_of(message)
    assert {k: got.get(k) for k in want} == want
    assert all(grounding.supported(v, [message]) for v in got.values())


@pytest.mark.parametrize("message, field", [
    ("I'm Portuguese.", "name"), ("I'm 20 minutes away.", "age"), ("I'm 100% sure.", "age"),
    ("I work as a waiter at night.", None), ("I'm Fine, thanks.", "name"),
])
def test_everyday_phrasing_does_not_invent_values(message, field):
    got = patterns.profile_of(message)
    if field:
        assert field not in got
    else:
        assert got == {"occupation": "waiter"}


def _score(path: Path) -> tuple[int, int, list[str]]:
    items = json.loads(path.read_text())["items"]
    misses = []
    for it in items:
        got = patterns.profile_of(it["say"])
        if not (all(got.get(k) == v for k, v in it["want"].items()) and not any(k in got for k in it.get("none", []))):
            misses.append(it["say"])
    return len(items) - len(misses), len(items), misses


def test_the_grammar_scores_on_phrasings_it_was_not_tuned_on():
    """docs/learning.md: round 1 was scored (21 of 24), then tuned on; the held-out set never was (18 of 20)."""
    ok, n, misses = _score(DATA / "phrasings_round1.json")
    assert ok == n, misses
    ok, n, misses = _score(DATA / "phrasings_heldout.json")
    assert ok / n >= 0.85, misses


# -- item 1: the newest statement wins recall -----------------------------------------------------

def test_a_move_makes_the_old_home_past_in_recall_prompt_and_profile(store):
    say(store, [(0, "I rent a small flat in Ghent, I live in Ghent since 2019."),
                (0, "My sister Olga lives in Riga."),
                (40, "Big change: we relocated to Antwerp in February!")])
    ranked = order(store, "Where do I live these days?")
    assert first(ranked, "Antwerp") < first(ranked, "Ghent") < 99
    assert store.records.list(types=["core"])[-1].meta["facts"]["location"] == "Antwerp"
    old = next(t for t in store.records.list(types=["turn"]) if "Ghent" in t.text)
    assert old.meta["past"]["reason"] and old.meta["past"]["until"].startswith("2026-02-21")
    sister = next(t for t in store.records.list(types=["turn"]) if "Olga" in t.text)
    assert "past" not in sister.meta, "another person's home is not the user's"
    # The learnt statement is closed; the turn stays for time questions.
    closed = [m for m in store.records.list(types=["semantic"], include_superseded=True) if "Ghent" in m.text]
    assert closed and not any(m.current for m in closed)
    ranked = order(store, "Where did I live before, in 2025?")
    assert first(ranked, "Ghent") < 99

    prompts = say(store, [(41, "Where do I live now?")])
    shown = prompts[0][-1][-1]["content"]
    assert "Antwerp" in shown
    if "Ghent" in shown:
        assert "past: true only until 21 February 2026" in shown
        assert shown.index("Antwerp") < shown.index("Ghent") or "past" in shown.split("Ghent")[0][-80:]


def test_a_new_value_without_any_announcement_makes_the_old_one_past(store):
    say(store, [(0, "I work at Bosch in the testing lab."), (1, "I drink green tea every morning."),
                (30, "I work at Siemens."), (31, "I drink espresso.")])
    turns = {t.text: t for t in store.records.list(types=["turn"]) if t.role == "user"}
    assert "workplace" in turns["I work at Bosch in the testing lab."].meta["past"]["reason"]
    assert "drink" in turns["I drink green tea every morning."].meta["past"]["reason"]
    assert "past" not in turns["I work at Siemens."].meta
    ranked = order(store, "Where do I work?")
    assert first(ranked, "Siemens") < first(ranked, "Bosch")
    ranked = order(store, "What do I drink in the morning?")
    assert first(ranked, "espresso") < first(ranked, "green tea")


def test_an_announced_change_of_a_named_person_makes_only_their_statement_past(store):
    say(store, [(0, "My son Ilya studies in Leiden."), (0, "I usually take the bus to work."),
                (50, "Ilya graduated and moved to Delft."), (51, "These days I cycle to work.")])
    turns = {t.text: t for t in store.records.list(types=["turn"]) if t.role == "user"}
    assert "past" in turns["My son Ilya studies in Leiden."].meta
    assert "past" in turns["I usually take the bus to work."].meta
    ranked = order(store, "Where does Ilya live?")
    assert first(ranked, "Delft") < first(ranked, "Leiden")
    ranked = order(store, "How do I get to work?")
    assert first(ranked, "cycle") < first(ranked, "bus")


def test_statements_on_other_subjects_are_not_made_past(store):
    say(store, [(0, "I work as a welder at Damen shipyard."), (0, "I love my work colleagues."),
                (20, "I sold my car, these days I walk to work.")])
    turns = {t.text: t for t in store.records.list(types=["turn"]) if t.role == "user"}
    assert not any("past" in t.meta for t in turns.values())


def test_a_pet_that_died_leaves_the_profile_and_the_others_stay(store):
    say(store, [(0, "We have two rabbits, Clover and Pip."), (30, "Clover died last week, it's only Pip now.")])
    facts = store.records.list(types=["core"])[-1].meta["facts"]
    assert facts["pets"] == "rabbit Pip"


def test_past_and_assistant_memories_are_labelled_in_both_prompt_styles():
    from personavlm_cli.core.memory import Memory
    from personavlm_cli.core.prompts import _compact, render_memory

    old = Memory(id="turn_a", type="turn", role="user", text="I live in Ghent.", occurred_at="2026-01-12T09:00:00+00:00",
                 created_at="2026-01-12T09:00:00+00:00",
                 meta={"past": {"until": "2026-03-02T10:00:00+00:00", "by": "turn_b", "reason": "a newer home: antwerp"}})
    mine = Memory(id="turn_c", type="turn", role="assistant", text="Your rabbit is Pip.",
                  occurred_at="2026-01-12T09:01:00+00:00", created_at="2026-01-12T09:01:00+00:00")
    assert "past, true only until 2 March 2026" in render_memory(old)
    assert "past: true only until 2 March 2026" in _compact(old)
    assert "What you told the user (your words, not theirs)" in render_memory(mine)
    assert _compact(mine).startswith("(You said:")


def test_why_says_which_memory_was_treated_as_past_and_why(store):
    from rich.console import Console

    from personavlm_cli.cli.slash import print_reasoning
    from personavlm_cli.core.assistant import Assistant
    from personavlm_cli.core.conversation import Conversation

    say(store, [(0, "I live in Ghent."), (40, "We moved to Antwerp.")])
    assistant = Assistant(store, ScriptedModel(["Antwerp."]), "ada", model_lock=ModelGate(), prompt_style="full")
    conv = Conversation(assistant, clock=lambda: T0 + timedelta(days=41), sampling={"max_tokens": 16})
    turn = conv.send("Do I still live in Ghent?")
    "".join(turn)
    turn.finish()
    buf = io.StringIO()
    print_reasoning(assistant.last, console=Console(file=buf, width=200))
    shown = buf.getvalue()
    assert "treated as past, until 21 February 2026: a newer home: antwerp" in shown, shown


# -- item 2: only the user's words are facts --------------------------------------------------------

def test_the_assistants_words_never_outrank_the_users_own_statement(store):
    say(store, [(0, "My goldfish is called Bubbles.")], replies=["Your goldfish's name is Nemo, a lovely name."])
    say(store, [(1, "Tell me about goldfish care.")], replies=["Nemo needs clean water; your goldfish Nemo is lucky."])
    ranked = [h.memory for h in recall(store, Query(text="What is my goldfish called?"), k=8)]
    mine = first([m.text for m in ranked], "Bubbles")
    theirs = [i for i, m in enumerate(ranked) if changes.is_assistants(m)]
    assert mine < 99 and all(i > mine for i in theirs)
    # Nothing the assistant said is learnt.
    learnt = " ".join(m.text for m in store.records.list(types=["semantic", "procedural", "core"]))
    assert "Nemo" not in learnt


def test_the_full_prompt_labels_the_assistants_recalled_words(store):
    say(store, [(0, "My goldfish is called Bubbles.")], replies=["Bubbles is a fun name for a goldfish."])
    prompts = say(store, [(3, "What did you say about Bubbles?")], style="full")
    shown = prompts[0][-1][-1]["content"]
    if "fun name" in shown:
        assert "What you told the user (your words, not theirs):\n> Bubbles is a fun name" in shown


def _seed_user_store():
    from personavlm_cli.core import users
    from personavlm_cli.core.config import Settings

    return real_store(users.open_user_dir(Settings.load({}), "tester", create=True))


def test_memory_search_shows_the_current_statement_first_and_marks_the_past_ones():
    s = _seed_user_store()
    try:
        say(s, [(0, "I live in Ghent near the river."), (40, "We moved to Antwerp last week.")])
    finally:
        s.close()
    r = run_in_process("memory", "search", "where do I live", "--type", "turn", env={"COLUMNS": "200"})
    assert r.code == 0, r.err
    lines = [ln for ln in r.out.splitlines() if "Antwerp" in ln or "Ghent" in ln]
    assert "Antwerp" in lines[0] and "past" not in lines[0]
    assert any("Ghent" in ln and "past, until 21 February 2026" in ln for ln in lines[1:]), r.out
    found = run_in_process("memory", "search", "where do I live", "--type", "turn", "--json").json()
    past = next(m for m in found if "Ghent" in m["text"])
    assert past["signals"]["past"]["reason"].startswith("a newer home")


def test_memory_verify_reports_questions_learnt_as_facts_and_drop_erases_them():
    from personavlm_cli.core.memory import Memory, iso

    s = _seed_user_store()
    try:
        say(s, [(0, "My uncle Ferran lives in Girona.")])
        at = iso(T0)
        asked = Memory(id="turn_q1", type="turn", role="user", text="what's my aunt's name", occurred_at=at,
                       created_at=at, session_id="s1")
        wanted = Memory(id="turn_q2", type="turn", role="user", text="What do you like doing?", occurred_at=at,
                        created_at=at, session_id="s1")
        # What an older version (or a model extractor) learnt from them.
        bad = [Memory(id="sem_q1", type="semantic", text="what's my aunt's name", occurred_at=at, created_at=at,
                      source_ids=["turn_q1"], meta={"origin": "extracted"}),
               Memory(id="proc_q2", type="procedural", text="What do you like doing?", occurred_at=at, created_at=at,
                      source_ids=["turn_q2"], meta={"origin": "extracted"})]
        s.add([asked, wanted, *bad])
    finally:
        s.close()
    r = run_in_process("memory", "verify", env={"COLUMNS": "200"})
    assert r.code == 0, r.err
    assert "sem_q1" in r.out and "proc_q2" in r.out and "a question, not a fact" in r.out
    assert "Ferran" not in r.out
    r = run_in_process("memory", "verify", "--drop", "--yes")
    assert r.code == 0, r.err
    left = run_in_process("memory", "list", "--json").json()
    ids = {m["id"] for m in left}
    assert "sem_q1" not in ids and "proc_q2" not in ids and "turn_q1" in ids
    assert any("Ferran" in m["text"] for m in left if m["type"] == "semantic")


# -- item 7: lives that change, measured --------------------------------------------------------------

@pytest.mark.parametrize("name", ["lived_own.json", "lived_heldout.json"])
def test_scripted_lives_keep_the_current_value_first_and_learn_no_question(name, tmp_path):
    """The measure of `eval facts --lived` on the project's own lives (the held-out ones were never
    tuned on), with a scripted model: the ranking and the prompt do not depend on the model's words."""
    from personavlm_cli.core.assistant import Assistant
    from personavlm_cli.core.update_stage import UpdateStage
    from personavlm_cli.evals import lived

    results = []
    for i, life in enumerate(lived.load(DATA / name)):
        root = tmp_path / str(i)
        root.mkdir(mode=0o700)
        opened = []

        def make(root=root, life=life, opened=opened):
            s = real_store(root)
            opened.append(s)
            a = Assistant(s, ScriptedModel(["I see."] * 50), life.user, model_lock=ModelGate(), prompt_style="compact")
            return a, UpdateStage(s, a.model, life.user, a.model_lock, extractor="rules")

        results.append(lived.run_life(life, make, {"max_tokens": 16}, root=root))
        for s in opened[1:]:
            s.close()
    overall = lived.summarize(results)["overall"]
    assert overall["changes_search"] >= 0.9 and overall["changes_context"] >= 0.9, overall
    assert overall["learnt_questions"] == 0
    assert overall["profile"] >= 0.9
    assert overall["forget_left"] == 0


def test_a_lived_file_is_told_apart_from_scripted_people_and_bad_ones_are_refused(tmp_path):
    from personavlm_cli.core.errors import PersonaError
    from personavlm_cli.evals import lived

    assert lived.is_lived(DATA / "lived_own.json")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"user": "x", "sessions": [{"at": "yesterday", "messages": []}], "expect": {}}]')
    with pytest.raises(PersonaError, match="life 1"):
        lived.load(bad)
    assert lived.newest_first(["moved to Oulu", "live in Tampere"], "Oulu", "Tampere")
    assert not lived.newest_first(["live in Tampere", "moved to Oulu"], "Oulu", "Tampere")
    assert lived.newest_first([], "Oulu", "Tampere", also="location: Oulu")


def _history(store, n: int = 160) -> None:
    """A long, unrelated history told before: many user turns that use the slot's own words otherwise."""
    from personavlm_cli.core.memory import Memory, iso, new_id

    topics = ["I love live music on Fridays", "We live for the weekends honestly", "The gallery moved me to tears",
              "My painting class runs late on Tuesdays", "Hiking up the ridge was hard but worth it",
              "I read two chapters of the novel last night", "The kids built a fort out of cushions",
              "Our neighbour's dog barks at the postman", "I baked sourdough and it finally rose",
              "The concert tickets sold out in minutes"]
    at = T0 - timedelta(days=400)
    memories = []
    for i in range(n):
        when = iso(at + timedelta(days=i, minutes=i))
        memories.append(Memory(id=new_id("turn"), type="turn", text=f"{topics[i % len(topics)]} ({i}).",
                               occurred_at=when, created_at=when, role="user", session_id=f"s{i}"))
    store.add(memories)


def test_a_new_home_finds_the_old_one_in_a_long_history_with_no_word_in_common(store):
    """The old statement shares no word with the new one and is not among the nearest of a long history:
    it is found by the slot both fill (where one lives), and made past."""
    _history(store)
    say(store, [(0, "I live in Aveiro with my dog Pico."), (40, "We relocated to Coimbra last month, new flat!")])
    turns = {t.text: t for t in store.records.list(types=["turn"]) if t.role == "user"}
    assert "home" in turns["I live in Aveiro with my dog Pico."].meta["past"]["reason"]
    ranked = order(store, "Where do I live now?", k=40)
    assert first(ranked, "Coimbra") < first(ranked, "Aveiro")


def test_a_word_of_change_in_passing_makes_nothing_past(store):
    say(store, [(0, "I made a stained glass window for the church."),
                (3, "The window shows time changing our lives, I made it for the church.")])
    turns = {t.text: t for t in store.records.list(types=["turn"]) if t.role == "user"}
    assert not any("past" in t.meta for t in turns.values())


def test_a_summary_written_after_its_statement_became_past_is_past_too(store):
    """The session's summary may be written after the move was learnt (learning left pending at quit):
    it inherits the past mark of the statement it holds, as one written before does."""
    from personavlm_cli.core.update_stage import UpdateStage

    say(store, [(0, "I live in Aveiro with my dog Pico."), (0, "I like long walks on the beach."),
                (40, "We relocated to Coimbra last month, new flat!")])
    old = next(t for t in store.records.list(types=["turn"]) if t.text.startswith("I live in Aveiro"))
    assert "past" in old.meta
    UpdateStage(store, ScriptedModel([]), "ada", ModelGate(), extractor="rules").session(old.session_id)
    summaries = [e for e in store.records.list(types=["episodic"]) if "Aveiro" in e.text]
    assert summaries and all(changes.until(e) for e in summaries)
    ranked = order(store, "Where do I live now?", k=20)
    assert first(ranked, "Coimbra") < first(ranked, "Aveiro")
