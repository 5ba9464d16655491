"""A user's memory: records (SQLite, or PostgreSQL for a server store) and vectors (Chroma) kept
consistent, images where the records are (files of the user, or rows of the record database).

The record store and the image place are injected (``cli/env.py`` wires them; elsewhere
``MemoryStore(path, **adapters.image_store.embedded_parts(path), ...)``).

Every write goes to the record file first, in one transaction, then to the vector store; a
record whose vector is missing (a kill between the two) is embedded again at the next open, and
vector deletions are queued as pending work in the same transaction that deletes the records, so
forgetting completes even if interrupted.

The vector store may be a server that stops answering: :class:`VectorGate` makes that a degraded mode,
not an outage. The record store is then the outbox (docs/deploy.md): records are written as always
and keep ``vector_state`` 0, queued vector deletions stay queued, searches find no vectors (recall goes
on with words and time), one notice says so, and the first write that finds the server back flushes
the outbox (``sync_vectors``) without the user doing anything.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from personavlm_cli.core.errors import UnreachableError
from personavlm_cli.core.memory import Memory, MemoryType, from_iso, iso, new_id, now
from personavlm_cli.core.ports import ImageEncoder, ImageFiles, RecordStore, TextEncoder, VectorIndex

TEXT = "memories"
IMAGES = "images"


class VectorGate:
    """The vector store as the memory store uses it. While its server answers, every call goes to the
    index (built on first use by ``factory``). Once a call finds it unreachable (UnreachableError), the
    gate is *down*: calls fail at once for ``retry_s`` seconds (no connect timeout per search), then
    the server is asked again; ``query`` finds nothing instead of failing, so recall goes on with
    words and time. ``back`` is set when a call succeeds after a down spell (the store then flushes
    its outbox)."""

    retry_s = 10.0

    def __init__(self, factory: Callable[[], VectorIndex]) -> None:
        self._factory = factory
        self._index: VectorIndex | None = None
        self.down: str | None = None  # the reason, while the server does not answer
        self._since = 0.0
        self.back = False
        self.told = False  # the down spell was told (one notice per spell, for every fork of the store)
        self._lock = threading.Lock()

    def index(self) -> VectorIndex:
        self._check()
        if self._index is None:
            with self._lock:
                if self._index is None:
                    try:
                        self._index = self._factory()
                    except UnreachableError as exc:
                        self._mark(exc)
                        raise
        return self._index

    def close(self) -> None:
        """Release the index (its database connections, index files and threads): the store's end. Never
        raises: what matters at a store's end is that the records are closed."""
        with self._lock:
            index, self._index = self._index, None
        if index is not None:
            try:
                index.close()
            except Exception:  # a server half gone, an index already closed: nothing left to release
                pass

    def _check(self) -> None:
        if self.down is not None and time.monotonic() - self._since < self.retry_s:
            raise UnreachableError(self.down)

    def _mark(self, exc: BaseException) -> None:
        self.down = str(exc)
        self._since = time.monotonic()

    def ask_now(self) -> None:
        """Let the next call ask a down server at once (the background flusher's backoff decides when)."""
        self._since = 0.0

    def take_back(self) -> bool:
        """True once after the server came back (whoever takes it flushes the outbox and says so)."""
        with self._lock:
            back, self.back = self.back, False
        return back

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        index = self.index()
        try:
            result = getattr(index, name)(*args, **kwargs)
        except UnreachableError as exc:
            self._mark(exc)
            raise
        if self.down is not None:
            self.down, self.back = None, True
        return result

    def query(self, *args: Any, **kwargs: Any) -> list[tuple[str, float]]:
        try:
            return cast("list[tuple[str, float]]", self.call("query", *args, **kwargs))  # VectorIndex.query's
        except UnreachableError:
            return []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self.index(), name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: self.call(name, *args, **kwargs)


