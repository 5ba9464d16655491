"""The ports (core/ports.py) and their adapters: every adapter class has every member of its port, with a
compatible signature (read with ``inspect``, no model loaded); and the remote model's answers to the
members a server has no state for (``fork``, ``interrupt``, ``last_usage``), against a loopback server
this test starts and stops."""

from __future__ import annotations

import http.server
import importlib
import inspect
import json
import threading
import time
from typing import Protocol

import pytest

from personavlm_cli.core import ports
from personavlm_cli.core.errors import ModelError, ModelInterrupted

IMPLEMENTATIONS = [
    (ports.ChatModel, "personavlm_cli.adapters.llm", "ChatModel"),
    (ports.ChatModel, "personavlm_cli.adapters.remote_llm", "RemoteChatModel"),
    (ports.RecordStore, "personavlm_cli.adapters.records", "RecordStore"),
    (ports.RecordStore, "personavlm_cli.adapters.pg_records", "PgRecordStore"),
    (ports.VectorIndex, "personavlm_cli.adapters.vectors", "VectorIndex"),
    (ports.TextEncoder, "personavlm_cli.adapters.text_encoder", "TextEncoder"),
    (ports.ImageEncoder, "personavlm_cli.adapters.image_encoder", "ImageEncoder"),
    (ports.ArchiveFormat, "personavlm_cli.adapters.archive", "ZipArchive"),
    (ports.CheckedArchive, "personavlm_cli.adapters.archive_read", "Checked"),
]

_PROTOCOL_NOISE = set(dir(Protocol)) | {"__annotations__", "__dict__", "__weakref__", "__parameters__",
                                        "__protocol_attrs__", "__non_callable_proto_members__"}


def members(port) -> dict[str, object]:
    """The port's public members: methods and properties by name, attributes (annotations) as None."""
    out: dict[str, object] = {name: None for name in getattr(port, "__annotations__", {})}
    for name, value in vars(port).items():
        if not name.startswith("_") and name not in _PROTOCOL_NOISE:
            out[name] = value
    return out


def _annotated(cls, name: str) -> bool:
    return any(name in getattr(k, "__annotations__", {}) for k in cls.__mro__)


