"""The remote model's HTTP client (adapters/remote_llm.py): one pooled httpx client per server, its
connections kept alive, token counts cached; against a loopback server that counts the connections
it accepts."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest

from personavlm_cli.core.errors import ModelError, ModelInterrupted

pytestmark = pytest.mark.fast


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class _KeepAlive(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible server in miniature, HTTP/1.1 with keep-alive (as llama-server is)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def _send(self, status: int, body: bytes, kind: str = "application/json"):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass  # the client shut the connection (interrupt)

    def do_GET(self):
        self.server.paths.append(self.path)
        if self.path == "/v1/models":  # llama-cpp-python's server names its model by the file it loaded
            return self._send(200, json.dumps({"data": [{"id": self.server.model_id}]}).encode())
        return self._send(404, b'{"error": "not found"}')

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.paths.append(self.path)
        if self.path == "/extras/tokenize":
            self.server.tokenized.append(body["input"])
            return self._send(200, json.dumps({"tokens": list(range(len(body["input"].split())))}).encode())
        if body["messages"][-1]["content"] == "slow":
            time.sleep(5)
        self.server.streamed.append(bool(body.get("stream")))
        if body.get("stream") and body["messages"][-1]["content"] == "cut":  # the server gave way to another request
            events = f"data: {json.dumps({'choices': [{'delta': {'content': '{'}}]})}\n\ndata: [DONE]\n\n"
            return self._send(200, events.encode(), "text/event-stream")
        if body.get("stream"):
            events = "".join(f"data: {json.dumps({'choices': [{'delta': {'content': p}}]})}\n\n" for p in ("Hel", "lo"))
            events += 'data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'
            return self._send(200, events.encode(), "text/event-stream")
        return self._send(200, json.dumps({"choices": [{"message": {"content": "{}"}}]}).encode())


@pytest.fixture()
def server():
    srv = _Server(("127.0.0.1", 0), _KeepAlive)
    srv.lock = threading.Lock()
    srv.connections = 0
    srv.paths, srv.tokenized, srv.streamed = [], [], []
    srv.model_id = "/models/elsewhere/tiny.gguf"  # a file of the server's machine, not of this one
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def _url(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def _a_message(model, history: list[str]) -> None:
    """What a chat turn asks of the model server: token counts (the message, the history, the
    system text), the streamed answer, and the update stage's constrained call."""
    for text in [*history, "How are you today?"]:
        model.count_tokens(text)
    assert "".join(model.stream([{"role": "user", "content": "How are you today?"}])) == "Hello"


def test_a_session_uses_one_pooled_connection_per_server_not_one_per_request(server):
    from personavlm_cli.adapters.remote_llm import RemoteChatModel

    model = RemoteChatModel(_url(server), n_ctx=2048)
    worker = model.fork()  # the update thread's client: the same pool
    history = [f"turn number {i} of the session" for i in range(20)]
    try:
        for _ in range(5):
            _a_message(model, history)
            worker.complete([{"role": "user", "content": "rate this"}], json_schema={"type": "object"})
        requests = len(server.paths)
        assert requests >= 5 * 3, "every message sent its requests"
        assert server.connections == 1, f"{server.connections} connections for {requests} requests"
    finally:
        worker.close()
        model.close()


def test_token_counts_are_asked_once_per_text(server):
    from personavlm_cli.adapters.remote_llm import RemoteChatModel

    model = RemoteChatModel(_url(server))
    try:
        assert model.count_tokens("one two three") == 3
        assert model.count_tokens("one two three") == 3
        assert model.count_tokens("four five") == 2
        assert server.tokenized == ["one two three", "four five"]
    finally:
        model.close()


