"""Control flow of the method with a scripted model: momentum, the reasoning loop, parsers, config."""

from __future__ import annotations

import math
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from personavlm_cli.core import personality as pem
from personavlm_cli.core.config import Settings
from personavlm_cli.core.errors import ConfigError, PersonaError
from personavlm_cli.core.memory import parse_time
from personavlm_cli.core.prompts import MAX_RETRIEVALS, Context, GenericProfile, Step, parse_tagged
from personavlm_cli.core.response_stage import ResponseStage
from tests.kit import ScriptedModel


def Scripted(decisions, answer="fine"):
    """The kit's model: step decisions from a queue (then "retrieve x" for ever); streams a fixed answer."""
    return ScriptedModel(default=answer, by="char", decisions=decisions, json=lambda messages, schema: retrieve("x"))


def retrieve(keywords="cat", start="null", end="null"):
    return {"think": "need memory", "action": "retrieve", "keywords": keywords, "start_time": start, "end_time": end}


def ctx(**kw):
    return Context(user="ada", now=datetime(2026, 11, 24, 12, 0).astimezone(), message="what is my cat called?", **kw)


def test_momentum_follows_the_paper_formula_to_1e9():
    p = pem.initial()
    inferred = [{"openness": 5, "conscientiousness": 1, "extraversion": 4, "agreeableness": 2, "neuroticism": 3}] * 12
    expected = dict(p)
    for m, step in enumerate(inferred):
        lam = 0.7 - 0.2 * math.cos(math.pi * min(m, 50) / 50)
        p, got_lam, skipped = pem.evolve(p, step, m)
        assert abs(got_lam - lam) < 1e-12
        for t in pem.TRAITS:
            if step[t] != 3:
                expected[t] = lam * expected[t] + (1 - lam) * step[t]
            assert abs(p[t] - expected[t]) < 1e-9
            assert 1.0 <= p[t] <= 5.0
        assert skipped == ["neuroticism"]
    assert pem.momentum(0) == pytest.approx(0.5) and pem.momentum(50) == pytest.approx(0.9)
    assert pem.momentum(500) == pytest.approx(0.9)


def test_reasoning_loop_caps_retrievals_and_never_returns_an_empty_answer():
    found = []
    model = Scripted([retrieve()] * 10, answer="")
    stage = ResponseStage(model, GenericProfile(), lambda q, k: found.append(q) or [], lambda ms: ms)
    r = stage.think(ctx())
    assert [s.action for s in r.steps] == ["retrieve"] * MAX_RETRIEVALS + ["answer"]
    assert r.steps[-1].forced
    assert len(found) == MAX_RETRIEVALS
    from personavlm_cli.core.errors import NoAnswer

    with pytest.raises(NoAnswer):  # an empty model answer is never passed on as the reply, nor a stand-in
        "".join(stage.answer(ctx(), r))
    model.default = "Your cat is Miso."
    assert "".join(stage.answer(ctx(), r)) == "Your cat is Miso."


def test_time_window_from_the_model_becomes_a_recall_filter():
    queries = []
    model = Scripted([retrieve("tuesday", "2026-11-17 00:00", "2026-11-17 23:59"),
                           {"think": "ok", "action": "answer", "keywords": "", "start_time": "null", "end_time": "null"}])
    stage = ResponseStage(model, GenericProfile(), lambda q, k: queries.append(q) or [], lambda ms: ms)
    stage.think(ctx())
    assert queries[0].since == parse_time("2026-11-17 00:00").timestamp()
    assert queries[0].until == parse_time("2026-11-17 23:59").timestamp()
    assert queries[0].keywords == "tuesday"


def test_an_inverted_window_is_dropped():
    queries = []
    model = Scripted([retrieve("x", "2026-11-20 00:00", "2026-11-10 00:00")])
    stage = ResponseStage(model, GenericProfile(), lambda q, k: queries.append(q) or [], lambda ms: ms)
    stage.think(ctx())
    assert queries[0].since is None and queries[0].until is None


def test_force_retrieve_makes_the_first_step_retrieve_with_the_message():
    queries = []
    model = Scripted([{"think": "", "action": "answer", "keywords": "", "start_time": "null", "end_time": "null"}])
    stage = ResponseStage(model, GenericProfile(), lambda q, k: queries.append(q) or [], lambda ms: ms)
    r = stage.think(ctx(), force_retrieve=True)
    assert r.steps[0].action == "retrieve" and r.steps[0].forced
    assert queries[0].keywords == "what is my cat called?"
    assert r.steps[-1].action == "answer"


def test_without_long_term_memory_no_decision_call_is_made():
    model = Scripted([])
    stage = ResponseStage(model, GenericProfile(), lambda q, k: [], lambda ms: ms)
    r = stage.think(ctx(has_long_term_memory=False))
    assert model.json_calls == 0 and [s.action for s in r.steps] == ["answer"]


