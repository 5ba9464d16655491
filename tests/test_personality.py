"""The Big Five read from evidence (core/trait_evidence.py, core/personality.py): what moves a trait and
what does not, shrinkage and confidence, the tone, `profile show/why/history`, the archive, and the
`eval personality` figures on the held-out writers. In-process, with the real MiniLM encoder and store."""

from __future__ import annotations

import pytest

from personavlm_cli.core import personality as pem
from tests.conftest import assert_one_line_error

pytestmark = pytest.mark.fast


@pytest.fixture(scope="module")
def reader():
    from personavlm_cli.adapters.text_encoder import TextEncoder
    from personavlm_cli.core.trait_evidence import EvidenceReader

    return EvidenceReader(TextEncoder())


NOT_EVIDENCE = ["hi", "Hello there!", "Good morning, how are you?", "thanks, bye", "What's the capital of Peru?",
                "Write a Python function that sorts a list.", "Can you give me a recipe for lasagna?",
                "How many grams are in a pound?", "I need a regex for email addresses.", "My train is at 8:15.",
                "I have a cat named Miso.", "I'm looking for a good pizza recipe.", "Translate 'thank you' into Italian."]


@pytest.mark.parametrize("text", NOT_EVIDENCE)
def test_greetings_questions_requests_and_plain_facts_are_no_evidence(reader, text):
    assert reader.read(text) == []


def test_a_clear_sentence_moves_its_trait_and_its_negation_moves_it_the_other_way(reader):
    plain = reader.read("I enjoy meeting new people at parties.")
    negated = reader.read("I don't enjoy meeting new people at parties.")
    assert [(e.trait, e.direction, e.negated) for e in plain] == [("extraversion", 1.0, False)]
    assert [(e.trait, e.direction, e.negated) for e in negated] == [("extraversion", -1.0, True)]
    calm = reader.read("I never feel anxious before exams.")
    assert [(e.trait, e.direction) for e in calm] == [("neuroticism", -1.0)]


def test_the_positive_form_takes_out_negations_and_words_of_dislike():
    from personavlm_cli.core.trait_evidence import positive_form

    assert positive_form("I don't enjoy big parties.") == ("I enjoy big parties.", 1)
    assert positive_form("I am not a tidy person.") == ("I am a tidy person.", 1)
    assert positive_form("Nothing really stresses me out.") == ("something really stresses me out.", 1)
    assert positive_form("I hate crowds.") == ("I love crowds.", 1)
    assert positive_form("I can't stand small talk.") == ("I like small talk.", 1)
    assert positive_form("No, I never skip breakfast.")[1] == 1  # an answer's "No," negates nothing


def test_only_the_main_statement_s_negations_count():
    from personavlm_cli.core.trait_evidence import positive_form

    # a negation in a clause that follows the statement negates nothing the writer says of themselves
    assert positive_form("I never help people who don't help me.") == ("I help people who don't help me.", 1)
    assert positive_form("I trust people until they give me a reason not to.")[1] == 0
    assert positive_form("I'm so nervous I can't think straight.")[1] == 0
    # phrases with a negative word that negate nothing, or say the positive
    assert positive_form("I keep my promises, no matter what.")[1] == 0
    assert positive_form("I often feel sad for no reason.")[1] == 1  # "sad", not "no reason"
    assert positive_form("I can't stop worrying.") == ("I keep worrying.", 0)
    assert positive_form("I don't mind being the centre of attention.") == ("I like being the centre of attention.", 0)


def test_words_of_the_negative_end_reverse_once_and_a_negation_undoes_them():
    from personavlm_cli.core.trait_evidence import positive_form

    assert positive_form("Parties are exhausting.") == ("Parties are energising.", 1)
    assert positive_form("I find modern architecture ugly and pointless.")[1] == 1  # two such words: still once
    assert positive_form("I'm not lazy.") == ("I'm hard-working.", 2)  # reversed twice: what it says
    assert positive_form("I find it hard to start conversations.") == ("I find it easy to start conversations.", 1)
    assert positive_form("I never feel anxious.", antonyms=False) == ("I feel anxious.", 1)