@pytest.mark.slow  # llama.cpp loads the GGUF's vocabulary
def test_token_counts_are_made_here_when_the_served_models_file_is_on_this_machine(server):
    from personavlm_cli.adapters.gguf import embedded_model_path
    from personavlm_cli.adapters.local_tokenizer import LocalTokenizer
    from personavlm_cli.adapters.remote_llm import RemoteChatModel

    server.model_id = str(embedded_model_path())  # the path the server reports is a file here
    model = RemoteChatModel(_url(server))
    given = RemoteChatModel(_url(server), tokenizer=embedded_model_path())
    try:
        n = model.count_tokens("Hello there, how are you today?")
        assert n == given.count_tokens("Hello there, how are you today?") == LocalTokenizer.for_file(
            embedded_model_path()).count("Hello there, how are you today?")
        assert 5 <= n <= 12, n
        assert model.count_tokens("antidisestablishmentarianism") > 1, "the model's own tokens, not words"
        assert server.tokenized == [], "the server was not asked to tokenize"
        assert server.paths.count("/v1/models") == 1, "it asked which model is served, once"
    finally:
        model.close()
        given.close()


def test_an_interrupted_call_costs_its_connection_only_and_the_pool_goes_on(server):
    from personavlm_cli.adapters.remote_llm import RemoteChatModel

    model = RemoteChatModel(_url(server))
    worker = model.fork()
    try:
        assert model.count_tokens("warm the pool") == 3
        timer = threading.Timer(0.3, worker.interrupt)
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(ModelInterrupted):
            worker.complete([{"role": "user", "content": "slow"}])
        assert time.monotonic() - t0 < 3, "the interrupted call waited for the server's answer"
        timer.join()
        assert worker.complete([{"role": "user", "content": "hi"}]) == "Hello"  # a fork's call is streamed
        assert "".join(model.stream([{"role": "user", "content": "hi"}])) == "Hello"
        assert server.connections <= 3
    finally:
        worker.close()
        model.close()


def test_closing_the_last_client_of_a_server_closes_its_pool(server):
    from personavlm_cli.adapters.model_http import ServerPool as _Pool
    from personavlm_cli.adapters.remote_llm import RemoteChatModel

    model = RemoteChatModel(_url(server))
    twin = model.fork()
    model.count_tokens("a b")
    twin.count_tokens("c d")
    assert len([k for k in _Pool._open if k[2] == server.server_address[1]]) == 1
    twin.close()
    assert model.count_tokens("e f") == 2, "closing the fork leaves the model's client open"
    model.close()
    assert not [k for k in _Pool._open if k[2] == server.server_address[1]]
    with pytest.raises(ModelError, match="closed"):
        model.count_tokens("g h")


def test_a_background_call_is_streamed_so_the_server_can_stop_it_and_a_cut_stream_is_an_interruption(server):
    """llama-cpp-python's server runs one request at a time: a whole response would make the answer wait
    for all of it, a stream gives way at its next token when another request waits."""
    from personavlm_cli.adapters.remote_llm import RemoteChatModel

    model = RemoteChatModel(_url(server))
    worker = model.fork()
    try:
        assert model.complete([{"role": "user", "content": "hi"}]) == "{}"
        assert worker.complete([{"role": "user", "content": "rate this"}]) == "Hello"
        assert server.streamed == [False, True], "the answers' client asks for whole responses, the fork streams"
        with pytest.raises(ModelInterrupted):
            worker.complete([{"role": "user", "content": "cut"}])
        assert worker.complete([{"role": "user", "content": "again"}]) == "Hello", "usable after"
    finally:
        worker.close()
        model.close()


def test_a_prefill_asks_the_server_to_evaluate_the_next_prompts_beginning_for_one_token(server):
    from personavlm_cli.adapters.remote_llm import RemoteChatModel

    model = RemoteChatModel(_url(server))
    try:
        prefix = [{"role": "system", "content": "You know Ada."}, {"role": "user", "content": ""}]
        assert model.prefill(prefix, stop=lambda: True) is False and server.streamed == [], "stopped: nothing sent"
        assert model.prefill(prefix) is True
        assert server.streamed == [True] and server.paths[-1] == "/v1/chat/completions"
    finally:
        model.close()
