"""`eval persona-mme` and `eval personamem`: the published layouts, the replay, in-situ questions,
the strict answer parser, scoring, and resuming an interrupted run.

The datasets are small synthetic ones written here in exactly the published layouts (real PNG
images included). The harness is proven end to end with the embedded model through Typer commands
(a small app here until the lead registers them on the real CLI); the finer points of the replay
and the asking are checked with a scripted stand-in model, which is fast and says what it was asked.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from personavlm_cli.cli import eval_persona
from personavlm_cli.core.errors import PersonaError
from personavlm_cli.evals import persona_mme as mme
from personavlm_cli.evals import personamem as pm
from personavlm_cli.evals import replay as rp
from personavlm_cli.evals import scoring
from personavlm_cli.evals import workspace as ws
from tests.imagegen import picture
from tests.kit import ScriptedModel

# --- synthetic data in the published layouts ---------------------------------------------------------


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture(seed, (96, 72)).save(path, format="PNG")


def _user(root: Path, bucket: str, user: str, data: dict, images: list[str]) -> None:
    folder = root / "samples" / bucket / user
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(images):
        _png(folder / name, seed=hash((bucket, user, i)) % 1000)
    (folder / "user_data.json").write_text(json.dumps(data, indent=1), encoding="utf-8")


def _q(bucket, user, qtype, query, choices, answer, alignment=None, time="2024-09-23 20:08"):
    aspect = next(t for t, q in mme.MME_TASKS.values() if q == qtype)
    rec = {"data_path": f"./data/Persona-MME/samples/{bucket}/{user}/user_data.json", "type": aspect,
           "question_type": qtype, "time": time, "query": query,
           "choices": {f"({k})": v for k, v in zip("abcd", choices)}, "answer": answer}
    if alignment:
        rec["alignment"] = alignment
    return rec


def persona_mme(root: Path) -> Path:
    """Two 32k users (bucket 50) and one 128k user (bucket 200); 4 questions, one with alignment."""
    _user(root, "50", "0", {
        "profile": {"name": "Wren", "occupation": "illustrator", "hobbies": ["sketching", "hiking"]},
        "sessions": [
            [{"time": "2024-09-15 10:00", "user": "Morning! I adopted a grey cat called Pixel.",
              "assistant": "Congratulations on adopting Pixel!"},
             {"time": "2024-09-15 10:02", "user": "<img> Here is my teal suitcase with stickers.",
              "assistant": "What a colourful suitcase."}],
            [{"time": "2024-09-20 18:30 (Friday)", "user": "I switched from sketching to painting this week.",
              "assistant": "Painting suits your style."},
             {"time": "2024-09-20 18:33", "user": "Look at the mural I saw downtown <img>",
              "assistant": "Sunflowers everywhere!"}],
        ],
        "imgs": ["./data/Persona-MME/samples/50/0/suitcase.png", "mural.png"],
    }, ["suitcase.png", "mural.png"])
    _user(root, "50", "1", {
        "profile": "A retired baker who folds origami cranes.",
        "sessions": [[{"time": "2024-09-16 08:00", "user": "I feed my sourdough starter every night at ten.",
                       "assistant": "A steady routine."},
                      {"time": "2024-09-16 08:05", "user": "<img>", "assistant": "A lovely paper crane."}]],
        "imgs": ["crane.png"],
    }, ["crane.png"])
    _user(root, "200", "0", {
        "profile": {"name": "Ode"},
        "sessions": [[{"time": "2024-08-01 09:00", "user": "I run every Sunday.", "assistant": "Great habit."}]],
        "imgs": [],
    }, [])
    questions = [
        _q("50", "0", "Visual Detail Recall", "What colour was the suitcase in the picture I sent?",
           ["Red.", "Teal.", "Black.", "Yellow."], "(b)",
           alignment={"chosen": "It was teal, with your travel stickers all over it!",
                      "rejected": "The suitcase was teal. Colour analysis complete."}),
        _q("50", "0", "Latest Preference Recognition", "Which medium am I into right now?",
           ["Sketching.", "Painting.", "Sculpture.", "Pottery."], "(b)"),
        _q("50", "1", "Behavioral Pattern Recognition", "What do I do every night at ten?",
           ["Feed the sourdough.", "Fold cranes.", "Read.", "Walk."], "(a)", time="2024-09-16 22:30"),
        _q("200", "0", "Generalizing to New Scenarios", "Would I enjoy a Sunday 5k race?",
           ["Yes.", "No.", "Maybe.", "Unknown."], "(a)", time="2024-08-02 09:00"),
    ]
    (root / "Persona-MME.json").write_text(json.dumps(questions, indent=1), encoding="utf-8")
    return root


CONTEXT_ID = "c0ffee" + "0" * 58


def personamem(root: Path) -> Path:
    """One shared context (a persona system message, then a chat) and three questions on it."""
    root.mkdir(parents=True, exist_ok=True)
    messages = [
        {"role": "system", "content": "Current user persona: Name: Kanoa Manu. A software engineer who loves music."},
        {"role": "user", "content": "User: I joined a community music therapy workshop and loved it."},
        {"role": "assistant", "content": "Assistant: That sounds transformative."},
        {"role": "user", "content": "User: I also tried an art therapy class with clay."},
        {"role": "assistant", "content": "Assistant: Clay is a great medium for feelings."},
        {"role": "user", "content": "User: Lately I prefer jazz piano over electronic music."},
        {"role": "assistant", "content": "Assistant: Jazz piano is wonderful."},
        {"role": "system", "content": "A new session begins."},
        {"role": "user", "content": "User: I started journaling about my songs."},
        {"role": "assistant", "content": "Assistant: Journaling helps."},
    ]
    with open(root / "shared_contexts_32k.jsonl", "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"unused" + "1" * 58: [{"role": "user", "content": "nothing"}]}) + "\n")
        fh.write(json.dumps({CONTEXT_ID: messages}) + "\n")
    rows = [
        ("q-facts", "recall_user_shared_facts", 4, "Which workshop did I enjoy?",
         ["(a) A pottery workshop.", "(b) A community music therapy workshop.", "(c) A coding bootcamp.",
          "(d) A cooking class."], "(b)"),
        ("q-latest", "acknowledge_latest_user_preferences", 7, "What music am I into lately?",
         ["(a) Electronic music.", "(b) Heavy metal.", "(c) Jazz piano.", "(d) Opera."], "(c)"),
        ("q-new", "suggest_new_ideas", 10, "Any new hobby idea for me?",
         ["(a) Songwriting retreats.", "(b) Journaling about songs.", "(c) Clay art therapy.",
          "(d) Music therapy workshops."], "(a)"),
    ]
    with open(root / "questions_32k.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["question_id", "question_type", "topic", "question", "correct_answer", "all_options",
                    "shared_context_id", "end_index_in_shared_context"])
        for qid, qtype, end, question, options, answer in rows:
            w.writerow([qid, qtype, "therapy", question, answer, repr(options), CONTEXT_ID, end])
    return root


# --- a scripted stand-in model: fast, and it says what it was asked -----------------------------------


def scripted(answer: str = "(b)") -> ScriptedModel:
    """The kit's model answering every question with ``answer``; never retrieves on its own (a reasoning step
    answers); any other JSON is refused; every prompt recorded."""
    return ScriptedModel(default=answer, n_ctx=8192, json_error="no JSON from the scripted model")


def _settings(model, **kw) -> rp.RunSettings:
    from personavlm_cli.adapters.text_encoder import TextEncoder
    from personavlm_cli.core.config import Settings

    return rp.RunSettings(model_factory=lambda: model, text_encoder=TextEncoder(),
                          image_encoder=eval_persona._image_encoder_factory(Settings.load()), **kw)


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("persona-mme")(eval_persona.persona_mme)
    app.command("personamem")(eval_persona.personamem)
    return app


def _invoke(*args: str):
    result = CliRunner().invoke(_app(), list(args), catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- the strict answer parser -------------------------------------------------------------------------

CHOICES = {"(a)": "Sketching.", "(b)": "Painting.", "(c)": "A mix of both.", "(d)": "I don't know."}


@pytest.mark.fast
@pytest.mark.parametrize("text", [
    "(b)", "b)", "B", "b", "b.", " (B). ", "**(b)**", "Answer: b", "answer: (b)", "The answer is (b)",
    "the answer is (b).", "My final answer is (b)", "Final answer: B", "Answer:\n(b)", "(b) Painting.",
    "(b). Painting", "b) painting", "Answer: (b) Painting.", "Painting.", "painting", "\"Painting\"",
])
def test_parser_accepts_the_plain_forms(text):
    assert scoring.parse_choice(text, CHOICES) == "b"


@pytest.mark.fast
@pytest.mark.parametrize("text", [
    "", "   ", "(e)", "e", "I think (b)", "(b) or (c)", "(b) Sketching.", "The user likes painting, so (b).",
    "Your choice is (d).", "b because you said so", "Option B is painting", "Painting, definitely.",
    "(b)\nBut maybe (c).", "The answer is b and c", "bb",
])
def test_parser_rejects_everything_else(text):
    assert scoring.parse_choice(text, CHOICES) is None


@pytest.mark.fast
def test_option_text_wins_over_a_leading_article_and_two_option_items_only_know_two_letters():
    assert scoring.parse_choice("A mix of both.", CHOICES) == "c"  # not the letter a
    assert scoring.parse_choice("I don't know", CHOICES) == "d"
    assert scoring.parse_choice("(a) Yes, it aligns well.", mme.ALIGNMENT_OPTIONS) == "a"
    assert scoring.parse_choice("No, it misaligns", mme.ALIGNMENT_OPTIONS) == "b"
    assert scoring.parse_choice("(c)", mme.ALIGNMENT_OPTIONS) is None


@pytest.mark.fast
def test_reference_parser_is_the_first_parenthesis_rule():
    assert scoring.reference_choice("Your choice is (d).") == "d"
    assert scoring.reference_choice("(as in a) sketch") == "a"  # why it is not the one scored
    assert scoring.reference_choice("no parenthesis") is None


@pytest.mark.fast
def test_question_text_is_the_reference_format():
    text = scoring.format_question("Which one?", {"(a)": "x", "(b)": "y"})
    assert text == "Which one?\nOptions:\n(a). x\n(b). y\nPlease give your final answer (a), (b), (c) or (d)."
    assert "Response to Evaluate:\n\"fine\"" in mme.alignment_question("Q?", "fine")


# --- loading the published layouts ------------------------------------------------------------------


@pytest.mark.fast
def test_persona_mme_layout_contexts_tasks_and_keys(tmp_path):
    root = persona_mme(tmp_path / "mme")
    qs = mme.load_persona_mme(root, "32k")
    assert [(q.bucket, q.user, q.task) for q in qs] == [("50", "0", "VDR"), ("50", "0", "LPR"), ("50", "1", "BPR")]
    assert qs[0].user_dir == root / "samples" / "50" / "0"  # resolved by the samples/ suffix
    assert [q.task for q in mme.load_persona_mme(root, "128k")] == ["GNS"]
    assert len(mme.load_persona_mme(root, "all")) == 4
    items = qs[0].items(mme.mme_tasks(None))
    assert [(i["kind"], i["answer"]) for i in items] == [("mcq", "b"), ("alignment", "a"), ("alignment", "b")]
    assert [q.task for q in mme.load_persona_mme(root, "32k", mme.mme_tasks("lpr,Behavioral Pattern Recognition"))] \
        == ["LPR", "BPR"]
    only_pa = mme.load_persona_mme(root, "32k", ["PA"])
    assert [len(q.items(["PA"])) for q in only_pa] == [2]
    assert [q.key for q in mme.load_persona_mme(root, "32k")] == [q.key for q in qs]  # stable for resuming
    with pytest.raises(PersonaError, match="unknown Persona-MME task"):
        mme.mme_tasks("VDR,XYZ")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PersonaError, match="no Persona-MME.json"):
        mme.load_persona_mme(tmp_path / "empty", "32k")


@pytest.mark.fast
def test_persona_mme_user_images_follow_the_img_tags(tmp_path):
    root = persona_mme(tmp_path / "mme")
    user = mme.load_mme_user(root / "samples" / "50" / "0")
    turns = [t for s in user.sessions for t in s]
    assert [len(s) for s in user.sessions] == [2, 2]
    assert [[p.name for p in t.images] for t in turns] == [[], ["suitcase.png"], [], ["mural.png"]]
    assert turns[1].user == "Here is my teal suitcase with stickers."  # the tag is gone
    assert turns[2].at.strftime("%Y-%m-%d %H:%M") == "2024-09-20 18:30"  # "(Friday)" dropped
    (root / "samples" / "50" / "0" / "mural.png").unlink()
    with pytest.raises(PersonaError, match="mural.png is not in"):
        mme.load_mme_user(root / "samples" / "50" / "0")


@pytest.mark.fast
def test_personamem_layout_options_and_timeline(tmp_path):
    root = personamem(tmp_path / "pm")
    qs = pm.load_personamem(root, "32k")
    assert [q.key for q in qs] == ["q-facts", "q-latest", "q-new"]
    assert qs[0].choices["(b)"] == "A community music therapy workshop." and qs[0].answer == "b"
    assert [q.key for q in pm.load_personamem(root, "32k", ["suggest_new_ideas"])] == ["q-new"]
    with pytest.raises(PersonaError, match="no question of type"):
        pm.load_personamem(root, "32k", ["nope"])
    with pytest.raises(PersonaError, match="questions_128k.csv"):
        pm.load_personamem(root, "128k")
    contexts = pm.load_shared_contexts(root, "32k", [CONTEXT_ID])
    seed, sessions, _after = pm.personamem_timeline(contexts[CONTEXT_ID], 4)
    assert seed.startswith("Current user persona")
    assert [(t.user[:6], t.assistant) for t in sessions[0]] == [
        ("User: ", "Assistant: That sounds transformative."), ("User: ", None)]  # cut before the reply
    _seed, sessions, _after = pm.personamem_timeline(contexts[CONTEXT_ID], 10)
    assert [len(s) for s in sessions] == [3, 1]  # the later system message starts a new session
    assert (sessions[1][0].at - sessions[0][-1].at).days >= 1


@pytest.mark.fast
def test_results_log_skips_answered_items_ignores_a_cut_line_and_refuses_other_settings(tmp_path):
    path = tmp_path / "run.jsonl"
    header = {"benchmark": "persona-mme", "model": "m.gguf", "update": False, "force_retrieve": False}
    log = scoring.ResultLog(path, header)
    log.add({"key": "50/0/0-abc", "correct": True})
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"key": "50/0/1-def", "corr')  # killed mid-line
    again = scoring.ResultLog(path, header)
    assert set(again.done) == {"50/0/0-abc"}
    with pytest.raises(PersonaError, match="another run"):
        scoring.ResultLog(path, {**header, "model": "other.gguf"})
    assert scoring.results_path(tmp_path / "out.json", None) == tmp_path / "out.jsonl"
    assert scoring.results_path(tmp_path / "out.json", tmp_path / "r.jsonl") == tmp_path / "r.jsonl"


# --- the replay and the in-situ questions (scripted model) ---------------------------------------------


@pytest.mark.fast
def test_replay_writes_the_history_as_a_chat_would_and_questions_leave_no_trace(tmp_path):
    from personavlm_cli.core.memory import parse_time

    root = persona_mme(tmp_path / "mme")
    model = scripted("(b)")
    user = mme.load_mme_user(root / "samples" / "50" / "0")
    settings = _settings(model)
    store = ws.temporary_store(tmp_path / "store", settings.text_encoder, settings.image_encoder)
    try:
        r = rp.Replayer(store, model, mme.mme_user_name(user.profile), update=False)
        r.seed_profile(user.profile, user.first_time)
        for n, turns in enumerate(user.sessions, 1):
            r.replay_session(f"s{n}", turns)
        records = store.records
        turns = records.list(types=["turn"])
        assert [(t.role, t.session_id) for t in turns] == \
            [("user", "s1"), ("assistant", "s1")] * 2 + [("user", "s2"), ("assistant", "s2")] * 2
        assert turns[1].text == "Congratulations on adopting Pixel!"  # the gold reply, not the model's
        images = records.list(types=["image"])
        assert [m.meta["filename"] for m in images] == ["suitcase.png", "mural.png"]
        assert store.vectors.count("images") == 2 and not records.unembedded()
        core = records.list(types=["core"])[0]
        assert core.meta["facts"]["occupation"] == "illustrator"
        before = records.count()
        answer = r.ask(scoring.format_question("Which medium am I into right now?", CHOICES),
                       parse_time("2024-09-20 19:00"))
        assert answer.text == "(b)" and answer.error is None
        assert records.count() == before  # the question and its answer were removed
        prompt = model.prompts[-1]
        assert "2024-09-20 19:00" in prompt[-1]["content"]  # asked at its own time (next to the message)
        assert "occupation: illustrator" in prompt[0]["content"]  # the profile seeded the core memory
        assert "I switched from sketching to painting this week." in json.dumps(prompt)  # the recent context
        assert model.json_calls == 0  # retrieve-first: no decision call before the answer
    finally:
        store.close()


@pytest.mark.fast
def test_replay_keeps_the_data_sessions_whatever_the_time_gap_and_erases_questions_through_the_store(tmp_path):
    from personavlm_cli.adapters.text_encoder import TextEncoder
    from personavlm_cli.core.memory import parse_time

    model = scripted("(a)")
    store = ws.temporary_store(tmp_path / "store", TextEncoder())
    try:
        r = rp.Replayer(store, model, "Wren", update=False)
        # Three hours apart: the chat's 60-minute gap would open a new session; the data says one.
        r.replay_session("data-s1", [rp.Turn(at=parse_time("2024-09-15 10:00"), user="I adopted a cat.",
                                             assistant="Lovely."),
                                     rp.Turn(at=parse_time("2024-09-15 13:00"), user="She is called Pixel.",
                                             assistant="A fine name.")])
        r.replay_session("data-s2", [rp.Turn(at=parse_time("2024-09-15 13:05"), user="New topic: I paint.")])
        turns = store.records.list(types=["turn"])
        assert [t.session_id for t in turns] == ["data-s1"] * 4 + ["data-s2"]
        assert r.turns == 3 and not store.records.unembedded()
        answer = r.ask("What is my cat called?", parse_time("2024-09-15 13:10"))
        assert answer.text == "(a)" and answer.error is None
        assert store.records.count(types=["turn"]) == 5  # the question and its answer were erased ...
        assert store.vectors.count("memories") == 5  # ... with their vectors
        assert [e["operation"] for e in store.records.audit_log()] == ["benchmark question"]  # by the store
    finally:
        store.close()


@pytest.mark.fast
def test_personamem_run_replays_up_to_each_question_and_completes_a_cut_reply(tmp_path):
    root = personamem(tmp_path / "pm")
    model = scripted("(c)")
    log = scoring.ResultLog(None, {"benchmark": "personamem"})
    stats = pm.run_personamem(root, "32k", pm.load_personamem(root, "32k"), log, _settings(model))
    assert stats["asked"] == 3 and stats["contexts"] == 1
    assert stats["replayed_turns"] == 4  # 3 rounds in session 1 (one cut, its reply added later), 1 in session 2
    first, second, third = (json.dumps(p) for p in model.prompts)
    assert "clay" in first and "Jazz piano" not in first  # only the history before the question
    assert "Jazz piano" in second and "Clay is a great medium" in second  # the cut reply was added later
    summary = pm.summarize_personamem(list(log.done.values()))
    assert summary["overall"] == {**summary["overall"], "items": 3, "correct": 1, "unparsed": 0}
    assert summary["types"]["acknowledge_latest_user_preferences"]["accuracy"] == 1.0


@pytest.mark.fast
def test_mme_run_scores_per_task_and_resumes_only_the_missing_items(tmp_path):
    root = persona_mme(tmp_path / "mme")
    model = scripted("(b)")
    qs = mme.load_persona_mme(root, "32k")
    tasks = mme.mme_tasks(None)
    path = tmp_path / "items.jsonl"
    header = {"benchmark": "persona-mme", "model": "scripted", "update": False, "force_retrieve": False}
    first = mme.run_persona_mme(qs[:1], tasks, scoring.ResultLog(path, header), _settings(model))
    assert first["asked"] == 3
    log = scoring.ResultLog(path, header)
    second = mme.run_persona_mme(qs, tasks, log, _settings(model))
    assert second["asked"] == 2 and second["skipped"] == 3 and second["users"] == 2
    rows = _jsonl(path)[1:]
    assert len(rows) == len({r["key"] for r in rows}) == 5
    s = mme.summarize_mme(list(log.done.values()))
    assert s["tasks"]["VDR"]["accuracy"] == 1.0 and s["tasks"]["BPR"]["accuracy"] == 0.0
    assert s["alignment"] == {**s["alignment"], "items": 2, "correct": 1}  # "(b)": right for rejected only
    assert s["overall"]["items"] == 5 and s["overall_without_pa"]["items"] == 3


# --- end to end with the embedded model ---------------------------------------------------------------


@pytest.mark.slow  # the embedded model
def test_update_stage_runs_per_turn_and_per_session_during_replay(tmp_path):
    from personavlm_cli.adapters.gguf import embedded_model_path
    from personavlm_cli.adapters.llm import ChatModel
    from personavlm_cli.core.memory import parse_time

    model = ChatModel(embedded_model_path(), n_ctx=2048)
    settings = _settings(model)
    store = ws.temporary_store(tmp_path / "store", settings.text_encoder)
    try:
        r = rp.Replayer(store, model, "Wren", update=True)
        r.replay_session("s1", [rp.Turn(at=parse_time("2024-09-15 10:00"),
                                        user="I am a nurse and I love my grey cat Pixel.",
                                        assistant="Pixel sounds lovely.")])
        assert store.records.get_meta("personality_updates") in (None, 1)  # no row unless it was evidence
        assert store.records.get_meta("consolidated") == {"s1": 2}  # the per-session job ran
        assert not [j for j in store.records.jobs() if j["kind"] in ("turn", "session")]
        assert r.update_seconds > 0
    finally:
        store.close()
        model.close()


@pytest.mark.slow  # the embedded model
def test_persona_mme_end_to_end_with_the_embedded_model_resumes_an_interrupted_run(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    root = persona_mme(tmp_path / "mme")
    out = tmp_path / "mme.json"
    first = _invoke("persona-mme", str(root), "--json", str(out), "--no-update", "--limit", "2", "--max-tokens", "16")
    assert first.exit_code == 0, first.output
    assert "Visual Detail Recall" in first.output and "Personality Alignment" in first.output
    report = json.loads(out.read_text())
    assert report["items"] == 4 and report["timings"]["asked"] == 4 and report["questions"] == 2
    assert set(report["tasks"]) == {"VDR", "LPR", "PA"}
    assert all(r["prediction"] or r.get("error") for r in report["rows"])
    # the "interrupted" run is taken up again: only the remaining question is asked
    second = _invoke("persona-mme", str(root), "--json", str(out), "--no-update", "--max-tokens", "16")
    assert second.exit_code == 0, second.output
    report = json.loads(out.read_text())
    assert report["timings"]["asked"] == 1 and report["timings"]["skipped"] == 4
    assert report["items"] == 5 and set(report["tasks"]) == {"VDR", "LPR", "BPR", "PA"}
    rows = _jsonl(out.with_suffix(".jsonl"))
    assert "header" in rows[0] and len(rows) == 6 and len({r["key"] for r in rows[1:]}) == 5
    assert report["overall"]["items"] == 5 and report["overall_without_pa"]["items"] == 3
    third = _invoke("persona-mme", str(root), "--json", str(out), "--no-update", "--max-tokens", "16")
    assert third.exit_code == 0 and json.loads(out.read_text())["timings"].get("asked") is None


@pytest.mark.slow  # the embedded model
def test_personamem_end_to_end_with_the_embedded_model(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    root = personamem(tmp_path / "pm")
    out = tmp_path / "pm.json"
    result = _invoke("personamem", str(root), "--json", str(out), "--no-update", "--limit", "2",
                     "--max-tokens", "16", "--force-retrieve")
    assert result.exit_code == 0, result.output
    assert "recall_user_shared_facts" in result.output and "overall" in result.output
    report = json.loads(out.read_text())
    assert report["items"] == 2 and set(report["types"]) == {"recall_user_shared_facts",
                                                              "acknowledge_latest_user_preferences"}
    assert all(r["retrievals"] >= 1 for r in report["rows"] if not r.get("error"))  # --force-retrieve


# --- personavlm bench (the parts that need no chat model) -----------------------------------------------


@pytest.mark.fast
def test_one_percentile_interpolates_between_ranks():
    assert ws.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert ws.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    assert ws.percentile([7.0], 95) == 7.0
    assert ws.percentile([], 50) != ws.percentile([], 50)  # NaN: no figure from no values


@pytest.mark.slow  # the startup section times the program in child processes
def test_bench_measures_startup_recall_and_replay_and_judges_the_bars(tmp_path, monkeypatch):
    from personavlm_cli.cli import bench as bench_cmd

    monkeypatch.setenv("COLUMNS", "200")
    app = typer.Typer()
    app.command("bench")(bench_cmd.bench)
    app.command("unused")(lambda: None)
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--quick", "--only", "startup,recall,replay,forget", "--sizes", "600",
                                      "--repeat", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "personavlm --help" in result.output and "recall p50 at 600" in result.output
    report = json.loads(out.read_text())
    assert report["machine"]["nproc"] >= 1 and report["machine"]["cpu"]
    assert set(report["bars"]) == {"startup_help_s", "startup_memory_list_s", "startup_help_vs_typer"}
    entry = report["sections"]["recall"]["sizes"]["600"]
    assert entry["recall"]["n"] == 20 and entry["pre_token"]["total"]["p50_ms"] > 0
    assert report["sections"]["replay"]["messages_per_s"] > 0 and report["peak_memory_mb"] > 0
    assert report["sections"]["forget"]["sizes"]["600"]["n"] == 3 and "forget (one memory) p50 at 600" in result.output
    bad = CliRunner().invoke(app, ["bench", "--only", "nothing"])
    assert isinstance(bad.exception, PersonaError)
