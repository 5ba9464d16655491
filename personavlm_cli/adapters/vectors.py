"""Vectors in ChromaDB: one collection per embedding space (text memories, images).

Chroma is given explicit embeddings always (``embedding_function=None``: its default embedder
downloads a model at run time), telemetry is off, and HNSW is configured at creation, because
Chroma's defaults give poor recall and cannot be changed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

from personavlm_cli.core.errors import StoreError

HNSW = {"space": "cosine", "ef_search": 200, "ef_construction": 200, "max_neighbors": 32}
SPARE = ".rebuild"  # suffix of the collection a rebuild fills before it replaces the original
PAGE = 2000  # vectors per request while a collection is copied


def _chroma():
    # Telemetry off before chromadb is imported (its client reads the environment too).
    os.environ["ANONYMIZED_TELEMETRY"] = "False"
    import chromadb
    from chromadb.config import Settings

    return chromadb, Settings


class VectorIndex:
    """A user's Chroma store: embedded on disk, or a collection namespace on a Chroma server.

    On a server, every collection this object touches is named ``<namespace><name>`` and is opened
    by that exact name: nothing here lists the server's collections, so no code path can read or
    delete another user's. (The namespace keeps cooperating clients apart; it is not access
    control: anyone who can reach the server can list everything. See docs/deploy.md.)

    ``url`` is ``http(s)://host:port[/path]``, optionally with ``?tenant=T&database=D`` (both must
    exist on the server) and ``user:password@`` for a proxy that wants basic auth; a token for a
    proxy goes in Chroma's own client settings (``CHROMA_CLIENT_AUTH_PROVIDER``,
    ``CHROMA_CLIENT_AUTH_CREDENTIALS``), read from the environment.
    """

    def __init__(self, path: Path | None = None, url: str | None = None, namespace: str = ""):
        self.namespace = namespace
        self.path = path
        self.where = _shown_url(url) if url else str(path)
        self.remote = bool(url)
        if url:
            host, port, tenant, database, headers = _parse_server_url(url)
            _check_reachable(host, port, self.where)
        chromadb, Settings = _chroma()
        settings = Settings(anonymized_telemetry=False, allow_reset=False)
        try:
            if url:
                self.client = chromadb.HttpClient(host=host, port=port, settings=settings, headers=headers or None,
                                                  tenant=tenant, database=database)
                _bound_timeouts(self.client)
                self.client.heartbeat()
            else:
                self.client = chromadb.PersistentClient(path=str(path), settings=settings)
        except Exception as exc:  # chromadb raises many kinds; all mean "cannot open"
            if url and _is_transport_error(exc):
                raise StoreError(f"the vector store at {self.where} is not reachable: {_first_line(exc)}") from None
            raise StoreError(f"cannot open the vector store at {self.where}: {_first_line(exc)}") from None
        self._collections: dict[str, Any] = {}
        # One operation at a time: the chat's thread and the background updates share this object,
        # and a rebuild swaps a collection underneath both.
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def _guard(self, action: str):
        """Chroma's and the network's exceptions become one StoreError line."""
        try:
            with self._lock:
                yield
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - httpx, ChromaError, ValueError...: all one line
            if self.remote and _is_transport_error(exc):
                raise StoreError(f"the vector store at {self.where} is not reachable: {_first_line(exc)}") from None
            raise StoreError(f"the vector store at {self.where} could not {action}: {_first_line(exc)}") from None

    def _name(self, name: str) -> str:
        return f"{self.namespace}{name}" if self.namespace else name

    def collection(self, name: str):
        with self._lock:
            coll = self._collections.get(name)
            if coll is None:
                with self._guard(f"open collection {self._name(name)}"):
                    coll = self._existing(self._name(name))
                    if coll is None:
                        # A rebuild killed after dropping the original and before renaming its
                        # complete copy: finish it rather than start an empty collection.
                        coll = self._existing(self._name(name + SPARE))
                        if coll is not None:
                            coll.modify(name=self._name(name))
                        else:
                            coll = self._create(self._name(name))
                self._collections[name] = coll
            return coll

    def _existing(self, full_name: str):
        try:
            return self.client.get_collection(full_name, embedding_function=None)
        except Exception as exc:  # noqa: BLE001 - NotFoundError locally, a ValueError over HTTP
            if self.remote and _is_transport_error(exc):
                raise
            if _is_missing(str(exc)):
                return None
            raise

    def _create(self, full_name: str):
        return self.client.create_collection(full_name, embedding_function=None, configuration={"hnsw": HNSW},
                                             metadata={"app": "personavlm"})

    def upsert(self, name: str, ids: list[str], embeddings, documents: list[str] | None = None,
               metadatas: list[dict] | None = None) -> None:
        if not ids:
            return
        kwargs: dict[str, Any] = {"ids": ids, "embeddings": [list(map(float, e)) for e in embeddings]}
        if documents is not None:
            kwargs["documents"] = documents
        if metadatas is not None:
            kwargs["metadatas"] = [{k: v for k, v in m.items() if v is not None} or None for m in metadatas]
        coll = self.collection(name)
        with self._guard("write vectors"):
            coll.upsert(**kwargs)

    def delete(self, name: str, ids: list[str]) -> None:
        if ids:
            coll = self.collection(name)
            with self._guard("delete vectors"):
                coll.delete(ids=ids)

    def query(self, name: str, embedding, k: int, where: dict | None = None) -> list[tuple[str, float]]:
        """Nearest neighbours as (id, cosine similarity), best first."""
        coll = self.collection(name)
        with self._guard("search vectors"):
            total = coll.count()
            if total == 0 or k <= 0:
                return []
            res = coll.query(query_embeddings=[list(map(float, embedding))], n_results=min(k, total),
                             where=where or None, include=["distances"])
        return [(i, 1.0 - d) for i, d in zip(res["ids"][0], res["distances"][0])]

    def ids(self, name: str) -> set[str]:
        coll = self.collection(name)
        out: set[str] = set()
        offset = 0
        while True:
            with self._guard("read vector ids"):
                batch = coll.get(include=[], limit=5000, offset=offset)["ids"]
            out.update(batch)
            if len(batch) < 5000:
                return out
            offset += len(batch)

    def get_embeddings(self, name: str, ids: list[str]) -> dict[str, list[float]]:
        if not ids:
            return {}
        coll = self.collection(name)
        with self._guard("read vectors"):
            res = coll.get(ids=ids, include=["embeddings"])
        return {i: list(e) for i, e in zip(res["ids"], res["embeddings"])}

    def count(self, name: str) -> int:
        coll = self.collection(name)
        with self._guard("count vectors"):
            return coll.count()

    def rebuild(self, name: str) -> int:
        """Replace collection ``name`` by a fresh copy of its live vectors; the number copied.

        Chroma deletes by marking: the HNSW index keeps a deleted element's vector and its
        write-ahead log keeps the vector until the next index flush. Copying the live vectors to a
        new collection and dropping the old one is what makes an erased vector go. A kill at any
        point is safe: the original is dropped only once the copy is complete, and ``collection()``
        finishes a rename that a kill interrupted.
        """
        with self._lock:
            old = self.collection(name)
            spare_name = self._name(name + SPARE)
            with self._guard(f"rebuild collection {self._name(name)}"):
                if self._existing(spare_name) is not None:  # a copy a kill interrupted
                    self.client.delete_collection(spare_name)
                spare = self._create(spare_name)
                copied = 0
                while True:
                    page = old.get(include=["embeddings", "metadatas", "documents"], limit=PAGE, offset=copied)
                    if not page["ids"]:
                        break
                    docs = page.get("documents")
                    spare.add(ids=page["ids"], embeddings=page["embeddings"],
                              metadatas=[m or None for m in page["metadatas"]],
                              documents=[d or "" for d in docs] if docs and any(docs) else None)
                    copied += len(page["ids"])
                    if len(page["ids"]) < PAGE:
                        break
                self._collections.pop(name, None)
                self.client.delete_collection(self._name(name))
                spare.modify(name=self._name(name))
                self._collections[name] = spare
            return copied

    def purge(self, names) -> None:
        """Make erased vectors unrecoverable: rebuild ``names``, then, for a store on this machine,
        shred the files of dropped index segments and vacuum Chroma's SQLite file. (A server's files
        are the server's: its own compaction removes what a dropped collection left; docs/deploy.md.)"""
        with self._lock:
            for name in names:
                self.rebuild(name)
            if self.path is not None and not self.remote:
                compact_local_files(self.path)

    def drop(self, names) -> None:
        """Delete this namespace's collections ``names`` (missing ones are fine), e.g. when a user is
        removed: on a server their vectors do not live in the user's directory."""
        for name in names:
            self._collections.pop(name, None)
            try:
                with self._guard(f"delete collection {self._name(name)}"):
                    self.client.delete_collection(self._name(name))
            except StoreError as exc:
                if "not reachable" in str(exc) or not _is_missing(str(exc)):
                    raise

    def drop_all(self) -> None:
        """Delete the collections this object has opened (never lists the server's collections)."""
        self.drop(list(self._collections))