class MemoryStore:
    def __init__(self, user_dir: Path, *, text_encoder: Callable[[], TextEncoder],
                 image_encoder: Callable[[], ImageEncoder], vectors: Callable[[], VectorIndex],
                 records: Callable[..., RecordStore], images: ImageFiles, readonly: bool = False):
        """``text_encoder``, ``image_encoder`` and ``vectors`` are factories, called on first use, so
        that listing commands never load an embedding model or the vector engine. ``records`` is a
        factory ``records(readonly=...)`` of the record store (called now, and again by ``fork``);
        ``images`` the image place (``adapters/image_store.py``); ``cli/env.py`` builds both."""
        self.user_dir = Path(user_dir)
        self._records_factory = records
        self.images = images
        self.images_dir = Path(images.dir)  # local files (a server store's private cache)
        self.records = records(readonly=readonly)
        if not readonly and images.remote:
            images.prune(self.records)  # cached copies of images erased on another machine
        self._text_encoder_factory = text_encoder
        self._image_encoder_factory = image_encoder
        self._vectors_factory = vectors
        self._text_encoder: TextEncoder | None = None
        self._image_encoder: ImageEncoder | None = None
        self._vectors: VectorGate | None = None
        self.notices: list[str] = []  # what the user should be told (cli prints them): the degraded mode
        self._flushing = False

    # -- lazily built parts -----------------------------------------------------------------------

    @property
    def text_encoder(self) -> TextEncoder:
        if self._text_encoder is None:
            self._text_encoder = self._text_encoder_factory()
        return self._text_encoder

    @property
    def image_encoder(self) -> ImageEncoder:
        if self._image_encoder is None:
            self._image_encoder = self._image_encoder_factory()
        return self._image_encoder

    @property
    def vectors(self) -> VectorGate:
        if self._vectors is None:
            self._vectors = VectorGate(self._vectors_factory)
        return self._vectors

    @property
    def _down_told(self) -> bool:  # on the gate: a fork (the flusher's, the update stage's) shares it
        return self.vectors.told

    @_down_told.setter
    def _down_told(self, value: bool) -> None:
        self.vectors.told = value

    @property
    def vectors_down(self) -> str | None:
        """Why the vector server does not answer, while it does not (None when it does, or untried)."""
        return self._vectors.down if self._vectors is not None else None

    def _degraded(self, exc: BaseException) -> None:
        """Say once per down spell that the store runs without its vector server."""
        if self._down_told:
            return
        self._down_told = True
        self.notices.append(f"{exc}: answering from words and dates only; new memories are stored and their "
                            "vectors wait in the record store until it is back")

    def take_notices(self) -> list[str]:
        """The notices not shown yet (a search that found the vector server down says so here too)."""
        if self.vectors_down and not self._down_told:
            self._degraded(UnreachableError(self.vectors_down))
        out = []
        while self.notices:  # one at a time: the flusher's thread may append meanwhile (none is lost)
            out.append(self.notices.pop(0))
        return out

    def pending_vectors(self) -> tuple[int, int]:
        """(memories whose vectors are not written yet, queued vector erasures): the outbox."""
        waiting = len(self.records.unembedded(100000))
        erasures = sum(len(j["payload"].get("ids", [])) for j in self.records.jobs(["vector_delete"]))
        return waiting, erasures

    def _flush_if_back(self) -> None:
        gate = self._vectors
        if gate is None or self._flushing or not gate.take_back():
            return
        self._down_told = False
        self._flushing = True
        try:
            waiting, erasures = self.pending_vectors()
            self.sync_vectors()
            if waiting or erasures:
                self.notices.append(f"The vector store is back: {count_of(waiting, 'waiting vector')} written, "
                                    f"{count_of(erasures, 'vector erasure')} finished.")
        except UnreachableError as exc:
            self._degraded(exc)
        finally:
            self._flushing = False

    def flush_outbox(self) -> bool:
        """One step of the background flusher (``core/outbox.py``): ask the vector server now; if it
        answers, write every waiting vector and finish every queued erasure (claimed: another process
        flushing the same outbox skips what this one holds), and say once that it is back. True when
        the server answered and the outbox is empty, False while it is still down (said once already)."""
        gate = self.vectors
        was_down = gate.down is not None
        gate.ask_now()
        try:
            waiting, erasures = self.pending_vectors()
            if waiting or erasures:
                self._sync_vectors(256)
            else:
                gate.call("count", TEXT)  # nothing waits: only whether the server answers again
        except UnreachableError:
            return False
        if gate.take_back() or was_down:
            self._down_told = False
            done = (f": {count_of(waiting, 'waiting vector')} written, {count_of(erasures, 'vector erasure')} "
                    "finished" if waiting or erasures else ": answering by meaning again")
            self.notices.append(f"The vector store is back{done}.")
        return self.pending_vectors() == (0, 0)

    def fork(self) -> MemoryStore:
        """The same store for another thread: its own record connection, shared encoders and vectors."""
        twin = MemoryStore(self.user_dir, text_encoder=lambda: self.text_encoder,
                           image_encoder=lambda: self.image_encoder, vectors=self._vectors_factory,
                           records=self._records_factory, images=self.images)
        twin._vectors = self.vectors  # one gate: one down spell, one notice
        twin.notices = self.notices
        return twin

    @property
    def remote(self) -> bool:
        """Do the records live on a server (shared by every machine of the user)?"""
        return self.records.remote

    def exclusive(self, command: str) -> AbstractContextManager[None]:
        """One writer across machines for ``command`` (erase, compact, migrate): the record database's
        lock on a server store; the local store lock (cli/env.py) already covers an embedded one."""
        return self.records.exclusive(command)

    def claim_job(self, job_id: int) -> AbstractContextManager[bool]:
        """``with store.claim_job(id) as mine:`` ``mine`` is False when another machine runs that queued
        job right now or has finished it (server store); always True for an embedded store, whose one
        writer the local lock guarantees."""
        return self.records.claim_job(job_id)

    # -- images -----------------------------------------------------------------------------------

    def store_image(self, path: Path) -> Any:
        """Check ``path`` is a safe image and keep it where the records are; returns its ImageInfo
        (``info.path`` a local file under ``images_dir``). Raises before anything is written."""
        return self.images.store(self.records, path)

    def image_path(self, rel: str) -> Path:
        """A local file of the stored image ``rel`` (``<sha[:2]>/<sha>.<ext>``), fetched if need be."""
        return self.images.path(self.records, rel)

    def image_bytes(self, sha256: str) -> tuple[str, bytes] | None:
        """(extension, bytes) of a stored image, or None."""
        return self.images.read(self.records, sha256)

    def put_image_bytes(self, sha256: str, ext: str, data: bytes) -> str:
        """Store image bytes already checked (an import, a migration); returns the ``rel`` path."""
        return self.images.put(self.records, sha256, ext, data)

    def erase_image(self, sha256: str) -> None:
        """Erase a stored image (the file shredded, the database row deleted) if no memory uses it."""
        if not self.records.image_in_use(sha256):
            self.images.erase(self.records, sha256)

    def image_shas(self) -> set[str]:
        return self.images.shas(self.records)

    def close(self) -> None:
        if self._vectors is not None:  # Chroma's connections and files: never left open for the process's life
            self._vectors.close()
        self.records.close()

    # -- writing ----------------------------------------------------------------------------------

    def add(self, memories: list[Memory], embed: bool = True, sources: list[str] | None = None) -> bool:
        """Write ``memories`` in one transaction. With ``sources``: only if every one of those still
        exists, held until the commit (another machine's erasure of them waits, then takes these too:
        ``_erase``); False, and nothing written, when one was erased meanwhile."""
        with self.records.transaction():
            if sources and len(self.records.hold(sources)) < len(set(sources)):
                return False
            self.records.insert(memories)
            self.keep_images(memories)
        if embed:
            self.embed(memories)
        return True

    def embed(self, memories: list[Memory]) -> None:
        """Write the vectors of ``memories`` (text for all, CLIP for images) and mark them done. With
        the vector server down they wait (unmarked, in the record store) and a notice says so; the
        first write that finds it back writes every waiting one."""
        if not memories:
            return
        try:
            self._embed(memories)
        except UnreachableError as exc:
            self._degraded(exc)
            return
        self._flush_if_back()

    def _embed(self, memories: list[Memory]) -> None:
        vectors = self.text_encoder.embed([m.index_text() for m in memories])
        # No text goes to Chroma: its write-ahead log keeps the documents of deleted records until
        # its own compaction, which would defeat erasure. Text lives in the record file.
        self.vectors.upsert(TEXT, [m.id for m in memories], vectors,
                            metadatas=[vector_metadata(m) for m in memories])
        images = [m for m in memories if m.type == MemoryType.IMAGE and m.meta.get("path")]
        if images:
            paths = [self.image_path(m.meta["path"]) for m in images]
            clip = self.image_encoder.embed_images(paths)
            self.vectors.upsert(IMAGES, [m.id for m in images], clip,
                                metadatas=[vector_metadata(m) for m in images])
        with self.records.transaction():
            self.records.mark_embedded([m.id for m in memories])

    def keep_images(self, memories: Iterable[Memory]) -> None:
        """The image files new memories name, stored where the records are (server: in the same
        transaction as the records, when called inside one)."""
        for m in memories:
            if m.type == MemoryType.IMAGE and m.meta.get("path"):
                self.images.keep(self.records, m.meta["path"])

    def sync_vectors(self, batch: int = 256) -> int:
        """Repair after a kill, flush the outbox after a vector-server outage: embed records without
        vectors, finish queued vector deletions. With the server still down: nothing, and a notice."""
        try:
            return self._sync_vectors(batch)
        except UnreachableError as exc:
            self._degraded(exc)
            return 0

    def _sync_vectors(self, batch: int) -> int:
        done = 0
        with contextlib.ExitStack() as claims:
            # Each queued erasure claimed: two processes flushing one outbox never run the same one.
            jobs = [job for job in self.records.jobs(["vector_delete"])
                    if claims.enter_context(self.claim_job(job["id"]))]
            for job in jobs:
                self.vectors.delete(TEXT, job["payload"]["ids"])
                self.vectors.delete(IMAGES, job["payload"]["ids"])
            if any(job["payload"].get("purge", True) for job in jobs):
                self.vectors.purge([TEXT, IMAGES])  # one rebuild for every deletion a kill left
            with self.records.transaction():
                for job in jobs:
                    self.records.finish_job(job["id"])
        while True:
            pending = self.records.unembedded(batch)
            if not pending:
                return done
            self._embed(pending)
            # Erased meanwhile (another process's forget, whose vector deletion may have run before this
            # write): the vector just written goes too, so an erased memory never gets its vector back.
            kept = {m.id for m in self.records.get_many([m.id for m in pending])}
            gone = [m.id for m in pending if m.id not in kept]
            if gone:
                self.vectors.delete(TEXT, gone)
                self.vectors.delete(IMAGES, gone)
            done += len(pending)

    def replace(self, memory: Memory) -> None:
        """Rewrite a memory's text or metadata in place (its vector is refreshed)."""
        with self.records.transaction():
            self.records.update(memory)
        self.embed([memory])

    def supersede(self, old: Memory, new: Memory | None, at: str | None = None, operation: str | None = None) -> None:
        """Close ``old`` (replaced by ``new``, if any); ``operation`` is logged in the audit log with both
        ids, in the same transaction."""
        when = at or iso(now())
        with self.records.transaction():
            if new is not None:
                self.records.insert([new])
            self.records.supersede(old.id, new.id if new else None, when)
            if operation is not None:
                self.records.audit(operation, [old.id] + ([new.id] if new else []))
        old.valid_to, old.superseded_by = when, new.id if new else None
        self.embed([old] + ([new] if new else []))

    # -- forgetting -------------------------------------------------------------------------------

    def erase(self, ids: Iterable[str], operation: str, before_commit: Callable[[], None] | None = None,
              purge: bool = True) -> list[str]:
        """Delete records, their vectors and image files; log the operation (ids only); compact.

        The caller decides what to erase (derived memories included); this makes it so, all or
        nothing: the record deletion, the audit entry and the queued vector deletion are one
        transaction, and the queued deletion is finished at the next open if a kill interrupts it.
        ``purge`` rebuilds the vector collections so that no copy of an erased vector is left; it
        copies every vector (seconds at 10k memories), so the update stage, which replaces its own
        derived summaries, passes ``purge=False``: their vectors go at the next purge.
        """
        ids = list(dict.fromkeys(ids))
        if not ids:
            return []
        with self.exclusive(operation):
            return self._erase(ids, operation, before_commit, purge)

    def _erase(self, ids: list[str], operation: str, before_commit: Callable[[], None] | None, purge: bool) -> list[str]:
        doomed = self.records.get_many(ids)
        shas = {m.image_sha256 for m in doomed if m.image_sha256}
        with self.records.transaction():
            self.records.delete(ids)
            # An answer another machine stored after this erasure was planned, to a turn it erases:
            # it goes too (it would quote erased words). Read after the delete, which waited for it.
            late = [i for i in self.records.answers_to(ids) if i not in set(ids)]
            if late:
                doomed += self.records.get_many(late)
                self.records.delete(late)
                ids = ids + late
            job = self.records.add_job("vector_delete", {"ids": ids, "purge": purge})
            self.records.audit(operation, ids)
            if before_commit is not None:  # what must change with the erasure, in the same transaction
                before_commit()
        images = [IMAGES] if any(m.type == MemoryType.IMAGE for m in doomed) else []
        try:
            self.vectors.delete(TEXT, ids)
            for name in images:
                self.vectors.delete(name, ids)
            # Chroma only marks deletions: the vectors go for good when the collections are rebuilt.
            if purge:
                self.vectors.purge([TEXT] + images)
        except UnreachableError as exc:
            # The records are gone now; the queued deletion (committed with them) finishes when the
            # vector server is back: at the next write or open that reaches it (doctor counts them).
            self._degraded(exc)
            self.notices.append(f"{count_of(len(ids), 'memory')} erased from the records; their vectors are "
                                "erased as soon as the vector store is reachable (pending: `personavlm doctor`)")
        else:
            with self.records.transaction():
                self.records.finish_job(job)
        for sha in shas:
            self.erase_image(sha)
        self.records.compact()
        return ids

    def size_bytes(self) -> int:
        total = self.records.size_bytes() if self.remote else 0
        for root, _dirs, files in os.walk(self.user_dir):
            for f in files:
                try:
                    total += os.path.getsize(os.path.join(root, f))
                except OSError:
                    pass
        return total


def count_of(n: int, noun: str) -> str:
    return f"1 {noun}" if n == 1 else f"{n} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"


def vector_metadata(m: Memory) -> dict[str, Any]:
    start = m.occurred.timestamp()
    end = from_iso(m.occurred_end).timestamp() if m.occurred_end else start
    return {"type": m.type, "ts": start, "end_ts": end, "current": m.current, "role": m.role,
            "session_id": m.session_id}


def new_memory(kind: str, text: str, at: datetime | str, **fields: Any) -> Memory:
    stamp = iso(at) if not isinstance(at, str) else at
    return Memory(id=new_id(kind), type=kind, text=text, occurred_at=stamp, created_at=iso(now()), **fields)