def signature_problems(port_fn, impl_fn) -> list[str]:
    """Ways ``impl_fn`` cannot be called as ``port_fn`` says: a parameter missing, of another kind
    (positional / keyword-only), without the port's default or with another one; or a parameter
    of its own without a default."""
    want = inspect.signature(port_fn).parameters
    got = inspect.signature(impl_fn).parameters
    problems = []
    for name, p in want.items():
        g = got.get(name)
        if g is None:
            problems.append(f"no parameter {name!r}")
        elif g.kind != p.kind:
            problems.append(f"{name!r} is {g.kind.description}, the port says {p.kind.description}")
        elif p.default is not inspect.Parameter.empty and g.default != p.default:
            problems.append(f"{name!r} defaults to {g.default!r}, the port says {p.default!r}")
    for name, g in got.items():
        if name not in want and g.default is inspect.Parameter.empty and g.kind not in (
                inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            problems.append(f"its own parameter {name!r} has no default")
    return problems


@pytest.mark.parametrize("port, module, name", IMPLEMENTATIONS, ids=[f"{m.rsplit('.', 1)[1]}.{n}"
                                                                     for _, m, n in IMPLEMENTATIONS])
def test_each_adapter_provides_every_member_of_its_port(port, module, name):
    cls = getattr(importlib.import_module(module), name)
    problems = []
    for member, spec in members(port).items():
        impl = inspect.getattr_static(cls, member, None)
        if spec is None or isinstance(spec, property):
            # An attribute or a property: a class attribute, a property, or declared on the class
            # (an instance attribute its __init__ sets).
            if impl is None and not _annotated(cls, member):
                problems.append(f"{member}: missing (neither on the class nor declared in its annotations)")
        elif impl is None or not callable(getattr(cls, member)):
            problems.append(f"{member}(): missing")
        else:
            problems += [f"{member}(): {p}" for p in signature_problems(spec, getattr(cls, member))]
    assert not problems, f"{name} does not implement {port.__name__}: " + "; ".join(problems)


def test_the_signature_check_refuses_what_a_caller_could_not_call():
    def port(self, messages, *, max_tokens: int = 256, stop=None): ...

    assert signature_problems(port, port) == []
    assert signature_problems(port, lambda self, messages, *, max_tokens=256, stop=None, extra=1: 0) == []
    assert signature_problems(port, lambda self, messages, *, max_tokens=256: 0) == ["no parameter 'stop'"]
    assert signature_problems(port, lambda self, messages, *, max_tokens=512, stop=None: 0) == [
        "'max_tokens' defaults to 512, the port says 256"]
    assert signature_problems(port, lambda self, messages, max_tokens=256, stop=None: 0)[0].startswith(
        "'max_tokens' is positional or keyword")
    assert signature_problems(port, lambda self, messages, extra, *, max_tokens=256, stop=None: 0) == [
        "its own parameter 'extra' has no default"]


# --------------------------------------------------------------------------------------------------
# The remote model's fork, interrupt and last_usage, against a loopback server
# --------------------------------------------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    seen: list


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((self.headers.get("Authorization"), body))
        text = body["messages"][-1]["content"]
        if text == "slow":
            time.sleep(5)
        usage = {"prompt_tokens": 12, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 8}}
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for piece in ("Hel", "lo"):
                chunk = {"choices": [{"delta": {"content": piece}, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n')
            return
        out = json.dumps({"choices": [{"message": {"content": "Hello"}}], "usage": usage}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        try:
            self.wfile.write(out)
        except OSError:
            pass  # the client shut the connection (interrupt)


@pytest.fixture()
def server():
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.seen = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def _url(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def test_remote_fork_is_a_second_client_of_the_same_server_with_the_same_credentials(server):
    from personavlm_cli.adapters.remote_llm import RemoteChatModel

    with RemoteChatModel(_url(server), "m", n_ctx=2048, api_key="k1", seed=7) as model:
        twin = model.fork()
        assert twin is not model and isinstance(twin, RemoteChatModel)
        assert (twin.url, twin.name, twin.n_ctx) == (model.url, "m", 2048)
        assert twin.complete([{"role": "user", "content": "hi"}]) == "Hello"
        twin.close()
        with pytest.raises(ModelError, match="closed"):
            twin.complete([{"role": "user", "content": "hi"}])
        assert model.complete([{"role": "user", "content": "hi"}]) == "Hello"  # closing the fork left it alone
    assert [auth for auth, _ in server.seen] == ["Bearer k1", "Bearer k1"]
    assert server.seen[0][1]["seed"] == 7


def test_remote_last_usage_is_what_the_server_reports(server):
    from personavlm_cli.adapters.remote_llm import RemoteChatModel

    model = RemoteChatModel(_url(server))
    assert model.last_usage == {}
    model.complete([{"role": "user", "content": "hi"}])
    assert model.last_usage == {"prompt_tokens": 12, "completion_tokens": 3, "cached_tokens": 8}
    assert "".join(model.stream([{"role": "user", "content": "hi"}])) == "Hello"
    assert model.last_usage == {"completion_tokens": 2}  # no usage in the stream: the pieces, counted


def test_remote_interrupt_stops_the_call_in_progress_and_a_call_that_starts_right_after(server):
    from personavlm_cli.adapters.remote_llm import RemoteChatModel

    model = RemoteChatModel(_url(server))
    timer = threading.Timer(0.3, model.interrupt)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(ModelInterrupted):
        model.complete([{"role": "user", "content": "slow"}])
    assert time.monotonic() - t0 < 3, "the interrupted call waited for the server's answer"
    timer.join()
    model.interrupt()  # no call in progress: the next one stops at once, without a request
    sent = len(server.seen)
    with pytest.raises(ModelInterrupted):
        model.complete([{"role": "user", "content": "hi"}])
    assert len(server.seen) == sent
    assert model.complete([{"role": "user", "content": "hi"}]) == "Hello"  # and then it works again
