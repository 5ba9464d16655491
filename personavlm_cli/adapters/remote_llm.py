"""A chat model on another machine: an OpenAI-compatible server (llama.cpp's ``llama-server`` or
llama-cpp-python's ``python -m llama_cpp.server``), implementing the same port as the local model
(:class:`personavlm_cli.core.ports.ChatModel`).

HTTP goes through ``httpx``, with one pooled client per server in the process (a model and its forks
share it, and its connections are kept alive between requests: a message costs one connection, not
one per request), its timeouts and retries declared once (``model_http.ServerPool``). Token counts are
made here when the served model's file is on this machine (the given ``tokenizer`` path, or the path
llama-cpp-python's server reports as the model's id): llama.cpp loads its vocabulary alone, no
weights (``local_tokenizer.LocalTokenizer``). Otherwise they are the server's, cached by text, so a turn's history
is counted once, not again with every message. Nothing is sent when the
object is made, so a server that is down costs nothing until the first message; from then on every
failure to reach it (refused, timed out, or gone in the middle of an answer) is one
:class:`ModelError` line that names the server.

What is sent: the whole prompt of each request (the recent turns, recalled memories, the core
profile) and, for a vision model, the attached images as data URIs. See docs/deploy.md.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from personavlm_cli.adapters.chat_base import ChatModelBase
from personavlm_cli.adapters.chat_messages import prepare_messages
from personavlm_cli.adapters.json_output import one_line
from personavlm_cli.adapters.local_tokenizer import LocalTokenizer, estimate_tokens
from personavlm_cli.adapters.model_http import (
    CONNECT_TIMEOUT,
    ServerPool,
    ServerSaid,
    Unreachable,
    error_message,
    error_text,
    failure_reason,
    sending,
    sse_events,
)
from personavlm_cli.core.errors import ModelError, ModelInterrupted

TOKEN_CACHE = 2048  # texts whose token count is kept (a session's turns, counted at every message)


@dataclass
class RemoteLoadInfo:
    """What ``chat`` shows instead of a load line: there is nothing to load here."""

    url: str
    name: str | None
    n_ctx: int
    vision: bool
    served: Callable[[], str | None] | None = None
    load_seconds: float = 0.0

    def summary_line(self) -> str:
        """e.g. ``remote model qwen2.5-7b at http://gpu-box:8080 · ctx 8192``."""
        name = self.name or (self.served() if self.served else None)
        parts = [f"remote model {name} at {self.url}" if name else f"remote model at {self.url}",
                 f"ctx {self.n_ctx}"]
        if self.vision:
            parts.append("vision")
        return " · ".join(parts)


