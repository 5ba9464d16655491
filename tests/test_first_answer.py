"""The first message of a chat is answered before any work an earlier chat left (core/conversation.py
``open``, core/background.py ``BackgroundUpdates(after=...)``), and an answer that arrives while a job runs
gets the gate at the job's next token. In-process: a real store on disk and scripted models that log
every call in order (mechanism, never wall times: speed is `personavlm bench --only session`)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest

from personavlm_cli.core.errors import ModelInterrupted
from personavlm_cli.core.gate import ModelGate
from tests.kit import ScriptedModel

pytestmark = pytest.mark.fast

AT = datetime(2026, 5, 4, 9, 0).astimezone()


def logging_model(name: str, log: list, kind: type[ScriptedModel] = ScriptedModel) -> ScriptedModel:
    """The kit's model; every call is logged as (who, what) in a list shared by a model and its fork."""
    return kind(default="Hello there.", n_ctx=4096, log=log, name=name)


def _chat(store, model, gate, minute: int):
    from personavlm_cli.core.assistant import Assistant
    from personavlm_cli.core.conversation import Conversation

    assistant = Assistant(store, model, "ada", model_lock=gate, prompt_style="compact", recent_turns=8)
    return Conversation(assistant, learn=True, clock=lambda: AT + timedelta(minutes=minute),
                        sampling={"max_tokens": 8})


# Statements with personality evidence: each turn job asks the worker's model (complete_json).
EARLIER = ["I love meeting new people at parties and I talk to everyone.",
           "I worry about everything and I get nervous before every shift.",
           "I always plan my week carefully and I keep my desk tidy."]


def _earlier_chat_leaves_work(store, log) -> int:
    """A chat of three messages ends with its learning queued (no worker ran): the jobs pending."""
    gate = ModelGate()
    conv = _chat(store, logging_model("chat", log), gate, 0)
    for i, text in enumerate(EARLIER):
        turn = conv.send(text, at=AT + timedelta(minutes=i))
        "".join(turn)
        turn.finish()
    return conv.close(consolidate=True).pending


def test_work_left_by_an_earlier_chat_waits_until_the_next_chats_first_answer_has_ended(store):
    log: list = []
    pending = _earlier_chat_leaves_work(store, log)
    assert pending >= 3, "three turn jobs (and the session's) were left for the next chat"
    log.clear()

    gate = ModelGate()
    model = logging_model("chat", log)
    conv = _chat(store, model, gate, 600)  # ten hours later: a new chat
    conv.open(model.fork())
    try:
        time.sleep(1.2)  # the user types; the worker has woken at least twice meanwhile
        assert log == [] and len(conv.queue.pending()) >= pending, "no job started before the first message"
        turn = conv.send("What do you remember about me?")
        first = next(iter(turn))
        assert first == "Hello" and log == [("chat", "answer")], "the first token came before any job"
        "".join(turn)
        turn.finish()
        assert log == [("chat", "answer")] and len(conv.queue.pending()) >= pending, "nor during the answer"
        conv.ended(turn)
        assert conv.background.wait_idle(30)
        deadline = time.monotonic() + 30
        while conv.queue.pending() and time.monotonic() < deadline:
            conv.background.wait_idle(1)
        assert not conv.queue.pending(), "after the first answer the earlier chat's work ran"
        jobs = [who for who, what in log if what == "job"]
        assert jobs and set(jobs) == {"chat-fork"}, log
        assert log.index(("chat-fork", "job")) > log.index(("chat", "answer"))
    finally:
        conv.close(consolidate=False)


def test_without_a_first_answer_nothing_of_the_earlier_work_runs_and_it_stays_queued(store):
    log: list = []
    pending = _earlier_chat_leaves_work(store, log)
    log.clear()
    conv = _chat(store, logging_model("chat", log), ModelGate(), 600)
    conv.open(logging_model("worker", log))
    time.sleep(1.2)
    closing = conv.close(consolidate=False)
    assert log == [] and closing.pending >= pending, "a chat quit before its first answer leaves the queue as it was"


def test_an_answer_that_arrives_during_a_job_gets_the_model_at_the_jobs_next_token(store):
    """A job's model call is stopped at its next token by the waiting answer; the answer is granted the
    gate at once, the job stays queued and runs again after the answer."""
    log: list = []
    _earlier_chat_leaves_work(store, log)
    log.clear()
    gate = ModelGate()

    class SlowWorker(ScriptedModel):
        """A background call that produces a token every 10 ms until it is interrupted."""

        def complete_json(self, messages, schema, **kw):
            self.log.append((self.name, "job"))
            for _token in range(3000):
                if self.aborted.is_set():
                    self.aborted.clear()
                    self.log.append((self.name, "stopped"))
                    raise ModelInterrupted("interrupted")
                time.sleep(0.01)
            self.log.append((self.name, "job done"))
            return {t: 3 for t in schema.get("properties", {})}

    model = logging_model("chat", log)
    conv = _chat(store, model, gate, 600)
    conv.open(logging_model("worker", log, SlowWorker))
    try:
        turn = conv.send("Hi!")
        "".join(turn)
        turn.finish()
        conv.ended(turn)  # the earlier chat's jobs may start now
        deadline = time.monotonic() + 30
        while ("worker", "job") not in log and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ("worker", "job") in log, "a job is running its model call"
        turn = conv.send("And what else?")
        first = next(iter(turn))
        assert first == "Hello"
        answer = len(log) - 1 - log[::-1].index(("chat", "answer"))
        assert log[answer - 1] == ("worker", "stopped"), f"the job stopped just before the answer: {log}"
        assert ("worker", "job done") not in log
        "".join(turn)
        turn.finish()
        assert conv.queue.pending(), "the interrupted job stays queued"
    finally:
        conv.close(consolidate=False)