def compact_local_files(path: Path) -> None:
    """Shred the index directories of dropped collections (Chroma leaves them on disk) and vacuum
    ``chroma.sqlite3``, where deleted rows would otherwise linger in free pages."""
    import sqlite3

    from personavlm_cli.adapters.files import shred_tree

    db = Path(path) / "chroma.sqlite3"
    if not db.exists():
        return
    con = sqlite3.connect(db, timeout=30)
    try:
        live = {str(r[0]) for r in con.execute("SELECT id FROM segments")}
        for entry in Path(path).iterdir():
            if entry.is_dir() and not entry.is_symlink() and _is_uuid(entry.name) and entry.name not in live:
                shred_tree(entry)
        con.execute("PRAGMA secure_delete=ON")
        con.execute("VACUUM")
    finally:
        con.close()


def _is_uuid(name: str) -> bool:
    import uuid

    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and those it was raised from or during (chromadb re-raises httpx errors as bare
    ValueErrors, sometimes with no message)."""
    out: list[BaseException] = []
    while exc is not None and exc not in out and len(out) < 6:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _first_line(exc: BaseException) -> str:
    for e in _chain(exc):
        text = (str(e).strip().splitlines() or [""])[0][:200]
        if text:
            return text
    chain = _chain(exc)
    return type(chain[-1]).__name__


def _is_missing(message: str) -> bool:
    m = message.lower()
    return "does not exist" in m or "not found" in m or "notfound" in m


def _is_transport_error(exc: BaseException) -> bool:
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


def _parse_server_url(url: str):
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
        raw = f"{u.username}:{u.password or ''}".encode("utf-8")
        headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")
    return full, port, tenant, database, headers


def _shown_url(url: str) -> str:
    """``store.url`` as shown in messages: without credentials or parameters."""
    from urllib.parse import urlsplit, urlunsplit

    u = urlsplit(url.strip())
    try:
        netloc = u.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if u.port:
            netloc += f":{u.port}"
    except ValueError:
        netloc = (u.netloc or "").rpartition("@")[2]
    return urlunsplit((u.scheme, netloc, u.path.rstrip("/"), "", "")) or url


def _check_reachable(url: str, port: int, where: str, timeout: float = 10.0) -> None:
    """A plain TCP connect first: chromadb's client has no connect timeout (a host that drops packets
    would hang for minutes) and its own message for a refused connection is vague."""
    import socket
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except socket.timeout:
        raise StoreError(f"the vector store at {where} is not reachable: no answer within {timeout:g} s") from None
    except ConnectionRefusedError:
        raise StoreError(f"the vector store at {where} is not reachable: connection refused "
                         "(is `chroma run` running there?)") from None
    except socket.gaierror as exc:
        raise StoreError(f"the vector store at {where} is not reachable: unknown host ({exc.strerror})") from None
    except OSError as exc:
        raise StoreError(f"the vector store at {where} is not reachable: {exc.strerror or exc}") from None


def _bound_timeouts(client) -> None:
    """chromadb's HTTP session waits forever (``timeout=None``); bound it, so that a server that stops
    answering is reported instead of hanging the chat. Best effort: private attributes."""
    try:
        import httpx

        session = getattr(getattr(client, "_server", None), "_session", None)
        if session is not None:
            session.timeout = httpx.Timeout(120.0, connect=10.0)
    except Exception:  # noqa: BLE001 - only the timeout is at stake
        pass