def test_statements_joined_with_their_own_i_are_read_apart():
    from personavlm_cli.core.trait_evidence import clauses

    def parts(text):
        return [text[a:b] for a, b in clauses(text, 0, len(text))]

    assert parts("I never miss a deadline, I start early.") == ["I never miss a deadline", "I start early."]
    assert parts("Abstract ideas go over my head and I don't care.") == ["Abstract ideas go over my head",
                                                                         "I don't care."]
    assert parts("I think I am kind.") == ["I think I am kind."]


@pytest.mark.parametrize("text, trait, direction", [
    ("I never miss a deadline, I start early.", "conscientiousness", 1.0),
    ("I find it hard to start conversations with strangers.", "extraversion", -1.0),
    ("I keep my promises, no matter what.", "conscientiousness", 1.0),
    ("I find poetry boring and hard to follow.", "openness", -1.0),
    ("I get bored when I'm home alone.", "extraversion", 1.0),
    ("I think most people are lazy and stupid.", "agreeableness", -1.0),
])
def test_which_end_of_the_trait_a_development_sentence_is_on(reader, text, trait, direction):
    """Sentences of the development writers that the first round read the wrong way round."""
    moved = {e.trait: e.direction for e in reader.read(text)}
    assert moved.get(trait) == direction, moved


def test_no_development_neutral_writer_moves_a_trait(reader):
    """Plain facts, plans and errands of a life ("I went to the gym this morning"): no evidence."""
    import json

    from personavlm_cli.evals.personality import NAMED

    writers = json.loads(NAMED["development"].read_text())["writers"]
    neutral = [m for w in writers if w["side"] == "neutral" for m in w["messages"]]
    assert len(neutral) == 80
    assert [(m, reader.read(m)) for m in neutral if reader.read(m)] == []


def test_the_everyday_markers_cover_both_ends_of_every_trait_and_copy_no_held_out_writer():
    import json
    import re

    from personavlm_cli.core.trait_evidence import EVERYDAY_PATH, load_markers
    from personavlm_cli.evals.personality import NAMED

    items = json.loads(EVERYDAY_PATH.read_text())["items"]
    for trait in pem.TRAITS:
        for key in (1, -1):
            assert sum(t == trait and k == key for t, k, _text, _src in items) >= 15, (trait, key)

    def norm(text):
        return " ".join(re.findall(r"[a-z']+", text.lower()))

    held = {norm(m) for name in ("heldout", "heldout2") for w in json.loads(NAMED[name].read_text())["writers"]
            for m in w["messages"]}
    assert not [m.text for m in load_markers() if norm(m.shown) in held or norm(m.text) in held]


def test_evidence_shrinks_toward_the_middle_and_confidence_grows_with_it():
    one = pem.add_evidence(pem.empty_totals(), [{"trait": "openness", "direction": 1.0, "weight": 1.0}])
    assert pem.vector_of(one)["openness"] == pytest.approx(3 + 2 / 3)
    assert pem.confidences(one)["openness"] == pytest.approx(1 / 3)
    assert pem.confidences(one)["openness"] < pem.CONFIDENCE_FLOOR
    # one message gives a trait at most weight 1, however many sentences it has
    long = pem.add_evidence(pem.empty_totals(), [{"trait": "openness", "direction": 1.0, "weight": 1.0}] * 4)
    assert long == one
    totals = pem.empty_totals()
    for _ in range(5):
        totals = pem.add_evidence(totals, [{"trait": "openness", "direction": -1.0, "weight": 1.0}])
    assert pem.vector_of(totals)["openness"] == pytest.approx(3 - 10 / 7)
    assert pem.confidences(totals)["openness"] == pytest.approx(5 / 7)
    assert pem.vector_of(totals)["agreeableness"] == 3.0 and pem.confidences(totals)["agreeableness"] == 0


def test_the_tone_follows_only_traits_read_with_confidence():
    from datetime import datetime

    from personavlm_cli.core.prompts import Context, GenericProfile

    totals = {**pem.empty_totals(), "neuroticism": {"sum": 3.0, "weight": 3.0},
              "extraversion": {"sum": -0.9, "weight": 0.9}}
    vector = pem.vector_of(totals)
    assert vector["extraversion"] < 2.5  # read low, but from less than one clear sentence
    tone = pem.for_tone(vector, totals)
    assert tone["neuroticism"] == vector["neuroticism"] and tone["extraversion"] == 3.0
    ctx = Context(user="ada", now=datetime(2026, 11, 24, 12).astimezone(), message="hi", personality=tone)
    system = GenericProfile().answer_messages(ctx, [])[0]["content"]
    assert "reassuring and gentle" in system and "calm and concise" not in system
    assert pem.for_tone(pem.initial(), None) == pem.initial()  # an old store's reading is not trusted