class RemoteChatModel(ChatModelBase):
    """A chat model served over HTTP by an OpenAI-compatible server.

    Where the port speaks of the model's own state, a client does what it can: :meth:`fork` is a
    second client of the same server (the server keeps its own cache slots), :meth:`interrupt`
    closes the connection of the :meth:`complete` call in progress (the server stops generating),
    and ``last_usage`` holds what the server reports (``usage``), else the count of streamed pieces.
    """

    load_info: RemoteLoadInfo
    last_usage: dict[str, int]

    def __init__(self, url: str, name: str | None = None, *, n_ctx: int = 4096, timeout: float = 600.0,
                 vision: bool = False, api_key: str | None = None, seed: int = 0,
                 connect_timeout: float = CONNECT_TIMEOUT, tokenizer: str | os.PathLike | None = None) -> None:
        parts = urlsplit(str(url or "").strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ModelError(f"model.url must be an http:// or https:// URL, got {str(url)!r}")
        try:
            port = parts.port
        except ValueError:
            raise ModelError(f"model.url has an invalid port: {str(url)!r}") from None
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx <= 0:
            raise ModelError(f"invalid context size {n_ctx!r} for a remote model: use a number of tokens")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = port or (443 if self._https else 80)
        path = parts.path.rstrip("/")
        if path.endswith("/v1"):  # OpenAI-style base URLs end in /v1; our paths add it
            path = path[:-3]
        self._prefix = path
        netloc = self._host if ":" not in self._host else f"[{self._host}]"
        if port:
            netloc += f":{port}"
        # Shown in messages: never the credentials a URL may carry.
        self.url = urlunsplit((parts.scheme, netloc, path, "", ""))
        self.name = name or None
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self._seed = int(seed)
        self._params: dict[str, Any] = dict(url=url, name=name, n_ctx=n_ctx, timeout=timeout, vision=vision, api_key=api_key,
                            seed=seed, connect_timeout=connect_timeout, tokenizer=tokenizer)
        # The served model's GGUF on this machine, for counting tokens here ("": not looked for yet).
        self._tokenizer: LocalTokenizer | None | str = LocalTokenizer.for_file(tokenizer) if tokenizer else ""
        self._abort = threading.Event()
        self._active = None  # the network stream of the complete() call in progress, for interrupt()
        self._pool: ServerPool | None = None  # taken at the first request: making the object sends nothing
        self._key = (parts.scheme, self._host, self._port)
        self._counts: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.last_usage = {}
        self._headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                         "User-Agent": "personavlm"}
        key = api_key or os.environ.get("PERSONAVLM_MODEL_API_KEY")
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        elif parts.username:
            raw = f"{parts.username}:{parts.password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")
        self._tokenize_path: str | None = ""  # "": not probed yet; None: the server has no endpoint
        self._down_until = 0.0
        self._served: str | None = None
        self._served_ids: list[str] | None = None
        self._background = False  # a fork, for background work: see _complete_streamed
        self._closed = False
        self.load_info = RemoteLoadInfo(url=self.url, name=self.name, n_ctx=n_ctx, vision=bool(vision),
                                        served=self._served_model)

    # -- HTTP ------------------------------------------------------------------------------------------

    def _client(self):
        if self._closed:
            raise ModelError("the model is closed")
        if self._pool is None:
            self._pool = ServerPool.take(self._key, self.timeout, self.connect_timeout)
        return self._pool.client

    def _request(self, method: str, path: str, body: dict | None = None, *, quick: bool = False,
                 interruptible: bool = False):
        """Send a request on the server's pooled client; return the streamed response (status < 400),
        or raise. ``quick``: short timeouts, for requests that generate nothing; ``interruptible``:
        the connection is the one :meth:`interrupt` shuts."""
        import httpx

        client = self._client()
        timeout = None
        waited = self.timeout  # the read timeout, for the message
        if quick:
            waited = min(self.timeout, 10.0)
            timeout = httpx.Timeout(waited, connect=min(self.connect_timeout, 3.0))
        data = json.dumps(body).encode("utf-8") if body is not None else None
        request = client.build_request(method, self._prefix + path, content=data, headers=self._headers,
                                       **({"timeout": timeout} if timeout is not None else {}))
        if interruptible:
            sending.owner = self
        try:
            resp = client.send(request, stream=True)
        except httpx.TransportError as e:
            raise Unreachable(failure_reason(e, waited)) from None
        finally:
            sending.owner = None
        if resp.status_code >= 400:
            try:
                raw = b""
                for chunk in resp.iter_bytes():
                    raw += chunk
                    if len(raw) >= 64 * 1024:
                        break
            except httpx.HTTPError:
                raw = b""
            finally:
                resp.close()
            raise ServerSaid(resp.status_code, error_message(resp.status_code, resp.reason_phrase, raw))
        return resp

    def _post_json(self, path: str, body: dict, *, quick: bool = False, interruptible: bool = False) -> Any:
        import httpx

        try:
            resp = self._request("POST", path, body, quick=quick, interruptible=interruptible)
            if interruptible:
                sending.owner = self
            try:
                raw = resp.read()
            except httpx.HTTPError as e:
                raise Unreachable(failure_reason(e, self.timeout)) from None
            finally:
                sending.owner = None
                resp.close()
        finally:
            if interruptible:
                self._active = None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ServerSaid(resp.status_code,
                              "the answer is not JSON (is model.url an OpenAI-compatible server?)") from None

    def _unreachable(self, reason: str) -> ModelError:
        return ModelError(one_line(f"the model server at {self.url} is not reachable: {reason}"))

    def _refused(self, message: str) -> ModelError:
        return ModelError(one_line(f"the model server at {self.url} could not answer: {message}"))

    # -- generation --------------------------------------------------------------------------------

    def _body(self, messages: Sequence[Mapping[str, Any]], **fields) -> dict:
        body: dict[str, Any] = {"messages": prepare_messages(messages, vision=self.vision)}
        if self.name:
            body["model"] = self.name
        body.update({k: v for k, v in fields.items() if v is not None})
        return body

    def stream(self, messages: Sequence[Mapping[str, Any]], *, max_tokens: int = 512, temperature: float = 0.7,
               top_p: float = 0.95, stop: list[str] | None = None, repeat_penalty: float = 1.1) -> Iterator[str]:
        """Text pieces of the answer as the server sends them (server-sent events).

        Stopping early (``break``, ``close()``, Ctrl-C) closes the connection, which tells the
        server to stop generating.
        """
        body = self._body(messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                          stop=list(stop) if stop else None, repeat_penalty=repeat_penalty, seed=self._seed,
                          stream=True)
        import httpx

        try:
            resp = self._request("POST", "/v1/chat/completions", body)
        except Unreachable as e:
            raise self._unreachable(str(e)) from None
        except ServerSaid as e:
            raise self._refused(str(e)) from None
        finished = False
        pieces = 0
        self.last_usage = {}
        events = sse_events(resp)
        try:
            try:
                for choice in self._choices(events):
                    if choice is None:  # [DONE]
                        finished = True
                        break
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        pieces += 1
                        yield piece
                    if choice.get("finish_reason"):
                        finished = True
            except httpx.HTTPError as e:
                raise self._unreachable(failure_reason(e, self.timeout, mid_answer=True)) from None
            if not finished:
                raise self._unreachable("the connection closed in the middle of the answer")
        finally:
            resp.close()  # before the end: the connection is dropped, which tells the server to stop
            if pieces:
                self.last_usage.setdefault("completion_tokens", pieces)

    def complete(self, messages: Sequence[Mapping[str, Any]], *, max_tokens: int = 256, temperature: float = 0.0,
                 grammar: str | None = None, json_schema: dict | None = None, stop: list[str] | None = None,
                 seed: int | None = None) -> str:
        """The whole answer at once, optionally constrained by a GBNF grammar or a JSON schema.

        Both llama.cpp servers take a JSON schema as ``response_format={"type": "json_object",
        "schema": ...}`` and GBNF as ``grammar``. ``repeat_penalty`` is sent as 1.0 on purpose: with
        llama-cpp-python's server default (1.1) the grammar is silently not applied (0.3.36).
        """
        if grammar is not None and json_schema is not None:
            raise ValueError("pass either grammar or json_schema, not both")
        fields: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature,
                                  "stop": list(stop) if stop else None,
                                  "seed": self._seed if seed is None else int(seed)}
        if json_schema is not None or grammar is not None:
            fields["repeat_penalty"] = 1.0
        if json_schema is not None:
            fields["response_format"] = {"type": "json_object", "schema": json_schema}
        if grammar is not None:
            fields["grammar"] = grammar
        abort = self._abort  # set by interrupt(), possibly just before this call: honoured at once
        if abort.is_set():
            abort.clear()
            raise ModelInterrupted("the model call was interrupted")
        if self._background:
            return self._complete_streamed(self._body(messages, stream=True, **fields))
        try:
            out = self._post_json("/v1/chat/completions", self._body(messages, **fields), interruptible=True)
        except (Unreachable, ServerSaid) as e:
            if abort.is_set():  # the connection interrupt() shut, whatever it looked like from here
                abort.clear()
                raise ModelInterrupted("the model call was interrupted") from None
            raise (self._unreachable if isinstance(e, Unreachable) else self._refused)(str(e)) from None
        self.last_usage = _usage(out.get("usage")) if isinstance(out, dict) else {}
        try:
            return out["choices"][0]["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            if isinstance(out, dict) and out.get("error"):
                raise self._refused(error_text(out["error"])) from None
            raise self._refused("the answer has no choices[0].message") from None

    def _choices(self, events: Iterator[str]) -> Iterator[dict | None]:
        """The choices of a chat stream's events, in order, then None at ``[DONE]`` (the rest of the body
        read, so the connection stays in the pool); the usage kept in ``last_usage``; a server's error or an
        event that is not JSON refused."""
        for event in events:
            if event == "[DONE]":
                for _rest in events:
                    pass
                yield None
                return
            try:
                chunk = json.loads(event)
            except ValueError:
                raise self._refused("it sent an event that is not JSON") from None
            if not isinstance(chunk, dict):
                continue
            if chunk.get("error"):
                raise self._refused(error_text(chunk["error"]))
            if chunk.get("usage"):
                self.last_usage = _usage(chunk["usage"])
            yield from chunk.get("choices") or []

    def _complete_streamed(self, body: dict) -> str:
        """A background call, streamed: the server stops generating at its next token when
        :meth:`interrupt` shuts the connection or (llama-cpp-python's server, which runs one request at
        a time) as soon as another request, the answer's, waits; a whole response would run to its end
        first and the answer would wait for it."""
        import httpx

        abort = self._abort
        pieces: list[str] = []
        resp = None
        self.last_usage = {}
        try:
            resp = self._request("POST", "/v1/chat/completions", body, interruptible=True)
            sending.owner = self
            finished = False
            events = sse_events(resp)
            for choice in self._choices(events):
                if choice is None:  # [DONE]
                    break
                pieces.append((choice.get("delta") or {}).get("content") or "")
                finished = finished or bool(choice.get("finish_reason"))
            if abort.is_set() or not finished:  # cut: by interrupt(), or the server gave way to a waiting request
                raise ModelInterrupted("the model call was interrupted")
        except (Unreachable, ServerSaid, httpx.HTTPError) as e:
            if abort.is_set():
                abort.clear()
                raise ModelInterrupted("the model call was interrupted") from None
            if isinstance(e, ServerSaid):
                raise self._refused(str(e)) from None
            raise self._unreachable(str(e) if isinstance(e, Unreachable) else failure_reason(e, self.timeout)) from None
        except ModelInterrupted:
            abort.clear()
            raise
        finally:
            sending.owner = None
            self._active = None
            if resp is not None:
                resp.close()
        self.last_usage.setdefault("completion_tokens", sum(1 for p in pieces if p))
        return "".join(pieces)

    # -- tokens ------------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by the server's own tokenizer (``/extras/tokenize`` of llama-cpp-python's
        server, ``/tokenize`` of llama-server); a character-based estimate where it has none.

        A server that cannot be reached gets the estimate too (for a few seconds, without asking
        again): the message is then stored, and the answer's request reports the server as down.
        """
        if not text:
            return 0
        local = self._local_tokenizer()
        if local is not None:
            return local.count(text)
        cached = self._counts.get(text)
        if cached is not None:
            self._counts.move_to_end(text)
            return cached
        if self._tokenize_path is None or time.monotonic() < self._down_until:
            return estimate_tokens(text)
        known = self._tokenize_path
        for path in [known] if known else ["/extras/tokenize", "/tokenize"]:
            body = {"input": text} if path == "/extras/tokenize" else {"content": text, "add_special": False}
            try:
                out = self._post_json(path, body, quick=True)
            except Unreachable:
                self._down_until = time.monotonic() + 5.0
                return estimate_tokens(text)
            except ServerSaid as e:
                if e.status in (404, 405, 422, 501):
                    continue  # not this server's endpoint
                return estimate_tokens(text)  # a passing failure: ask again next time
            tokens = out.get("tokens") if isinstance(out, dict) else None
            if isinstance(tokens, list):
                self._tokenize_path = path
                self._counts[text] = len(tokens)  # the server's own count: kept (estimates are not)
                if len(self._counts) > TOKEN_CACHE:
                    self._counts.popitem(last=False)
                return len(tokens)
        # Neither endpoint (or the known one has gone: another server behind the URL now).
        self._tokenize_path = "" if known else None
        return estimate_tokens(text)

    def _local_tokenizer(self) -> LocalTokenizer | None:
        """The served model's tokenizer, when its file is on this machine: llama-cpp-python's server
        names its model by the path it loaded (asked once, ``GET /v1/models``)."""
        if self._tokenizer == "":
            served = self._served_model_path()
            self._tokenizer = LocalTokenizer.for_file(served) if served else None
        return self._tokenizer if isinstance(self._tokenizer, LocalTokenizer) else None

    def _served_model_path(self) -> str | None:
        if self._served is None:
            self._served_model()
        ids = self._served_ids or []
        wanted = [m for m in ids if not self.name or m == self.name or m.rsplit("/", 1)[-1] == self.name]
        return next((m for m in wanted if m.lower().endswith(".gguf") and os.path.isabs(m)), None)

    # -- information -------------------------------------------------------------------------------

    def check(self) -> str:
        """Ask the server which model it serves (``GET /v1/models``), for ``doctor``: the model's id,
        or ModelError (one line) when the server cannot be reached or refuses."""
        import httpx

        try:
            resp = self._request("GET", "/v1/models", quick=True)
            try:
                raw = resp.read()
            finally:
                resp.close()
        except Unreachable as e:
            raise self._unreachable(str(e)) from None
        except ServerSaid as e:
            raise self._refused(str(e)) from None
        except httpx.HTTPError as e:
            raise self._unreachable(failure_reason(e, self.timeout)) from None
        try:
            models = [m.get("id") for m in json.loads(raw)["data"]]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise self._refused("GET /v1/models did not return a model list") from None
        ids = [m for m in models if isinstance(m, str) and m]
        self._served_ids = ids
        if self.name and self.name not in ids and len(ids) > 1:
            raise self._refused(f"it does not serve a model named {self.name!r} (it has {', '.join(ids[:5])})")
        # llama-cpp-python reports the file path; its file name is what users recognise.
        return (self.name or (ids[0] if ids else "")).rstrip("/").rsplit("/", 1)[-1]

    def _served_model(self) -> str | None:
        """The served model's id for the summary line (asked once); None when the server cannot say."""
        if self._served is None:
            try:
                self._served = self.check()
            except ModelError:
                self._served = ""
        return self._served or None

    # -- the port's members for a model's own state ------------------------------------------------

    @property
    def weights_bytes(self) -> int | None:
        return None  # the weights are the server's

    def fork(self) -> RemoteChatModel:
        """A second client of the same server, with the same settings (credentials included), for a
        background thread: the two never share a connection. The server decides whether they run at
        once (llama-server's slots) or one after the other."""
        twin = RemoteChatModel(**self._params)
        twin._background = True  # its constrained calls are streamed, so the server can stop them (complete)
        return twin

    def interrupt(self) -> None:
        """Stop the :meth:`complete` call in progress (from another thread): its connection is shut,
        so the server stops generating, and the call raises ModelInterrupted; one that starts right
        after is stopped at once. A :meth:`stream` is stopped by closing its iterator instead."""
        self._abort.set()
        stream = self._active
        if stream is not None:
            try:
                stream.shutdown()
            except OSError:
                pass  # already closed: the call is over

    def prefill(self, messages: Sequence[Mapping[str, Any]], stop: Callable[[], bool] | None = None) -> bool:
        """The server evaluates ``messages`` (a request for one token, discarded), so that its cache
        holds the next prompt's beginning (llama-server's slot, llama-cpp-python's context or state
        cache). A server cannot be stopped inside a prompt: a message that arrives meanwhile waits for
        the rest of this beginning, which is its own prompt's, the part it would evaluate anyway."""
        if stop is not None and stop():
            return False
        body = self._body(messages, max_tokens=1, temperature=0.0, seed=self._seed, stream=True)
        try:
            self._complete_streamed(body)
        except ModelInterrupted:
            return False
        return True

    def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.give_back()


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _usage(raw: Any) -> dict[str, int]:
    """``last_usage`` from an OpenAI ``usage`` object (keys the server did not send are left out)."""
    if not isinstance(raw, Mapping):
        return {}
    details = raw.get("prompt_tokens_details")
    found = {"prompt_tokens": raw.get("prompt_tokens"), "completion_tokens": raw.get("completion_tokens"),
             "cached_tokens": details.get("cached_tokens") if isinstance(details, Mapping) else None}
    return {k: v for k, v in found.items() if isinstance(v, int) and not isinstance(v, bool)}
