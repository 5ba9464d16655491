"""A real session with the real embedded model (llama.cpp): the prompt's beginning is reused after the
recent-turn window moves and after background learning, and background work yields to a message in
the middle of its prompt. Mechanism only (tokens reused, where a call stopped), never wall times:
speed is `personavlm bench --only session` (docs/benchmarks.md)."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import pytest

from personavlm_cli.core.errors import ModelInterrupted
from tests.kit import real_store

pytestmark = pytest.mark.slow

AT = datetime(2026, 5, 4, 9, 0).astimezone()
LONG = " ".join(f"On day {i} I walked my dog Pepper along the river and counted {i} boats." for i in range(60))


@pytest.fixture(scope="module")
def real_model():
    from personavlm_cli.adapters.gguf import embedded_model_path
    from personavlm_cli.adapters.llm import ChatModel

    model = ChatModel(embedded_model_path(), n_ctx=4096, seed=0)
    yield model
    model.close()


def test_a_prefill_stops_between_batches_and_keeps_what_it_evaluated(real_model):
    history = [{"role": "user", "content": LONG}, {"role": "assistant", "content": "What a lot of boats."}]
    asked = []

    def stop():
        asked.append(1)
        return len(asked) > 3  # a message arrives after three batches

    real_model.drop_cache()
    assert real_model.prefill([*history, {"role": "user", "content": ""}], stop=stop) is False
    "".join(real_model.stream([*history, {"role": "user", "content": "How many boats?"}], max_tokens=2))
    partial = dict(real_model.last_usage)
    assert 0 < partial["cached_tokens"] < partial["prompt_tokens"] // 2, partial

    real_model.drop_cache()
    assert real_model.prefill([*history, {"role": "user", "content": ""}]) is True
    "".join(real_model.stream([*history, {"role": "user", "content": "How many boats?"}], max_tokens=2))
    full = dict(real_model.last_usage)
    assert full["prompt_tokens"] - full["cached_tokens"] < 20, f"only the new message is evaluated: {full}"


def test_a_background_call_is_stopped_inside_its_prompt_when_an_answer_waits(real_model):
    fork = real_model.fork()
    try:
        llm = fork._model()
        prompt = [{"role": "user", "content": LONG}]
        total = len(llm.tokenize(LONG.encode()))
        outcome = []

        def job():
            try:
                fork.complete(prompt, max_tokens=8)
                outcome.append("finished")
            except ModelInterrupted:
                outcome.append("interrupted")

        worker = threading.Thread(target=job)
        worker.start()
        deadline = time.monotonic() + 120
        while llm.n_tokens == 0 and worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        fork.interrupt()  # what the gate does when a message arrives
        worker.join(120)
        assert outcome == ["interrupted"]
        assert 0 < llm.n_tokens < total, "stopped between two batches of its prompt, not after it"
        assert fork.complete([{"role": "user", "content": "Say hi."}], max_tokens=4) is not None, "usable after"
    finally:
        fork.close()


def test_a_long_session_with_learning_reuses_the_cache_after_the_window_moves_and_background_work(real_model,
                                                                                                   tmp_path):
    from personavlm_cli.core.assistant import Assistant
    from personavlm_cli.core.conversation import Conversation
    from personavlm_cli.core.gate import ModelGate
    from personavlm_cli.evals.bench.session import script

    store = real_store(tmp_path)  # the real parts (tests/kit)
    clock = {"now": AT}
    assistant = Assistant(store, real_model, "ada", model_lock=ModelGate(), prompt_style="compact", recent_turns=8)
    # The model extractor: the update thread calls the model (its fork) after every statement, so the answers'
    # cache is tested against background model work (the personality reading needs no model, and the script's
    # plain facts are no personality evidence).
    conv = Conversation(assistant, learn=True, clock=lambda: clock["now"], extractor="model",
                        sampling={"max_tokens": 16, "temperature": 0.0})
    real_model.drop_cache()
    fork = real_model.fork()
    worker = fork._model()
    conv.open(fork)
    rows = []
    try:
        for i, text in enumerate(script(12)):
            clock["now"] = AT + timedelta(minutes=i)
            turn = conv.send(text)
            "".join(turn)
            stats = turn.finish()
            conv.ended(turn)
            own = real_model.count_tokens(assistant.last.prompt[-1]["content"])  # this message's block
            rows.append((stats.prompt_tokens, stats.cached_tokens, own))
            if conv.warmup is not None:
                assert conv.warmup.wait(120)
            assert conv.background.wait_idle(300), "the update thread finished this turn's learning"
        assert worker.n_tokens > 0, "background learning used the model (its own context) in between"
        assert conv.warmup is None or conv.warmup.done is not None
    finally:
        conv.close(consolidate=False)
        store.close()
    for prompt, cached, own in rows[1:]:
        # Every follow-up evaluates only its own message (its block, with what was recalled for it, and
        # the chat template's few tokens around it): the history before it came from the cache.
        assert prompt - cached <= own + 12, rows
    firsts_moved = sum(1 for (p0, c0, _), (p1, c1, _) in zip(rows, rows[1:]) if p1 < p0)
    assert firsts_moved >= 1, f"the window moved at least once in 12 messages of 8 turns: {rows}"


def test_the_next_chats_first_message_is_answered_before_the_work_the_last_chat_left(real_model, tmp_path):
    """Ordering with the real model and its real fork: while the new chat's first message is answered,
    the update thread's context has evaluated nothing; after it, the earlier chat's jobs run on it, and
    the next message still reuses the answer's prefix."""
    from personavlm_cli.core.assistant import Assistant
    from personavlm_cli.core.conversation import Conversation
    from personavlm_cli.core.gate import ModelGate
    from personavlm_cli.evals.bench.session import script

    store = real_store(tmp_path)  # the real parts (tests/kit)
    clock = {"now": AT}

    def chat():
        assistant = Assistant(store, real_model, "ada", model_lock=ModelGate(), prompt_style="compact",
                              recent_turns=8)
        return assistant, Conversation(assistant, learn=True, clock=lambda: clock["now"],
                                       sampling={"max_tokens": 8, "temperature": 0.0})

    _, first_chat = chat()
    for i, text in enumerate(script(4)):  # a chat whose learning is all left queued (no worker)
        clock["now"] = AT + timedelta(minutes=i)
        turn = first_chat.send(text)
        "".join(turn)
        turn.finish()
    pending = first_chat.close(consolidate=True).pending
    assert pending >= 4

    clock["now"] = AT + timedelta(hours=3)
    assistant, conv = chat()
    real_model.drop_cache()
    fork = real_model.fork()
    worker = fork._model()
    conv.open(fork)
    try:
        time.sleep(1.5)  # the user types
        assert worker.n_tokens == 0 and len(conv.queue.pending()) >= pending, "no job ran before the message"
        turn = conv.send("What do you remember about me?")
        pieces = iter(turn)
        assert next(pieces)
        assert worker.n_tokens == 0, "at the first token, the update thread's context had evaluated nothing"
        "".join(pieces)
        first = turn.finish()
        conv.ended(turn)
        deadline = time.monotonic() + 300
        while len(conv.queue.pending()) >= pending + 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(conv.queue.pending()) < pending + 1, "after the first answer, the earlier chat's jobs ran"
        clock["now"] += timedelta(minutes=1)
        turn = conv.send("And what is my dog called?")
        "".join(turn)
        second = turn.finish()
        conv.ended(turn)
        assert first.cached_tokens == 0 and second.cached_tokens > 0, (first, second)
    finally:
        conv.close(consolidate=False)
        store.close()