def _chat(texts: list[str]) -> list[str]:
    """The user's own store with these messages as turns, each through the update stage's personality
    step (no chat model: the small-model path, as with the embedded model)."""
    from personavlm_cli.cli.common import make_env
    from personavlm_cli.core.store import new_memory
    from personavlm_cli.core.update_stage import UpdateStage

    env = make_env(None)
    try:
        store = env.store(write=True)
        stage = UpdateStage(store, None, env.user)
        ids = []
        for i, text in enumerate(texts):
            turn = new_memory("turn", text, f"2026-11-20T09:{i:02d}:00+00:00", role="user", session_id="s1")
            store.records.insert([turn])
            stage.update_personality(turn, None)
            stage.update_personality(turn, None)  # a job run twice (after a kill) adds nothing
            ids.append(turn.id)
        return ids
    finally:
        env.close()


def test_a_greeting_changes_nothing_and_leaves_no_history(run):
    _chat(["hi", "Hello again, how are you?", "What's the weather in Oslo?"])
    shown = run("profile", "show", "--json").json()
    assert shown["big_five"] == pem.initial() and set(shown["confidence"].values()) == {0}
    assert run("profile", "history", "--json").json() == []
    assert "not enough evidence yet" in run("profile", "show").out


def test_profile_why_and_history_show_the_sentences_that_moved_a_trait(run):
    _chat(["Hi! I love big parties and meeting new people.", "What's 2+2?",
           "I talk to everyone at the gym. Can you suggest a playlist?", "I never feel anxious before exams.",
           "I make friends easily wherever I go."])
    shown = run("profile", "show", "--json").json()
    assert shown["big_five"]["extraversion"] > 3.5 and shown["big_five"]["neuroticism"] < 3
    assert shown["confidence"]["extraversion"] >= pem.CONFIDENCE_FLOOR > shown["confidence"]["neuroticism"]
    why = run("profile", "why", "extraversion")
    assert why.code == 0
    assert "I love big parties and meeting new people." in why.out and "I talk to everyone at the gym." in why.out
    assert "playlist" not in why.out and "2+2" not in why.out and "raised" in why.out
    data = run("profile", "why", "extraversion", "--json").json()
    assert sum(e["moved"] for e in data["evidence"]) == pytest.approx(shown["big_five"]["extraversion"] - 3, abs=1e-3)
    history = run("profile", "history", "--json").json()
    assert len(history) == 4  # the question moved nothing and left no row
    assert history[2]["evidence"][0]["sentence"] == "I never feel anxious before exams."
    assert history[-1]["before"] == history[-2]["after"]
    assert "I never feel anxious" in run("profile", "history", "--no-chart").out
    assert_one_line_error(run("profile", "why", "grumpiness"), "unknown trait")


def test_reset_starts_a_trait_over_with_its_evidence(run):
    _chat(["I love big parties and meeting new people.", "I talk to everyone at the gym."])
    assert run("profile", "reset", "extraversion").code == 0
    shown = run("profile", "show", "--json").json()
    assert shown["big_five"]["extraversion"] == 3.0 and shown["confidence"]["extraversion"] == 0
    assert run("profile", "why", "extraversion", "--json").json()["evidence"] == []


def test_the_reading_and_its_evidence_survive_export_and_import(run, tmp_path):
    _chat(["I love big parties and meeting new people.", "I worry about everything all the time."])
    archive = tmp_path / "me.pvm"
    assert run("profile", "export", "--archive", str(archive)).code == 0
    before = [run(*cmd).json() for cmd in (("profile", "show", "--json"), ("profile", "why", "neuroticism", "--json"),
                                           ("profile", "history", "--json"))]
    other = {"PERSONAVLM_HOME": str(tmp_path / "new-home")}
    r = run("profile", "import", str(archive), env=other)
    assert r.code == 0, r.err
    after = [run(*cmd, env=other).json() for cmd in (("profile", "show", "--json"),
                                                     ("profile", "why", "neuroticism", "--json"),
                                                     ("profile", "history", "--json"))]
    assert after == before and before[1]["evidence"][0]["sentence"] == "I worry about everything all the time."