def test_a_model_that_cannot_follow_the_protocol_falls_back_to_answering():
    class Broken(ScriptedModel):
        def complete_json(self, *a, **k):
            raise PersonaError("no valid JSON")

    stage = ResponseStage(Broken([]), GenericProfile(), lambda q, k: [], lambda ms: ms)
    assert [s.action for s in stage.think(ctx()).steps] == ["answer"]


def test_parse_tagged_reads_answer_and_retrieve_blocks():
    now = datetime(2026, 11, 24, 12, 0).astimezone()
    s = parse_tagged("<think>easy</think><answer>Miso</answer>", now)
    assert (s.action, s.answer, s.think) == ("answer", "Miso", "easy")
    s = parse_tagged('<think>look</think><retrieve>"keywords": "cat name" "start_time": "2026-11-01 00:00" '
                     '"end_time": "null"</retrieve>', now)
    assert s.action == "retrieve" and s.keywords == "cat name" and s.start_time.day == 1 and s.end_time is None


@given(st.text(max_size=300) | st.lists(st.one_of(st.sampled_from(["<think>", "</think>", "<answer>", "</answer>",
                                                                    "<retrieve>", "</retrieve>", " "]),
                                                   st.text(max_size=20)), max_size=10).map("".join))
def test_parse_tagged_never_crashes_and_always_gives_a_valid_step(text):
    step = parse_tagged(text, datetime(2026, 1, 1).astimezone())
    assert isinstance(step, Step) and step.action in ("answer", "retrieve")
    if step.action == "answer":
        assert step.answer


@given(st.text(max_size=40))
def test_time_parser_accepts_or_refuses_cleanly(text):
    try:
        value = parse_time(text)
    except PersonaError:
        return
    assert value.tzinfo is not None


def test_config_precedence_flag_over_env_over_file_over_default(tmp_path):
    (tmp_path / "config.yaml").write_text("model:\n  context: 1024\n  max_tokens: 100\nuser: filed\n")
    env = {"PERSONAVLM_HOME": str(tmp_path), "PERSONAVLM_MODEL_CONTEXT": "2048"}
    s = Settings.load({"model.context": 3072}, environ=env)
    assert s["model.context"] == 3072 and s.origin("model.context") == "flag"
    s = Settings.load({}, environ=env)
    assert s["model.context"] == 2048 and s.origin("model.context") == "env"
    assert s["model.max_tokens"] == 100 and s.origin("model.max_tokens") == "file"
    assert s["model.temperature"] == 0.7 and s.origin("model.temperature") == "default"
    assert s.locations.users_dir == tmp_path / "data" / "users"


@pytest.mark.parametrize("text,needle", [("model: [x\n", "yaml"), ("nope: 1\n", "unknown key"),
                                         ("model:\n  gpu_layers: [1]\n", "model.gpu_layers"),
                                         ("chat:\n  history: maybe\n", "chat.history"), ("- a\n- b\n", "mapping")])
def test_config_errors_are_one_line(tmp_path, text, needle):
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        Settings.load({}, environ={"PERSONAVLM_HOME": str(tmp_path)})
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_learnt_statements_must_be_supported_by_what_the_user_said():
    from personavlm_cli.core.learning.grounding import supported

    assert supported("The user is a nurse in Lisbon", ["I'm a nurse, I live in Lisbon"])
    assert supported("user switches to green tea", ["I switched from coffee to green tea"])
    assert not supported("The user's name is Ada", ["Hello, I am Ada."]), "'name' was never said"
    assert not supported("Your name is {user_name}.", ["Hello, I am Ada."])
    assert not supported("The user is a software engineer", ["I work as a nurse in Lisbon"])
    assert not supported("The user loves Portugal", ["Sure! Portugal is lovely."][:0]), "no evidence, no fact"


def test_a_waiting_answer_goes_before_background_updates():
    import threading
    import time

    from personavlm_cli.core.gate import ModelGate

    gate, order = ModelGate(), []
    holding = threading.Event()

    def first_update():
        with gate.background():
            holding.set()
            time.sleep(0.3)
            order.append("update 1")

    def second_update():
        time.sleep(0.05)
        with gate.background():
            order.append("update 2")

    threads = [threading.Thread(target=first_update), threading.Thread(target=second_update)]
    for t in threads:
        t.start()
    holding.wait()
    with gate:  # an answer arrives while update 1 holds the model and update 2 waits
        order.append("answer")
    for t in threads:
        t.join()
    assert order == ["update 1", "answer", "update 2"]


def test_counts_read_as_english():
    from personavlm_cli.cli.common import count

    assert [count(n, "memory") for n in (0, 1, 2)] == ["0 memories", "1 memory", "2 memories"]
    assert count(1, "image") == "1 image" and count(3, "image") == "3 images"
