"""The chat turn as a core use case (core/conversation.py), in-process: a real store on disk (SQLite,
Chroma, the ONNX text encoder: the ``store`` fixture) and the kit's scripted chat model (control flow only:
the real model's turn is in tests/test_turn_e2e.py and tests/test_chat_e2e.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from personavlm_cli.core.gate import ModelGate
from tests.kit import ScriptedModel

pytestmark = pytest.mark.fast

AT = datetime(2026, 5, 4, 9, 0).astimezone()


def _conversation(store, model, **kw):
    from personavlm_cli.core.assistant import Assistant
    from personavlm_cli.core.conversation import Conversation

    clock = kw.pop("clock", lambda: AT)
    assistant = Assistant(store, model, "ada", model_lock=ModelGate(), prompt_style="compact")
    return Conversation(assistant, clock=clock, sampling={"max_tokens": 64}, **kw)


def test_a_turn_stores_the_message_first_then_the_answer_learns_and_queues_only_when_it_ends(store):
    model = ScriptedModel(["Mango is a lovely name for a parrot."])
    conv = _conversation(store, model)
    turn = conv.send("My parrot is called Mango.")
    # The user's turn is on disk before the model has run; nothing else yet.
    turns = store.records.list(types=["turn"])
    assert [t.text for t in turns] == ["My parrot is called Mango."] and not model.prompts
    assert not store.records.list(types=["semantic"]) and not conv.queue.pending()

    text = "".join(turn)
    stats = turn.finish()
    assert text == "Mango is a lovely name for a parrot."
    answers = [t for t in store.records.list(types=["turn"]) if t.role == "assistant"]
    assert [a.text for a in answers] == [text] and not answers[0].meta.get("interrupted")
    assert [m.text for m in store.records.list(types=["semantic"])] == ["My parrot is called Mango."]
    assert [j["kind"] for j in conv.queue.pending()] == ["turn"]
    assert not store.records.unembedded(10)  # the message and the answer have their vectors
    assert stats.answer_tokens == 8 and stats.prompt_tokens and stats.interrupted is False
    assert stats.session == turns[0].session_id
    assert turn.finish() is stats  # ending twice changes nothing
    conv.ended(turn)
    assert conv.totals["answers"] == 1 and conv.totals["tokens"] == 8


def test_an_interrupted_turn_keeps_only_the_pieces_that_were_shown(store):
    model = ScriptedModel(["one two three four five six"])
    conv = _conversation(store, model)
    turn = conv.send("Count for me.")
    shown = []
    for piece in turn:
        shown.append(piece)
        if len(shown) == 3:
            break  # Ctrl-C while the third piece is on the screen
    stats = turn.interrupt()
    answer = [t for t in store.records.list(types=["turn"]) if t.role == "assistant"][0]
    assert answer.text == "one two" and answer.meta["interrupted"] is True
    assert stats.interrupted is True


def test_an_error_in_the_answer_ends_the_turn_as_interrupted_with_what_came(store):
    from personavlm_cli.core.errors import ModelError

    conv = _conversation(store, ScriptedModel(["alpha beta gamma delta"], fail_after=2))
    with pytest.raises(ModelError), conv.send("Tell me something.") as turn:
        for _ in turn:
            pass
    answer = [t for t in store.records.list(types=["turn"]) if t.role == "assistant"][0]
    assert answer.text == "alpha beta" and answer.meta["interrupted"] is True
    # The gate was given back: the next turn runs.
    nxt = conv.send("Again?")
    assert "".join(nxt) and nxt.finish().interrupted is False


def test_a_message_longer_than_the_context_allows_is_cut_and_stored_as_sent(store):
    model = ScriptedModel()
    model.n_ctx = 600  # half of it, 300 tokens, is the message's budget
    conv = _conversation(store, model)
    turn = conv.send(" ".join(f"w{i}" for i in range(1000)))
    assert turn.trimmed is not None and turn.trimmed.tokens == 1000 and turn.trimmed.kept == 300
    "".join(turn)
    turn.finish()
    stored = store.records.get(turn.exchange.user_turn.id)
    assert len(stored.text.split()) == 300


def test_no_update_learns_nothing_and_queues_nothing(store):
    conv = _conversation(store, ScriptedModel(), learn=False)
    turn = conv.send("My parrot is called Mango.")
    "".join(turn)
    turn.finish()
    assert not store.records.list(types=["semantic", "core"])
    assert not conv.queue.pending()
    assert conv.close(consolidate=True).pending == 0


def test_a_gap_starts_a_new_session_and_queues_the_old_one_and_remember_joins_the_open_session(store):
    now = {"t": AT}
    conv = _conversation(store, ScriptedModel(), clock=lambda: now["t"])
    first = conv.send("I live in Lisbon.")
    "".join(first)
    first.finish()
    now["t"] = AT + timedelta(hours=3)  # past the 60-minute gap
    second = conv.send("Good morning.")
    "".join(second)
    second.finish()
    assert second.exchange.user_turn.session_id != first.exchange.user_turn.session_id
    sessions = [j["payload"]["session"] for j in conv.queue.pending() if j["kind"] == "session"]
    assert sessions == [first.exchange.user_turn.session_id]
    kept, new = conv.remember("I switched from tea to coffee.")
    assert new and kept.session_id == second.exchange.user_turn.session_id


def test_an_explicit_session_is_used_as_given(store):
    conv = _conversation(store, ScriptedModel())
    turn = conv.send("Hello there.", session_id="replay-7")
    "".join(turn)
    turn.finish()
    assert store.records.get(turn.exchange.user_turn.id).session_id == "replay-7"


def test_the_background_worker_runs_queued_work_and_a_failure_is_reported_at_close(store):
    conv = _conversation(store, ScriptedModel())
    turn = conv.send("My name is Ada and I love meeting new people at parties.")
    "".join(turn)
    turn.finish()
    worker = ScriptedModel()
    conv.open(worker)
    conv.ended(turn)
    assert conv.background.wait_idle(30) or conv.background.wait_idle(30)
    closing = conv.close(consolidate=False)
    assert closing.error is None and closing.pending == 0
    assert store.records.personality_history(), "the turn job ran in the background"
    assert worker.closed, "the worker's own model context is released at close"

    class Broken(ScriptedModel):
        def complete_json(self, messages, schema, **kw):
            raise RuntimeError("the worker crashed")

    turn = conv.send("I work as a baker and I worry about everything.")  # evidence: the model is asked
    "".join(turn)
    turn.finish()
    conv.open(Broken())
    conv.ended(turn)
    conv.background.wait_idle(30)
    closing = conv.close(consolidate=False)
    assert closing.error is not None and "the worker crashed" in closing.error
    assert closing.pending == 1, "the job the worker could not run stays queued"
