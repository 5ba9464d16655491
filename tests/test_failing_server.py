"""Failures poison nothing, as a user meets them (issue 24, item 6): the real program in a child process
against a model server on loopback that refuses every request (HTTP 401) or answers with blanks."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest

from tests.kit import real_store

pytestmark = pytest.mark.slow


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    mode = "refuse"
    posts = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.server.mode == "refuse":
            self._send(401, json.dumps({"error": {"message": "Invalid API Key", "code": 401}}).encode())
        else:
            self._send(200, json.dumps({"data": [{"id": "blank"}]}).encode())

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.posts += 1
        if self.server.mode == "hang":
            time.sleep(4)  # longer than the model's timeout in the test
            return
        if self.server.mode == "refuse":
            self._send(401, json.dumps({"error": {"message": "Invalid API Key", "code": 401}}).encode())
            return
        events = [{"choices": [{"delta": {"content": piece}, "finish_reason": None}]} for piece in (" ", "\n", "  ")]
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events)
        body += 'data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'
        self._send(200, body.encode(), "text/event-stream")


@pytest.fixture
def server():
    srv = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _env(srv) -> dict:
    return {"PERSONAVLM_MODEL_KIND": "openai-compatible",
            "PERSONAVLM_MODEL_URL": f"http://127.0.0.1:{srv.server_address[1]}", "PERSONAVLM_MODEL_API_KEY": "wrong",
            "PERSONAVLM_USER": "ines"}


def _turns(cli, env) -> list[tuple[str, str]]:
    r = cli("memory", "list", "--all", "--type", "turn", "--json", env=env)
    assert r.code == 0, r.err
    return [(m["role"], m["text"]) for m in r.json()]


def test_a_server_that_answers_401_stores_no_answer_and_chat_once_fails(cli, server):
    env = _env(server)
    r = cli("chat", "--once", "I keep bees on the roof.", "--at", "2026-06-01 09:00", env=env)
    assert r.code == 1 and r.out == "" and "Traceback" not in r.err, r
    errors = [ln for ln in r.err.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "401" in errors[0] and "your message is kept" in errors[0], r.err
    # A scripted chat goes on after each failure, says which lines failed, and exits non-zero.
    r = cli("chat", "--at", "2026-06-01 09:05", "--no-update",
            input="Do you remember my bees?\nThey produce heather honey.\n", env=env)
    assert r.code == 1, r
    errors = [ln for ln in r.err.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 2 and "line 1:" in errors[0] and "line 2:" in errors[1], r.err
    assert server.posts >= 3
    assert _turns(cli, env) == [("user", "I keep bees on the roof."), ("user", "Do you remember my bees?"),
                                ("user", "They produce heather honey.")]


def test_a_server_that_answers_only_whitespace_stores_no_placeholder(cli, server):
    server.mode = "blank"
    env = _env(server)
    r = cli("chat", "--once", "Say something.", "--at", "2026-06-01 09:00", "--no-update", env=env)
    assert r.code == 1 and "empty answer" in r.err and "Traceback" not in r.err, r
    assert _turns(cli, env) == [("user", "Say something.")]
    r = cli("memory", "search", "no answer", "--json", env=env)
    assert "(the model gave no answer)" not in r.out


def test_a_model_that_times_out_stores_no_answer(tmp_path, server):
    """The chat turn with the real remote adapter, its timeout cut to one second, against a server that
    never answers in time: the message is kept, no assistant turn, a ModelError that says so."""
    from personavlm_cli.adapters.remote_llm import RemoteChatModel
    from personavlm_cli.core.errors import ModelError
    from tests.test_conversation import _conversation

    server.mode = "hang"
    store = real_store(tmp_path)  # the real parts (tests/kit)
    model = RemoteChatModel(f"http://127.0.0.1:{server.server_address[1]}", timeout=1.0)
    conv = _conversation(store, model)
    turn = conv.send("I play the oboe.")
    with pytest.raises(ModelError) as caught:
        for _ in turn:
            pass
    stats = turn.interrupt()
    assert stats.failed and "\n" not in str(caught.value)
    turns = store.records.list(types=["turn"])
    assert [(t.role, t.text) for t in turns] == [("user", "I play the oboe.")]
    store.close()
