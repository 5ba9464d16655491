"""Vectors in ChromaDB: one logical collection per embedding space (text memories, images).

Chroma is given explicit embeddings always (``embedding_function=None``: its default embedder
downloads a model at run time), telemetry is off, and HNSW is configured at creation, because
Chroma's defaults give poor recall and cannot be changed afterwards.

A logical collection is stored as shards of at most ``SHARD_SIZE`` vectors, filled in insertion
order: shard 0 keeps the collection's own name, the others are ``<name>_1``, ``<name>_2``... An id
stays in the shard it was first written to. Erasing a vector for real means rebuilding the Chroma
collection that held it (Chroma only marks deletions), so a deletion marks its shard (in the small
collection ``<name>_dirty``, before the deletion) and ``purge`` rebuilds the marked shards only: a
forget costs one shard, not the store. A search asks every shard for its ``k`` best and keeps the
best ``k`` of those, which is what one collection gives (tests/test_vector_shards.py).

The client (embedded or a server) is ``adapters/chroma_client.py``'s; the copy and file compaction that make
an erased vector go are ``adapters/vector_purge.py``'s.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

from personavlm_cli.adapters.chroma_client import first_line, is_missing, is_transport_error, open_client
from personavlm_cli.adapters.urls import shown_url
from personavlm_cli.adapters.vector_purge import compact_local_files, copy_live
from personavlm_cli.core.errors import StoreError, UnreachableError

HNSW = {"space": "cosine", "ef_search": 200, "ef_construction": 200, "max_neighbors": 32}
SPARE = ".rebuild"  # suffix of the collection a rebuild fills before it replaces the original
DIRTY = "_dirty"  # suffix of the collection that lists the shards a purge must rebuild
PAGE = 2000  # vectors per request while a collection is copied
SHARD_SIZE = 2500  # vectors per shard: what one forget rebuilds (docs/benchmarks.md)


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
        self.where = shown_url(url).rstrip("/") if url else str(path)
        self.remote = bool(url)
        self.client = open_client(path, url, self.where)
        self._collections: dict[str, list] = {}  # logical name -> its shards, in order
        self._migrated: set[str] = set()  # logical names checked for the layout before shards
        self._pool: Any = None  # a ThreadPoolExecutor: threads that ask the shards at once (made at the first fan-out)
        # One operation at a time: the chat's thread and the background updates share this object,
        # and a rebuild swaps a collection underneath both.
        self._lock = threading.RLock()

    def close(self) -> None:
        """Release the client (Chroma's database connections and index files, shared per path and counted by
        Chroma) and the fan-out threads. Safe to call twice."""
        with self._lock:
            pool, self._pool = self._pool, None
            client, self.client = self.client, None
            self._collections.clear()
        if pool is not None:
            pool.shutdown(wait=False)
        if client is not None:
            client.close()

    @contextlib.contextmanager
    def _guard(self, action: str):
        """Chroma's and the network's exceptions become one StoreError line."""
        try:
            with self._lock:
                yield
        except StoreError:
            raise
        except Exception as exc:  # httpx, ChromaError, ValueError...: all one line
            if self.remote and is_transport_error(exc):
                raise UnreachableError(f"the vector store at {self.where} is not reachable: {first_line(exc)}") from None
            raise StoreError(f"the vector store at {self.where} could not {action}: {first_line(exc)}") from None

    def _name(self, name: str) -> str:
        return f"{self.namespace}{name}" if self.namespace else name

    # -- the shard layout -------------------------------------------------------------------------

    def _shards(self, name: str) -> list:
        """The Chroma collections of logical collection ``name``, in order (shard 0 first; it is
        created when missing). Found by trying the names in turn: nothing lists the server."""
        with self._lock:
            shards = self._collections.get(name)
            if shards is None:
                shards = []
                with self._guard(f"open collection {self._name(name)}"):
                    while True:
                        coll = self._open(shard_name(name, len(shards)))
                        if coll is None:
                            break
                        shards.append(coll)
                    if not shards:
                        shards.append(self._create(self._name(name)))
                self._collections[name] = shards
            return shards

    def _open(self, full: str):
        """The collection ``full`` (without the namespace), or None. A rebuild killed after dropping
        the original and before renaming its complete copy is finished here rather than lost."""
        coll = self._existing(self._name(full))
        if coll is None:
            coll = self._existing(self._name(full + SPARE))
            if coll is not None:
                coll.modify(name=self._name(full))
        return coll

    def _writable(self, name: str) -> list:
        """The shards of ``name``, with a store from before the shard layout migrated first."""
        self._shards(name)
        if name not in self._migrated:
            with self._guard(f"split collection {self._name(name)} into shards"):
                self._migrate(name)
            self._migrated.add(name)
        return self._collections[name]

    def _marks(self, name: str, create: bool = False):
        """The collection that remembers which shards had a deletion since their last rebuild (an id
        per shard index): kept in Chroma, so that it holds for a server store too and survives a kill."""
        full = self._name(name + DIRTY)
        coll = self._existing(full)
        if coll is None and create:
            coll = self.client.create_collection(full, embedding_function=None, metadata={"app": "personavlm"})
        return coll

    def dirty_shards(self, name: str) -> list[int]:
        """Indexes of the shards of ``name`` that the next ``purge`` rebuilds."""
        with self._guard("read the shard marks"):
            marks = self._marks(name)
            return sorted(int(i) for i in marks.get(include=[])["ids"]) if marks is not None else []

    def _mark(self, name: str, shards) -> None:
        shards = sorted(set(shards))
        if shards:
            self._marks(name, create=True).upsert(ids=[str(i) for i in shards], embeddings=[[1.0]] * len(shards))

    def _each(self, fn, shards: list) -> list:
        """``fn(shard)`` for every shard, in order; several at a time (a shard's request is mostly
        Chroma's native code or the network, which run outside the GIL): a search asks every shard."""
        if len(shards) < 2:
            return [fn(c) for c in shards]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=8 if self.remote else min(4, os.cpu_count() or 1),
                                            thread_name_prefix="vectors")
        return list(self._pool.map(fn, shards))

    def _locate(self, shards: list, ids: list[str]) -> dict[str, int]:
        """Which shard holds each of ``ids`` (those stored)."""
        def held(coll) -> list[str]:
            return [f for k in range(0, len(ids), PAGE) for f in coll.get(ids=ids[k:k + PAGE], include=[])["ids"]]

        where: dict[str, int] = {}
        for i, found in enumerate(self._each(held, shards)):
            for f in found:
                where.setdefault(f, i)
        return where

    def _fill(self, name: str, shards: list, n: int) -> list[tuple[int, int]]:
        """Room for ``n`` new vectors: (shard index, how many) in the last shard and new ones."""
        out = []
        last = len(shards) - 1
        room = max(0, SHARD_SIZE - shards[last].count())
        while n > 0:
            if room == 0:
                shards.append(self._create(self._name(shard_name(name, len(shards)))))
                last, room = len(shards) - 1, SHARD_SIZE
            take = min(room, n)
            out.append((last, take))
            n -= take
            room -= take
        return out

    def _route(self, name: str, shards: list, ids: list[str], skip_first: bool = False) -> dict[int, list[int]]:
        """Positions of ``ids`` grouped by the shard that gets them: the shard that holds an id already,
        else the last shard until it is full, then new shards."""
        held = self._locate(shards[1:] if skip_first else shards, ids)
        out: dict[int, list[int]] = {}
        new = []
        for pos, i in enumerate(ids):
            if i in held:
                out.setdefault(held[i] + (1 if skip_first else 0), []).append(pos)
            else:
                new.append(pos)
        at = 0
        for shard, take in self._fill(name, shards, len(new)):
            out.setdefault(shard, []).extend(new[at:at + take])
            at += take
        return out

    def _migrate(self, name: str) -> None:
        """A store from before the shard layout keeps every vector in shard 0: move those past the
        first ``SHARD_SIZE`` to shards of their own, then drop them from shard 0 (which is marked, so
        the next purge shrinks it). Resumable: the copy is an upsert into the shard that already holds
        an id, and the vectors leave shard 0 only once copied; a kill is finished at the next write."""
        shards = self._collections[name]
        first = shards[0]
        while first.count() > SHARD_SIZE:
            page = first.get(include=["embeddings", "metadatas", "documents"], limit=PAGE, offset=SHARD_SIZE)
            if not page["ids"]:
                break
            groups = self._route(name, shards, page["ids"], skip_first=True)
            docs = page.get("documents")
            for shard, positions in groups.items():
                kwargs: dict[str, Any] = {"ids": [page["ids"][p] for p in positions],
                                          "embeddings": [page["embeddings"][p] for p in positions],
                                          "metadatas": [page["metadatas"][p] or None for p in positions]}
                if docs and any(docs):
                    kwargs["documents"] = [docs[p] or "" for p in positions]
                shards[shard].upsert(**kwargs)
            self._mark(name, [0])
            first.delete(ids=page["ids"])

    def _existing(self, full_name: str):
        try:
            return self.client.get_collection(full_name, embedding_function=None)
        except Exception as exc:
            if self.remote and is_transport_error(exc):
                raise
            if is_missing(str(exc)):
                return None
            raise

    def _create(self, full_name: str):
        return self.client.create_collection(full_name, embedding_function=None, configuration={"hnsw": HNSW},
                                             metadata={"app": "personavlm"})

    # -- the public operations --------------------------------------------------------------------

    def _recovering(self, name: str, op):
        """Run ``op``; if a collection it held was dropped or replaced meanwhile (another machine's
        forget rebuilt or dropped it: Chroma answers "does not exist"), open the collections again by
        name and run it once more, instead of failing every later call."""
        try:
            return op()
        except UnreachableError:
            raise
        except StoreError as exc:
            if not is_missing(str(exc)):
                raise
            with self._lock:
                self._collections.pop(name, None)
                self._migrated.discard(name)
            return op()

    def upsert(self, name: str, ids: list[str], embeddings, documents: list[str] | None = None,
               metadatas: list[dict] | None = None) -> None:
        return self._recovering(name, lambda: self._upsert(name, ids, embeddings, documents, metadatas))

    def delete(self, name: str, ids: list[str]) -> None:
        return self._recovering(name, lambda: self._delete(name, ids))

    def query(self, name: str, embedding, k: int, where: dict | None = None) -> list[tuple[str, float]]:
        return self._recovering(name, lambda: self._query(name, embedding, k, where))

    def ids(self, name: str) -> set[str]:
        return self._recovering(name, lambda: self._ids(name))

    def get_embeddings(self, name: str, ids: list[str]) -> dict[str, list[float]]:
        return self._recovering(name, lambda: self._get_embeddings(name, ids))

    def count(self, name: str) -> int:
        return self._recovering(name, lambda: self._count(name))

    def _upsert(self, name: str, ids: list[str], embeddings, documents: list[str] | None = None,
                metadatas: list[dict] | None = None) -> None:
        if not ids:
            return
        embeddings = [list(map(float, e)) for e in embeddings]
        # None values left out, and a metadata left empty passed as None.
        kept: list[dict | None] | None = None
        if metadatas is not None:
            kept = [{k: v for k, v in m.items() if v is not None} or None for m in metadatas]
        with self._lock:
            shards = self._writable(name)
            with self._guard("write vectors"):
                for shard, positions in sorted(self._route(name, shards, list(ids)).items()):
                    kwargs: dict[str, Any] = {"ids": [ids[p] for p in positions],
                                              "embeddings": [embeddings[p] for p in positions]}
                    if documents is not None:
                        kwargs["documents"] = [documents[p] for p in positions]
                    if kept is not None:
                        kwargs["metadatas"] = [kept[p] for p in positions]
                    shards[shard].upsert(**kwargs)

    def _delete(self, name: str, ids: list[str]) -> None:
        """Delete the vectors of ``ids``; the shards that held them are marked (before the deletion,
        so that a kill in between still leaves them marked) for the next ``purge`` to rebuild."""
        if not ids:
            return
        ids = list(dict.fromkeys(ids))
        with self._lock:
            shards = self._writable(name)
            with self._guard("delete vectors"):
                held = self._locate(shards, ids)
                self._mark(name, held.values())
                for shard in sorted(set(held.values())):
                    shards[shard].delete(ids=[i for i in ids if held.get(i) == shard])

    def _query(self, name: str, embedding, k: int, where: dict | None = None) -> list[tuple[str, float]]:
        """Nearest neighbours as (id, cosine similarity), best first.

        The best ``k`` of every shard's own nearest, which is what one collection gives. Each shard is
        asked first for a share of ``k`` (a request's cost grows with the results it returns); a shard
        whose last result still makes the overall top ``k`` may hold more of it, and is asked again for
        ``k``."""
        if k <= 0:
            return []
        vec = [list(map(float, embedding))]

        def search(n: int):
            def one(coll):
                res = coll.query(query_embeddings=vec, n_results=n, where=where or None, include=["distances"])
                if len(res["ids"][0]) < n:
                    # Asked for at least all this shard holds (that the filter admits): HNSW may leave a
                    # node of a small graph unreachable, so the shard is read whole and ranked exactly.
                    res = _exact(coll, vec[0], n, where)
                return res
            return one

        with self._lock:
            shards = self._shards(name)
            share = k if len(shards) == 1 else min(k, 2 * -(-k // len(shards)) + 8)
            with self._guard("search vectors"):
                found = self._each(search(share), shards)
                if share < k:
                    merged = sorted(d for res in found for d in res["distances"][0])
                    cutoff = merged[k - 1] if len(merged) >= k else float("inf")
                    again = [i for i, res in enumerate(found)
                             if len(res["ids"][0]) >= share and res["distances"][0][-1] <= cutoff]
                    for i, res in zip(again, self._each(search(k), [shards[i] for i in again])):
                        found[i] = res
        best: dict[str, float] = {}
        for res in found:
            for i, d in zip(res["ids"][0], res["distances"][0]):
                if 1.0 - d > best.get(i, -2.0):  # an id twice only while a migration is under way
                    best[i] = 1.0 - d
        return sorted(best.items(), key=lambda item: -item[1])[:k]

    def _ids(self, name: str) -> set[str]:
        out: set[str] = set()
        with self._lock:
            for coll in self._shards(name):
                offset = 0
                while True:
                    with self._guard("read vector ids"):
                        batch = coll.get(include=[], limit=5000, offset=offset)["ids"]
                    out.update(batch)
                    if len(batch) < 5000:
                        break
                    offset += len(batch)
        return out

    def _get_embeddings(self, name: str, ids: list[str]) -> dict[str, list[float]]:
        if not ids:
            return {}
        out: dict[str, list[float]] = {}
        with self._lock:
            for coll in self._shards(name):
                with self._guard("read vectors"):
                    res = coll.get(ids=list(ids), include=["embeddings"])
                out.update((i, list(e)) for i, e in zip(res["ids"], res["embeddings"]))
        return out

    def _count(self, name: str) -> int:
        with self._lock:
            shards = self._shards(name)
            with self._guard("count vectors"):
                return sum(coll.count() for coll in shards)

    def shard_of(self, name: str, memory_id: str) -> int | None:
        """The index of the shard that holds ``memory_id``'s vector, or None."""
        with self._lock:
            shards = self._shards(name)
            with self._guard("read vector ids"):
                return self._locate(shards, [memory_id]).get(memory_id)

    def _rebuild(self, name: str, index: int) -> int:
        """Replace shard ``index`` of ``name`` by a fresh copy of its live vectors; the number copied.

        Chroma deletes by marking: the HNSW index keeps a deleted element's vector and its
        write-ahead log keeps the vector until the next index flush. Copying the live vectors to a
        new collection and dropping the old one is what makes an erased vector go. A kill at any
        point is safe: the original is dropped only once the copy is complete, and ``_open()``
        finishes a rename that a kill interrupted.
        """
        shards = self._collections[name]
        old = shards[index]
        full = self._name(shard_name(name, index))
        spare_name = self._name(shard_name(name, index) + SPARE)
        with self._guard(f"rebuild collection {full}"):
            if self._existing(spare_name) is not None:  # a copy a kill interrupted
                self.client.delete_collection(spare_name)
            spare = self._create(spare_name)
            copied = copy_live(old, spare, PAGE)
            self.client.delete_collection(full)
            spare.modify(name=full)
            shards[index] = spare
        return copied

    def purge(self, names) -> None:
        """Make erased vectors unrecoverable: rebuild the shards of ``names`` that had a deletion
        since their last rebuild (an emptied last shard is dropped instead), then, for a store on this
        machine, shred the files of dropped index segments and vacuum Chroma's SQLite file. (A
        server's files are the server's: its own compaction removes what a dropped collection left;
        docs/deploy.md.)"""
        with self._lock:
            for name in names:
                shards = self._writable(name)
                dirty = self.dirty_shards(name)
                with self._guard(f"rebuild collection {self._name(name)}"):
                    for index in sorted(dirty, reverse=True):
                        if index >= len(shards):
                            pass  # a shard dropped after it was marked
                        elif index == len(shards) - 1 and index > 0 and shards[index].count() == 0:
                            self.client.delete_collection(self._name(shard_name(name, index)))
                            shards.pop()
                        else:
                            self._rebuild(name, index)
                        self._marks(name).delete(ids=[str(index)])
            if self.path is not None and not self.remote:
                compact_local_files(self.path)

    def drop(self, names) -> None:
        """Delete this namespace's collections ``names`` (missing ones are fine), e.g. when a user is
        removed: on a server their vectors do not live in the user's directory."""
        for name in names:
            with self._lock:
                self._collections.pop(name, None)
                self._migrated.discard(name)
                known = [shard_name(name, i) for i in range(len(self._probe(name)))]
                for full in [*known, name + DIRTY, *(n + SPARE for n in known)]:
                    try:
                        with self._guard(f"delete collection {self._name(full)}"):
                            self.client.delete_collection(self._name(full))
                    except StoreError as exc:
                        if "not reachable" in str(exc) or not is_missing(str(exc)):
                            raise

    def _probe(self, name: str) -> list[int]:
        """Indexes of the shards of ``name`` that exist (or whose rebuild copy does), without creating any."""
        found: list[int] = []
        with self._guard(f"open collection {self._name(name)}"):
            while (self._existing(self._name(shard_name(name, len(found)))) is not None
                   or self._existing(self._name(shard_name(name, len(found)) + SPARE)) is not None):
                found.append(len(found))
        return found


def shard_name(name: str, index: int) -> str:
    """Shard 0 keeps the collection's own name (a small store is one collection, as before the shard
    layout); the others are ``<name>_<index>``."""
    return name if index == 0 else f"{name}_{index}"


def _exact(coll, query: list[float], n: int, where: dict | None) -> dict:
    """The shard's vectors (that ``where`` admits) ranked by cosine distance, in the shape of a query's
    result: for a request of at least everything the shard holds, where HNSW is only approximate."""
    import numpy as np

    got = coll.get(where=where or None, include=["embeddings"])
    ids = list(got["ids"])
    if not ids:
        return {"ids": [[]], "distances": [[]]}
    matrix = np.asarray(got["embeddings"], dtype=np.float64)
    q = np.asarray(query, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1) * (np.linalg.norm(q) or 1.0)
    distances = 1.0 - (matrix @ q) / np.where(norms == 0, 1.0, norms)
    order = np.argsort(distances, kind="stable")[:n]
    return {"ids": [[ids[i] for i in order]], "distances": [[float(distances[i]) for i in order]]}
