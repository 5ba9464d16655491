"""The Chroma client, embedded or on a server: the embedded store's files under a path, or a server's URL
(``http(s)://host:port[/path]``, ``?tenant=&database=``, basic auth for a proxy) checked with a plain TCP
connect first and its HTTP session's timeouts bounded; what ``doctor`` says of a server (``probe``); which
of chromadb's many exceptions mean a server that is down and which a collection that is missing.

chromadb is imported inside the functions that use it, with its telemetry off: importing this module is cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from personavlm_cli.adapters.urls import shown_url
from personavlm_cli.core.errors import StoreError, UnreachableError


def chroma_modules() -> tuple[Any, Any]:
    """(chromadb, its Settings class), imported with Chroma's telemetry off."""
    # Telemetry off before chromadb is imported (its client reads the environment too).
    os.environ["ANONYMIZED_TELEMETRY"] = "False"
    import chromadb
    from chromadb.config import Settings

    return chromadb, Settings


def open_client(path: Path | None, url: str | None, where: str) -> Any:
    """An embedded client on the files at ``path``, or a client of the server at ``url`` (answering its
    heartbeat); ``where`` names the store in messages. UnreachableError for a server that cannot be
    reached, StoreError for anything else that keeps the store from opening (one line each)."""
    if url:
        host, port, tenant, database, headers = parse_server_url(url)
        check_reachable(host, port, where)
    chromadb, Settings = chroma_modules()
    settings = Settings(anonymized_telemetry=False, allow_reset=False)
    try:
        if url:
            client = chromadb.HttpClient(host=host, port=port, settings=settings, headers=headers or None,
                                         tenant=tenant, database=database)
            bound_timeouts(client)
            client.heartbeat()
        else:
            client = chromadb.PersistentClient(path=str(path), settings=settings)
    except Exception as exc:  # chromadb raises many kinds; all mean "cannot open"
        if url and is_transport_error(exc):
            raise UnreachableError(f"the vector store at {where} is not reachable: {first_line(exc)}") from None
        raise StoreError(f"cannot open the vector store at {where}: {first_line(exc)}") from None
    return client


def parse_server_url(url: str):
    """(host URL for chromadb.HttpClient, port, tenant, database, extra headers) from ``store.url``."""
    import base64
    from urllib.parse import parse_qs, urlsplit, urlunsplit

    u = urlsplit(url.strip())
    if u.scheme not in ("http", "https") or not u.hostname:
        raise StoreError(f"store.url must be an http:// or https:// URL, got {url!r}")
    try:
        port = u.port or (443 if u.scheme == "https" else 8000)
    except ValueError:
        raise StoreError(f"store.url has an invalid port: {url!r}") from None
    query = parse_qs(u.query)
    unknown = sorted(set(query) - {"tenant", "database"})
    if unknown:
        raise StoreError(f"store.url: unknown parameter '{unknown[0]}' (only tenant and database)")
    tenant = query.get("tenant", ["default_tenant"])[-1]
    database = query.get("database", ["default_database"])[-1]
    host = u.hostname if ":" not in u.hostname else f"[{u.hostname}]"
    # The full URL (scheme, port, any path prefix a reverse proxy adds) goes to chromadb as "host".
    full = urlunsplit((u.scheme, f"{host}:{port}", u.path.rstrip("/"), "", ""))
    headers = {}
    if u.username:
        raw = f"{u.username}:{u.password or ''}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")
    return full, port, tenant, database, headers


def check_reachable(url: str, port: int, where: str, timeout: float = 10.0) -> None:
    """A plain TCP connect first: chromadb's client has no connect timeout (a host that drops packets
    would hang for minutes) and its own message for a refused connection is vague."""
    import socket
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except TimeoutError:
        raise UnreachableError(f"the vector store at {where} is not reachable: no answer within {timeout:g} s") from None
    except ConnectionRefusedError:
        raise UnreachableError(f"the vector store at {where} is not reachable: connection refused "
                         "(is `chroma run` running there?)") from None
    except socket.gaierror as exc:
        raise UnreachableError(f"the vector store at {where} is not reachable: unknown host ({exc.strerror})") from None
    except OSError as exc:
        raise UnreachableError(f"the vector store at {where} is not reachable: {exc.strerror or exc}") from None


def bound_timeouts(client) -> None:
    """chromadb's HTTP session waits forever (``timeout=None``); bound it, so that a server that stops
    answering is reported instead of hanging the chat. Best effort: private attributes."""
    try:
        import httpx

        session = getattr(getattr(client, "_server", None), "_session", None)
        if session is not None:
            session.timeout = httpx.Timeout(120.0, connect=10.0)
    except Exception:  # only the timeout is at stake
        pass


def probe(url: str) -> dict:
    """What ``doctor`` says of a Chroma server: reachable or why not, its version and the heartbeat's
    round-trip latency (median of 5). Lists nothing (no other user's names). Never raises."""
    import statistics
    import time

    out: dict[str, Any] = {"reachable": False}
    try:
        host, port, tenant, database, headers = parse_server_url(url)
        check_reachable(host, port, shown_url(url), timeout=5.0)
        chromadb, Settings = chroma_modules()
        client = chromadb.HttpClient(host=host, port=port, headers=headers or None, tenant=tenant, database=database,
                                     settings=Settings(anonymized_telemetry=False, allow_reset=False))
        bound_timeouts(client)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            client.heartbeat()
            times.append(time.perf_counter() - t0)
        out.update(reachable=True, version=client.get_version(), latency_ms=round(statistics.median(times) * 1000, 2))
    except Exception as exc:  # doctor reports, never fails
        out["problem"] = str(exc).splitlines()[0] if str(exc) else first_line(exc)
    return out


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and those it was raised from or during (chromadb re-raises httpx errors as bare
    ValueErrors, sometimes with no message)."""
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in out and len(out) < 6:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def first_line(exc: BaseException) -> str:
    for e in _chain(exc):
        text = (str(e).strip().splitlines() or [""])[0][:200]
        if text:
            return text
    chain = _chain(exc)
    return type(chain[-1]).__name__


def is_missing(message: str) -> bool:
    m = message.lower()
    return "does not exist" in m or "not found" in m or "notfound" in m


def is_transport_error(exc: BaseException) -> bool:
    """httpx's network errors (connect, read, protocol, timeouts), OS socket errors, or chromadb's
    "Could not connect" ValueError: the server is down or went away, not a bad request."""
    for e in _chain(exc):
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
        if any(c.__name__ in ("TransportError", "TimeoutException") and c.__module__.startswith("httpx")
               for c in type(e).__mro__):
            return True
        if "could not connect to a chroma server" in str(e).lower():
            return True
    return False