ITEM = {"trait": "openness", "start": 0, "end": 10, "direction": 1.0, "weight": 0.8, "moved": 0.3,
        "turn_id": "turn_0000000001", "at": "2026-11-20T09:00:00+00:00", "marker": "Am full of ideas."}


@pytest.mark.parametrize("evidence,needle", [
    ([1, 2], "'evidence' must hold"),
    ({"items": []}, "'evidence' must hold"),
    ({"totals": {"wit": {"sum": 1, "weight": 1}}, "items": []}, "must be a trait"),
    ({"totals": {"openness": {"sum": 1, "weight": -1}}, "items": []}, "must be a trait"),
    ({"totals": {}, "items": [{**ITEM, "trait": "wit"}]}, "must name a trait"),
    ({"totals": {}, "items": [{**ITEM, "start": 5, "end": 2}]}, "must be a span"),
    ({"totals": {}, "items": [{**ITEM, "end": True}]}, "must be a span"),
    ({"totals": {}, "items": [{**ITEM, "direction": 7}]}, "numbers in range"),
    ({"totals": {}, "items": [{**ITEM, "weight": 1.5}]}, "numbers in range"),
    ({"totals": {}, "items": [{**ITEM, "turn_id": "../x"}]}, "'turn_id'"),
    ({"totals": {}, "items": [{**ITEM, "marker": {"x": 1}}]}, "'marker'"),
])
def test_malformed_evidence_in_an_archive_is_refused_with_one_line(tmp_path, evidence, needle):
    import json

    from tests.test_hostile_archives import GOOD, build, refused

    blob = json.dumps({"state": GOOD, "updates": 0, "history": [], "evidence": evidence}).encode()
    refused(build(tmp_path / "e.pvm", personality_json=blob), "personality", needle, "nothing imported")


def test_eval_personality_on_the_held_out_writers(run, tmp_path):
    """The figures in docs/benchmarks.md: neutral writers, greetings and negation exactly; separation
    at its measured level (a drop below it fails)."""
    out = tmp_path / "p.json"
    r = run("eval", "personality", "--json", str(out))
    assert r.code == 0, r.err
    import json

    result = json.loads(out.read_text())["results"][0]
    o = result["overall"]
    assert o["neutral_max_drift"] == 0 and o["neutral_max_confidence"] == 0 and o["greetings_moved"] == 0
    assert o["negation_right"] == o["negation_plain_moved"] == o["negation_pairs"] == 15
    assert o["pairs"] == 80 and o["in_order"] >= 0.95 and o["by_half"] >= 0.85
    assert "neutral writers: largest drift 0.00" in r.out
    # the fresh held-out writers (second round): the bar, every check of it
    r = run("eval", "personality", "heldout2", "--json", str(out))
    assert r.code == 0, r.err
    result = json.loads(out.read_text())["results"][0]
    o = result["overall"]
    assert o["pairs"] == 80 and o["by_half"] >= 0.95 and all(result["done_when"].values()), result["done_when"]
    assert o["neutral_max_drift"] == 0 and o["greetings_moved"] == 0 and o["negation_right"] == 15
    assert_one_line_error(run("eval", "personality", str(tmp_path / "missing.json")), "cannot read writers")
    assert_one_line_error(run("eval", "personality", "--method", "vibes"), "unknown method")


@pytest.mark.parametrize("arg", ["openness=9", "o=0", "extraversion=high", "n=nan"])
def test_a_personality_override_out_of_range_is_refused_not_clamped(arg):
    from types import SimpleNamespace

    from personavlm_cli.cli.slash import SlashCommands
    from personavlm_cli.core.errors import PersonaError

    session = SimpleNamespace(assistant=SimpleNamespace(personality_override=None))
    with pytest.raises(PersonaError, match="from 1 to 5"):
        SlashCommands._personality(session, arg)
    assert session.assistant.personality_override is None
    SlashCommands._personality(session, "o=4.5 n=1")
    assert session.assistant.personality_override == {"openness": 4.5, "neuroticism": 1.0}
