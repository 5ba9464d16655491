"""HTTP to a model server (``httpx``): one pooled client per server in the process, its timeouts and
retries declared once (``ServerPool``); the sockets an interrupt may shut (``sending``); a streamed
body's server-sent events; why a request failed, and what an error status said, in a few words.

httpx and httpcore are imported inside the functions that use them: importing this module is cheap.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from typing import Any

CONNECT_TIMEOUT = 10.0
RETRIES = 1  # a connection that fails to open is tried once more (httpx's transport retries)


class Unreachable(Exception):
    """The server could not be reached or stopped answering (becomes a ModelError)."""


class ServerSaid(Exception):
    """The server answered with an error status (becomes a ModelError with its message)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


sending = threading.local()  # ``sending.owner``: the model whose interruptible request this thread is sending


def _tracked_backend():
    """httpcore's socket backend, with each connection's stream noting itself on the model whose
    interruptible request uses it, so that :meth:`RemoteChatModel.interrupt` can shut that socket from
    another thread (a blocked read wakes only on ``shutdown``; a keep-alive connection is reused, so
    the stream is noted at every read and write, not when it connects)."""
    import httpcore

    class Stream(httpcore.NetworkStream):
        def __init__(self, inner):
            self._inner = inner

        def _note(self):
            owner = getattr(sending, "owner", None)
            if owner is not None:
                owner._active = self

        def read(self, max_bytes, timeout=None):
            self._note()
            return self._inner.read(max_bytes, timeout)

        def write(self, buffer, timeout=None):
            self._note()
            return self._inner.write(buffer, timeout)

        def close(self):
            self._inner.close()

        def start_tls(self, ssl_context, server_hostname=None, timeout=None):
            return Stream(self._inner.start_tls(ssl_context, server_hostname, timeout))

        def get_extra_info(self, info):
            return self._inner.get_extra_info(info)

        def shutdown(self):
            sock = self._inner.get_extra_info("socket")
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)

    class Backend(httpcore.SyncBackend):
        def connect_tcp(self, *args, **kwargs):
            return Stream(super().connect_tcp(*args, **kwargs))

    return Backend()


class ServerPool:
    """One pooled ``httpx.Client`` per server (scheme, host, port) in this process, shared by a model
    and its forks and closed with the last of them. Timeouts and retries are declared here once."""

    _lock = threading.Lock()
    _open: dict[tuple, ServerPool] = {}

    def __init__(self, key: tuple, timeout: float, connect_timeout: float):
        import httpx

        https = key[0] == "https"
        transport = httpx.HTTPTransport(verify=ssl.create_default_context() if https else True, retries=RETRIES,
                                        trust_env=False, limits=httpx.Limits(max_connections=8,
                                                                            max_keepalive_connections=4))
        pool = getattr(transport, "_pool", None)
        if pool is not None and hasattr(pool, "_network_backend"):
            pool._network_backend = _tracked_backend()
        self.key = key
        self.users = 0
        scheme, host, port = key
        base = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{port}"
        self.client = httpx.Client(base_url=base, transport=transport, trust_env=False, follow_redirects=False,
                                   timeout=httpx.Timeout(timeout, connect=connect_timeout))

    @classmethod
    def take(cls, key: tuple, timeout: float, connect_timeout: float) -> ServerPool:
        with cls._lock:
            pool = cls._open.get(key)
            if pool is None:
                pool = cls._open[key] = ServerPool(key, timeout, connect_timeout)
            pool.users += 1
            return pool

    def give_back(self) -> None:
        with self._lock:
            self.users -= 1
            if self.users > 0:
                return
            if self._open.get(self.key) is self:
                del self._open[self.key]
        self.client.close()


def _lines(resp) -> Iterator[bytes]:
    """The response body's lines as they arrive (each with its end of line; the last may lack one)."""
    pending = b""
    for chunk in resp.iter_bytes():
        pending += chunk
        while True:
            cut = pending.find(b"\n")
            if cut < 0:
                break
            yield pending[:cut + 1]
            pending = pending[cut + 1:]
    if pending:
        yield pending


def sse_events(resp) -> Iterator[str]:
    """The ``data`` of each server-sent event (lines joined), comments and other fields skipped."""
    data: list[str] = []
    lines = _lines(resp)
    while True:
        line = next(lines, b"")
        if not line:
            if data:
                yield "\n".join(data)
            return
        text = line.decode("utf-8", errors="replace").rstrip("\r\n")
        if not text:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if text.startswith(":"):
            continue  # a comment or keep-alive ping
        field, _, value = text.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
            if data[-1].strip() == "[DONE]":
                yield "[DONE]"
                for _rest in lines:  # read to the end: the connection goes back to the pool
                    pass
                return


def failure_reason(exc: BaseException, timeout: float, mid_answer: bool = False) -> str:
    """Why a request failed, in a few words: httpx's error, or the socket error underneath it."""
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return f"no response within {timeout:g} s"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the connection closed in the middle of the answer" if mid_answer else "the connection closed"
    if isinstance(exc, httpx.HTTPError):
        inner = exc.__context__ or exc.__cause__
        while inner is not None and isinstance(inner, Exception) and not isinstance(inner, OSError):
            inner = inner.__context__ or inner.__cause__
        if isinstance(inner, OSError):
            return failure_reason(inner, timeout, mid_answer)
        text = str(exc)
        if "refused" in text.lower():
            return "connection refused"
        if "name or service not known" in text.lower() or "nodename nor servname" in text.lower():
            return f"unknown host ({text})"
        if isinstance(exc, httpx.ReadError) and mid_answer:
            return "the connection closed in the middle of the answer"
        return text or type(exc).__name__
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no response within {timeout:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc})"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "the connection closed in the middle of the answer" if mid_answer else "the connection closed"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def error_text(err: Any) -> str:
    if isinstance(err, Mapping):
        err = err.get("message") or err.get("detail") or json.dumps(err)
    elif isinstance(err, list) and err:
        err = "; ".join(str(e.get("msg", e)) if isinstance(e, Mapping) else str(e) for e in err[:3])
    return str(err)


def error_message(status: int, reason: str, raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    message = ""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, Mapping):
        message = error_text(data.get("error") or data.get("detail") or data.get("message") or "")
    elif text and not text.lstrip().startswith("<"):
        message = text
    if status == 401 or status == 403:
        message = (message + " " if message else "") + "(check the API key)"
    head = f"HTTP {status} {reason}".strip()
    return f"{head}: {message}" if message else head
