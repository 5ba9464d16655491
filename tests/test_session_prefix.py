"""A real session keeps its prompt's beginning (core/assistant.py window, core/warmup.py) and answers
first (core/gate.py hold, the update stage's yield points), in-process with a real store and a
scripted model that keeps a prompt cache the way llama.cpp does (the longest common prefix)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest

from personavlm_cli.core.gate import ModelGate
from tests.kit import ScriptedModel, render

pytestmark = pytest.mark.fast

AT = datetime(2026, 5, 4, 9, 0).astimezone()


def caching() -> ScriptedModel:
    """The kit's model with a llama.cpp-like cache: a call reuses the longest common prefix of its prompt with
    what the context held; ``prefill`` fills the cache without answering."""
    return ScriptedModel(default="Noted.", n_ctx=8192, cache=True)


def _chat(store, model, recent_turns: int, gate: ModelGate | None = None):
    from personavlm_cli.core.assistant import Assistant
    from personavlm_cli.core.conversation import Conversation

    clock = {"now": AT}
    assistant = Assistant(store, model, "ada", model_lock=gate or ModelGate(), prompt_style="compact",
                          recent_turns=recent_turns)
    conv = Conversation(assistant, learn=False, clock=lambda: clock["now"], sampling={"max_tokens": 8})
    return conv, clock


def _say(conv, clock, text: str, minute: int):
    clock["now"] = AT + timedelta(minutes=minute)
    turn = conv.send(text)
    "".join(turn)
    stats = turn.finish()
    conv.ended(turn)
    if conv.warmup is not None:
        assert conv.warmup.wait(10)
    return stats


MESSAGES = [f"Message number {i}: I like the colour number {i} and the river number {i}." for i in range(24)]


def test_the_window_moves_in_large_steps_so_most_messages_only_pay_for_their_own_tokens(store):
    model = caching()
    conv, clock = _chat(store, model, recent_turns=8)
    firsts = []
    for i, text in enumerate(MESSAGES):
        _say(conv, clock, text, i)
        history = model.prompts[-1][:-1]
        assert len(history) <= 8 // 2 + 4, "the window holds at most recent_turns turns (compact: user turns only)"
        firsts.append(history[0]["content"] if history else None)
    moves = sum(1 for a, b in zip(firsts, firsts[1:]) if a is not None and a != b)
    # One exchange per message would move it 24 - 4 times; in steps of half the window, every 2 messages.
    assert 0 < moves <= len(MESSAGES) // 2, firsts


def test_tokens_are_reused_after_the_window_moves_because_the_new_prefix_was_prefilled(store):
    model = caching()
    conv, clock = _chat(store, model, recent_turns=8)
    reused = []
    for i, text in enumerate(MESSAGES[:16]):
        stats = _say(conv, clock, text, i)
        own = len(render(model.prompts[-1][-1:]))  # this message's block (with what was recalled for it)
        reused.append((stats.prompt_tokens, stats.cached_tokens, own))
    assert len(model.prefills) >= 3, "the window moved, and its new beginning was evaluated while the user read"
    for prompt, cached, own in reused[1:]:
        assert prompt - cached <= own, f"only this message's own block is evaluated: {reused}"


def test_without_the_prefill_a_moved_window_would_be_evaluated_again(store):
    """The control: the same session with a model that keeps no cache of its own for prefills."""

    model = ScriptedModel(default="Noted.", n_ctx=8192, cache=True, prefill_evaluates=False)
    conv, clock = _chat(store, model, recent_turns=8)
    reused = [_say(conv, clock, text, i) for i, text in enumerate(MESSAGES[:16])]
    worst = min(s.cached_tokens / s.prompt_tokens for s in reused[1:])
    assert worst < 0.3, "the move re-evaluates the history: that is what the prefill saves"


def test_the_search_offer_in_the_system_text_is_made_once_per_session(store):
    from personavlm_cli.core.assistant import Assistant

    model = caching()
    assistant = Assistant(store, model, "ada", model_lock=ModelGate(), prompt_style="full", recent_turns=8)
    ctx = assistant.context("hi", AT, [], [], session_id="s1")
    assert ctx.search_offered is False and "SEARCH" not in assistant.profile.system(ctx)
    from personavlm_cli.core.store import new_memory

    store.add([new_memory("semantic", "I keep bees.", AT.isoformat())])
    ctx = assistant.context("hi", AT, [], [], session_id="s1")
    assert ctx.search_offered is True and "SEARCH" in assistant.profile.system(ctx)
    store.erase([m.id for m in store.records.list(types=["semantic"])], "test")
    ctx = assistant.context("hi", AT, [], [], session_id="s1")
    assert ctx.search_offered is True, "kept for the session: the prompt's beginning does not change back"
    assert ctx.has_long_term_memory is False, "while recall knows there is nothing to search"


def test_a_turn_holds_the_gate_so_background_work_does_not_restart_between_its_steps(store):
    gate = ModelGate()
    interrupted = []
    in_job, leave = threading.Event(), threading.Event()
    gate.on_wait.append(lambda: (interrupted.append(True), leave.set()))  # a job stops when asked
    model = caching()
    conv, clock = _chat(store, model, recent_turns=8, gate=gate)
    started = []

    def job():
        with gate.background():
            started.append(1)
            in_job.set()
            leave.wait(5)

    worker = threading.Thread(target=job)
    worker.start()
    assert in_job.wait(5)
    turn = conv.send("Hello there.")  # the message arrives while the job holds the gate
    assert interrupted, "the job was asked to stop at once"
    leave.set()
    worker.join(5)
    again = threading.Thread(target=job)
    in_job.clear()
    leave.clear()
    again.start()
    assert not in_job.wait(0.3), "no background work starts while the turn is in flight"
    "".join(turn)
    turn.finish()
    assert in_job.wait(5), "the turn's end lets background work go on"
    leave.set()
    again.join(5)


def test_a_session_job_stops_between_its_steps_when_an_answer_waits_and_stays_queued(store):
    from personavlm_cli.core.store import new_memory
    from personavlm_cli.core.update_queue import UpdateQueue
    from personavlm_cli.core.update_stage import UpdateStage

    turns = [new_memory("turn", f"I like river number {i}.", (AT + timedelta(minutes=i)).isoformat(), role="user",
                        session_id="s1") for i in range(4)]
    store.add(turns)
    UpdateQueue(store.records).enqueue_session("s1")
    gate = ModelGate()
    stage = UpdateStage(store, caching(), "ada", gate)
    learnt = []
    real = stage.learner.learn_turn

    def learn_turn(turn):
        learnt.append(turn.id)
        if len(learnt) == 1:  # a message arrives while the job learns its first turn
            holder = threading.Thread(target=gate.hold)
            holder.start()
            holder.join()
        return real(turn)

    stage.learner.learn_turn = learn_turn
    job = stage.pending()[0]
    assert stage.run_job(job) is False, "the job gave the gate back"
    assert len(learnt) == 1 and [j["id"] for j in stage.pending()] == [job["id"]], "it stays queued"
    gate.release()
    assert stage.run_job(stage.pending()[0]) is True and not stage.pending()


def test_the_session_benchmark_summarises_each_message_against_raw_and_judges_the_bars():
    from personavlm_cli.evals.bench import harness
    from personavlm_cli.evals.bench.session import script, summarise

    assert len(script(60)) == 60 and len(set(script(60))) >= 30
    rows = [{"message": 1, "chat_s": 1.0, "raw_s": 1.0, "ratio": 1.0, "prompt_tokens": 40, "cached_tokens": 0}]
    rows += [{"message": i, "chat_s": 0.2, "raw_s": 1.0, "ratio": r, "prompt_tokens": 100, "cached_tokens": 80}
             for i, r in zip(range(2, 6), (0.2, 0.3, 0.4, 1.1))]
    rows.append({"message": "next chat", "chat_s": 1.0, "raw_s": 1.0, "ratio": 0.9, "prompt_tokens": 100,
                 "cached_tokens": 0, "pending_at_start": 4})
    m = summarise(rows)
    assert m["messages"] == 5 and m["first_ratio"] == 1.0
    assert m["ratio_median"] == 0.35 and m["ratio_worst"] == 1.1 and m["over_1"] == 1
    assert m["next_chat_ratio"] == 0.9 and m["next_chat_pending"] == 4 and m["reused_share_median"] == 0.8
    results = {"sections": {"session": {"lengths": {"16": m}}}}
    bars = harness.check_bars(results)
    assert bars["session_ratio_median_16"]["met"] and not bars["session_ratio_worst_16"]["met"]
    assert bars["session_next_chat_ratio_16"]["met"]
    assert harness.plan_for(True)["session_lengths"] == [16] and harness.plan_for(False)["session_lengths"] == [16, 60]
    with pytest.raises(Exception, match="--messages"):
        harness.plan_for(True, lengths=[1])
