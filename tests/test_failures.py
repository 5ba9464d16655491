"""Failures poison nothing (issue 24, item 6): a model that is refused, unreachable, times out or answers
with nothing leaves the user's message stored and no assistant turn, nothing of it in a later prompt,
one line in the chat, and a non-zero exit for ``chat --once``. In-process with a real store and scripted
models; the refusing HTTP server (a real 401 over loopback) is in tests/test_failing_server.py."""

from __future__ import annotations

from datetime import datetime

import pytest

from personavlm_cli.core.conversation import respond
from personavlm_cli.core.errors import ModelError, NoAnswer
from tests.conftest import assert_one_line_error
from tests.kit import ScriptedModel
from tests.test_conversation import _conversation

PLACEHOLDER = "(the model gave no answer)"
REMOTE = {"PERSONAVLM_MODEL_KIND": "openai-compatible", "PERSONAVLM_MODEL_URL": "http://127.0.0.1:9"}  # never called


class FailingModel(ScriptedModel):
    """Refuses every answer the way a server does (HTTP 401), or sends only the given blank pieces."""

    def __init__(self, error: str | None = "the model server refused the request: HTTP 401 Unauthorized",
                 blank: str | None = None):
        super().__init__()
        self.error = error
        self.blank = blank

    def stream(self, messages, **kw):
        self.prompts.append(messages)
        if self.error is not None:
            raise ModelError(self.error)
        yield from (self.blank or "")

    def fork(self):
        return FailingModel(self.error, self.blank)


def _assistant_turns(store):
    return [t for t in store.records.list(types=["turn"], include_superseded=True) if t.role == "assistant"]


def test_a_refused_answer_keeps_the_message_stores_no_answer_and_feeds_nothing_back(store):
    model = FailingModel()
    conv = _conversation(store, model)
    turn = conv.send("Our allotment grows purple carrots.")
    with pytest.raises(ModelError, match="401"):
        for _ in turn:
            pass
    stats = turn.interrupt()  # what the chat does when an answer ends in an error
    assert stats.failed and "401" in stats.failed
    users = [t for t in store.records.list(types=["turn"]) if t.role == "user"]
    assert [t.text for t in users] == ["Our allotment grows purple carrots."]
    assert _assistant_turns(store) == []
    assert not store.records.unembedded(10), "the message is embedded: recall finds it later"
    assert [j["kind"] for j in conv.queue.pending()] == ["turn"], "the message is still learnt from"

    # The next message's prompt holds the earlier message, and no answer to it (none was given).
    model.error = None
    model.blank = None
    ok = ScriptedModel(["Purple carrots are lovely."])
    conv.assistant.model = ok
    nxt = conv.send("What grows there?")
    assert "".join(nxt) == "Purple carrots are lovely."
    nxt.finish()
    prompt = ok.prompts[-1]
    assert not [m for m in prompt if m["role"] == "assistant"], prompt
    assert [t.text for t in _assistant_turns(store)] == ["Purple carrots are lovely."]


@pytest.mark.parametrize("blank", ["", "  \n\t ", "\n\n"])
def test_an_empty_or_blank_answer_stores_no_placeholder(store, blank):
    model = FailingModel(error=None, blank=blank)
    conv = _conversation(store, model)
    turn = conv.send("Tell me about badgers.")
    with pytest.raises(NoAnswer):
        for _ in turn:
            pass
    turn.interrupt()
    assert len(model.prompts) == 2, "one plain retry before giving up"
    assert _assistant_turns(store) == []
    texts = [m.text for m in store.records.list(include_superseded=True)]
    assert PLACEHOLDER not in texts and "Tell me about badgers." in texts


def test_a_turn_stopped_before_any_text_stores_no_blank_answer(store):
    conv = _conversation(store, ScriptedModel(["one two three"]))
    turn = conv.send("Count.")
    turn.interrupt()  # Ctrl-C before the first piece
    assert _assistant_turns(store) == []


def test_blank_answers_stored_by_older_versions_are_not_fed_back(store):
    from personavlm_cli.core.store import new_memory

    conv = _conversation(store, ScriptedModel(["Fine."]))
    first = conv.send("Hello.")
    "".join(first)
    first.finish()
    user = first.exchange.user_turn
    old = new_memory("turn", PLACEHOLDER, user.occurred, role="assistant", session_id=user.session_id,
                     source_ids=[user.id])
    store.add([old])
    model = ScriptedModel(["Sure."])
    conv.assistant.model = model
    nxt = conv.send("And now?")
    "".join(nxt)
    nxt.finish()
    assert not any(PLACEHOLDER in m["content"] for m in model.prompts[-1])


# -- the chat command ---------------------------------------------------------------------------------


@pytest.fixture
def refusing(monkeypatch):
    """Every chat of the test gets a model that refuses (or, set ``.blank``, answers with blanks)."""
    from personavlm_cli.cli import env as env_module

    failing = FailingModel()
    monkeypatch.setattr(env_module.Env, "model", lambda self: failing)
    return failing


def test_chat_once_with_a_refusing_model_exits_non_zero_in_one_line_and_keeps_the_message(run, refusing):
    r = run("chat", "--once", "My kayak is called Otter.", "--at", "2026-03-02 10:00", env=REMOTE)
    assert r.code == 1 and r.out == "" and "Traceback" not in r.err
    errors = [ln for ln in r.err.splitlines() if "Error" in ln]
    assert len(errors) == 1 and r.err.splitlines()[-1] == errors[0], r.err
    assert "401" in errors[0] and "your message is kept" in errors[0] and "nothing was stored" in errors[0]
    turns = run("memory", "list", "--type", "turn", "--json").json()
    assert [(t["role"], t["text"]) for t in turns] == [("user", "My kayak is called Otter.")]
    assert any("Otter" in m["text"] for m in run("memory", "list", "--type", "semantic", "--json").json()), \
        "the user's own words are still learnt"


def test_chat_once_with_a_blank_answer_exits_non_zero_and_stores_no_placeholder(run, refusing):
    refusing.error, refusing.blank = None, "   "
    r = run("chat", "--once", "Anything new?", "--at", "2026-03-02 10:00", "--no-update", env=REMOTE)
    assert_one_line_error(r, "empty answer")
    everything = run("memory", "list", "--all", "--json").json()
    assert [m["text"] for m in everything] == ["Anything new?"]


def test_a_scripted_chat_says_each_failure_in_one_line_goes_on_and_exits_non_zero(run, refusing):
    r = run("chat", "--at", "2026-03-02 10:00", "--no-update", env=REMOTE,
            input="I sail on Sundays.\n/memories\nMy boat leaks.\n")
    assert r.code == 1
    errors = [ln for ln in r.err.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 2 and "line 1:" in errors[0] and "line 3:" in errors[1], r.err
    assert all("401" in e and "your message is kept" in e for e in errors)
    assert "Traceback" not in r.err
    turns = run("memory", "list", "--type", "turn", "--json").json()
    assert [(t["role"], t["text"]) for t in turns] == [("user", "I sail on Sundays."), ("user", "My boat leaks.")]



def test_a_replay_through_respond_goes_on_after_an_empty_answer(store):
    """The evaluations replay through ``Assistant.respond``: an empty answer ends that stream with nothing
    (no stand-in, nothing stored) instead of stopping the whole run."""
    conv = _conversation(store, FailingModel(error=None, blank=" "))
    ex, stream = respond(conv.assistant, "I repair clocks.", datetime(2026, 5, 4, 9, 0).astimezone())
    assert list(stream) == []
    assert _assistant_turns(store) == [] and ex.user_turn.text == "I repair clocks."
