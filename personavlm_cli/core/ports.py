"""The ports of the method: what ``core`` needs from the outside world, as ``typing.Protocol`` classes.

``core`` is written against these; ``adapters`` implement them (``adapters/llm.py`` and
``adapters/remote_llm.py`` the chat model, ``adapters/records.py`` the record store,
``adapters/vectors.py`` the vector index, ``adapters/text_encoder.py`` and ``adapters/image_encoder.py``
the encoders), and ``cli/env.py`` (the composition root) picks which. ``tests/test_ports.py`` checks
that each adapter class has every member of its port with a compatible signature.

Errors are part of each contract: every failure a user can cause or meet (a bad file, a server that is
down, a full disk) is a :class:`personavlm_cli.core.errors.PersonaError` subclass with a one-line message,
never a library's own exception.

Standard library only, and nothing is imported at run time beyond ``typing``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # numpy arrays and Memory records, named in annotations only
    import builtins  # RecordStore has a method named `list`, which shadows the builtin in its annotations

    from personavlm_cli.core.memory import Memory

Messages = Sequence[Mapping[str, Any]]
"""OpenAI-style chat messages: ``{"role": "system" | "user" | "assistant", "content": str | parts}``, where
parts are ``{"type": "text", "text": ...}`` and ``{"type": "image_path", "path": ...}`` (an image file the
model sees when it has vision; a text-only model gets only the text parts)."""


# --------------------------------------------------------------------------------------------------
# The chat model
# --------------------------------------------------------------------------------------------------


class LoadInfo(Protocol):
    """What a chat model says about itself once it is ready (shown as one line by ``chat``)."""

    n_ctx: int
    """The context window in tokens."""
    vision: bool
    """Whether ``image_path`` parts reach the model as images."""
    load_seconds: float
    """Seconds the model took to become ready (0 for a server: nothing is loaded here)."""

    def summary_line(self) -> str:
        """One line for the terminal, e.g. ``SmolLM2-135M-Instruct · Q4_1 · ctx 4096 · GPU 0/31 layers``."""
        ...


class ChatModel(Protocol):
    """A chat model: in this process (llama.cpp) or behind an OpenAI-compatible server.

    Not safe for concurrent calls from two threads: callers serialise calls (``core.gate``); a
    background thread uses its own :meth:`fork`. Every failure is :class:`ModelError` (one line),
    except an output that breaks its schema (``ModelOutputError``) and an interrupted call
    (:class:`ModelInterrupted`).
    """

    load_info: LoadInfo
    last_usage: dict[str, int]
    """Token counts of the last call, as far as the backend knows them: ``prompt_tokens``,
    ``cached_tokens`` (of the prompt, found in the backend's cache), ``completion_tokens``; a key is
    missing when the backend cannot tell (empty before the first call)."""

    @property
    def n_ctx(self) -> int:
        """The context window in tokens (``load_info.n_ctx``)."""
        ...

    @property
    def vision(self) -> bool:
        """Whether images reach the model (``load_info.vision``)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by the model's tokenizer (0 for ""); where the backend cannot count
        exactly, an estimate that errs towards too many. Never raises for a backend that is down."""
        ...

    def stream(self, messages: Messages, *, max_tokens: int = 512, temperature: float = 0.7, top_p: float = 0.95,
               stop: list[str] | None = None, repeat_penalty: float = 1.1) -> Iterator[str]:
        """The answer's text in pieces as they are generated. Closing the iterator early (``break``,
        ``close()``, Ctrl-C between pieces) stops generation and leaves the model usable."""
        ...

    def complete(self, messages: Messages, *, max_tokens: int = 256, temperature: float = 0.0,
                 grammar: str | None = None, json_schema: dict[str, Any] | None = None, stop: list[str] | None = None,
                 seed: int | None = None) -> str:
        """The whole answer at once, optionally constrained by a GBNF ``grammar`` or a ``json_schema``
        (not both: ValueError). An :meth:`interrupt` stops it with ModelInterrupted."""
        ...

    def complete_json(self, messages: Messages, schema: dict[str, Any], *, max_tokens: int = 256,
                      validate: Callable[[dict[str, Any]], str | None] | None = None, retries: int = 1) -> dict[str, Any]:
        """A JSON object that satisfies ``schema`` (JSON Schema, checked after generation too) and
        ``validate(obj)`` (None: fine; a reason or ValueError: not). Invalid output is asked again
        ``retries`` times, then ModelOutputError (one line with the last reason)."""
        ...

    @property
    def weights_bytes(self) -> int | None:
        """The size of the model's weights file, or None when they are not on this machine (a model
        server). ``core/capability.py`` decides from it what the model can carry."""
        ...

    def fork(self) -> ChatModel:
        """Another model of the same kind for a second thread (background learning), so that its
        calls never evict the answers' cache: a second context over the same weights, or a second
        client of the same server. The caller closes it."""
        ...

    def interrupt(self) -> None:
        """Stop the :meth:`complete` call in progress (from another thread) at its next token; one
        that starts right after is stopped at once. The stopped call raises ModelInterrupted."""
        ...

    def prefill(self, messages: Messages, stop: Callable[[], bool] | None = None) -> bool:
        """Evaluate ``messages`` into the model's prompt cache without answering, so that a later
        prompt that begins with them pays only for what follows (the chat's next prefix, while the
        user reads). ``stop()`` is asked between two small batches of the prompt; True stops it there,
        keeping what was evaluated. True when the whole prompt is in the cache; False when stopped, or
        when the backend keeps no cache of its own here (a server's cache slots are its own)."""
        ...

    def close(self) -> None:
        """Free the model (or the client); later calls raise ModelError. Closing twice is fine."""
        ...


# --------------------------------------------------------------------------------------------------
# The record store (the system of record)
# --------------------------------------------------------------------------------------------------


class RecordStore(Protocol):
    """One user's system of record: memories, a lexical index over them, the durable job queue, the
    audit log and the personality history (today SQLite, ``adapters/records.py``; PostgreSQL is the
    other implementation).

    Contract shared by every implementation:

    - Not shared between threads: each thread opens its own (``MemoryStore.fork``).
    - Writes happen inside :meth:`transaction` when they must be atomic; outside one, each call is
      its own unit. A failure raises StoreError (``DiskFullError`` for a full disk) and leaves
      nothing of the failed transaction.
    - Times: ``since`` / ``until`` are POSIX timestamps; a memory lies in the window when it
      overlaps it (it ends at or after ``since`` and starts at or before ``until``). Its start is
      ``occurred_at``, its end ``occurred_end`` or else its start.
    - "Current" means not superseded (``valid_to`` is None); ``include_superseded=False`` keeps only
      current memories.
    - Order: by start time, then by insertion order (oldest first unless ``newest_first``).
    - Memories come back equal (``==``) to the :class:`Memory` records written, ``meta`` and
      ``source_ids`` included (JSON round trip).
    - Meta values and job payloads are JSON values and come back as ``json.loads`` makes them.
    """

    remote: bool
    """True when the records live on a server that other machines share (PostgreSQL)."""

    def exclusive(self, command: str) -> AbstractContextManager[None]:
        """One writer across every machine for ``command`` (erase, compaction, migrate): a server's
        lock, naming the holder when busy; nothing to do for a local file (the user's store lock)."""
        ...

    def claim_job(self, job_id: int) -> AbstractContextManager[bool]:
        """``with records.claim_job(id) as mine:`` False while another machine runs that queued job or
        once it is finished; always True for a local file, whose one writer the store lock guarantees."""
        ...

    def transaction(self) -> AbstractContextManager[Any]:
        """All writes in the ``with`` block commit together, or none (any exception, KeyboardInterrupt
        included, rolls back). A transaction inside another joins it; writers elsewhere wait."""
        ...

    def close(self) -> None:
        """Close the connection (no transaction may be open)."""
        ...

    # -- meta --

    def get_meta(self, key: str, default: Any = None) -> Any:
        """The JSON value stored under ``key``, or ``default``."""
        ...

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value under ``key`` (replacing any)."""
        ...

    def store_id(self) -> str:
        """A random id of this store, made on first use and then fixed."""
        ...

    def image_blob(self, sha256: str) -> tuple[str, bytes] | None:
        """(extension, bytes) of an image kept with the records (a server store), or None (none there;
        an embedded store keeps its images as files, and has none)."""
        ...

    def meta_items(self) -> dict[str, Any]:
        """Every meta key with its value (as :meth:`get_meta` reads it): what ``core/migration.py`` copies
        and compares."""
        ...

    # -- memories --

    def insert(self, memories: Iterable[Memory]) -> None:
        """Add new memories (their ids must not be in the store yet); they are indexed for
        :meth:`lexical` and marked as not yet embedded (:meth:`unembedded`)."""
        ...

    def update(self, memory: Memory) -> None:
        """Replace every field of the memory with its id (re-indexed, and marked not embedded)."""
        ...

    def supersede(self, old_id: str, new_id: str | None, at: str) -> None:
        """Mark ``old_id`` no longer current as of ``at`` (ISO time), replaced by ``new_id`` (or by
        nothing); a memory already superseded is left as it is."""
        ...

    def get(self, memory_id: str) -> Memory | None:
        """The memory with this id, current or not; None when there is none."""
        ...

    def get_many(self, ids: Iterable[str]) -> list[Memory]:
        """The memories with these ids, in the order of ``ids``; unknown ids are skipped. Any number of ids."""
        ...

    def list(self, types: Iterable[str] | None = None, since: float | None = None, until: float | None = None,
             include_superseded: bool = False, limit: int | None = None, session_id: str | None = None,
             newest_first: bool = False) -> builtins.list[Memory]:
        """Memories of ``types`` (None: all) in the window, of one session if given, in time order;
        at most ``limit`` (the first ones of that order)."""
        ...

    def count(self, types: Iterable[str] | None = None, include_superseded: bool = True) -> int:
        """How many memories of ``types`` there are."""
        ...

    def has_current_besides(self, ids: Iterable[str]) -> bool:
        """Whether any current memory exists whose id is not in ``ids``."""
        ...

    def lexical(self, query: str, k: int, types: Iterable[str] | None = None, since: float | None = None,
                until: float | None = None, include_superseded: bool = False) -> builtins.list[tuple[str, float]]:
        """Full-text search: memories whose text or keywords contain any word of ``query`` (words as
        ``records.query_words`` finds them, stemmed), as at most ``k`` (id, score) pairs, best first; a
        higher score is better (BM25 or the database's equivalent). ``[]`` for a query with no words."""
        ...

    def filter_ids(self, ids: builtins.list[str], types: Iterable[str] | None = None, since: float | None = None,
                   until: float | None = None, include_superseded: bool = False) -> set[str]:
        """Those of ``ids`` whose memories pass the filters."""
        ...

    def session_turns(self, ids: builtins.list[str]) -> builtins.list[tuple[Any, ...]]:
        """Every ``turn`` memory of the sessions the memories ``ids`` belong to, ordered by session id,
        then time, then insertion: tuples ``(id, session_id, start_ts, end_ts, current)``, where
        ``current`` is truthy for a memory not superseded."""
        ...

    def unembedded(self, limit: int = 1000) -> builtins.list[Memory]:
        """Up to ``limit`` memories whose vectors are not written yet (inserted or updated since)."""
        ...

    def mark_embedded(self, ids: Iterable[str]) -> None:
        """Record that the vectors of ``ids`` are written."""
        ...

    def delete(self, ids: Iterable[str]) -> int:
        """Delete the memories (and their index entries); how many existed. Deleted text must become
        unrecoverable at the next :meth:`compact`, which an open finishes if a kill interrupted it."""
        ...

    def derived_from(self, ids: Iterable[str]) -> builtins.list[Memory]:
        """Memories whose ``source_ids`` name any of ``ids``."""
        ...

    def superseded_by_any(self, ids: Iterable[str]) -> builtins.list[Memory]:
        """Memories whose ``superseded_by`` is one of ``ids``."""
        ...

    def turn_counts(self) -> dict[str, int]:
        """Number of ``turn`` memories per session id."""
        ...

    def image_in_use(self, sha256: str) -> bool:
        """Whether any memory (current or not) refers to the image file with this digest."""
        ...

    def hold(self, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` exist, kept so until the transaction ends (a concurrent erasure of them waits)."""
        ...

    def answers_to(self, ids: Iterable[str]) -> builtins.list[str]:
        """Ids of the assistant turns that answer one of the user turns ``ids`` (their one source)."""
        ...

    def compact(self) -> None:
        """Make deleted text unrecoverable from the store's files (index segments, free pages, logs)."""
        ...

    def size_bytes(self) -> int:
        """Bytes the store takes on disk (0 where it is not on this machine's disk)."""
        ...

    # -- the durable job queue --

    def add_job(self, kind: str, payload: dict[str, Any]) -> int:
        """Queue a job; its id (ids increase)."""
        ...

    def jobs(self, kinds: Iterable[str] | None = None) -> builtins.list[dict[str, Any]]:
        """Queued jobs of ``kinds`` (None: all), oldest first: ``{"id", "kind", "payload", "attempts"}``."""
        ...

    def pending_jobs(self) -> builtins.list[dict[str, Any]]:
        """The jobs a user is shown as pending work (kinds ``turn``, ``session``, ``import_files``)."""
        ...

    def job_attempted(self, job_id: int) -> None:
        """Count one more attempt of the job."""
        ...

    def finish_job(self, job_id: int) -> None:
        """Remove the job from the queue (an unknown id is fine)."""
        ...

    def finish_interrupted_imports(self, images_dir: Path) -> int:
        """Finish imports killed before their records were committed: shred the image files under
        ``images_dir`` named by ``import_files`` jobs (their ``.part`` files always, the files themselves
        unless a memory uses them), drop those jobs, and return how many files went."""
        ...

    # -- audit and personality --

    def audit(self, operation: str, ids: builtins.list[str]) -> None:
        """Log an operation and the ids it touched (never content), with the time."""
        ...

    def audit_log(self) -> builtins.list[dict[str, Any]]:
        """The audit log, oldest first: ``{"at", "operation", "ids", "count"}``."""
        ...

    def add_personality(self, record: dict[str, Any]) -> None:
        """Append a personality update: keys ``at``, ``m``, ``before``, ``after`` (required), ``turn_id``,
        ``lambda``, ``inferred``, ``note`` (optional)."""
        ...

    def personality_history(self) -> builtins.list[dict[str, Any]]:
        """Personality updates, oldest first, with all eight keys (missing optional ones as None, ``note`` "")."""
        ...


# --------------------------------------------------------------------------------------------------
# The vector index
# --------------------------------------------------------------------------------------------------


class VectorIndex(Protocol):
    """Named collections of unit vectors keyed by memory id, searched by cosine similarity (Chroma,
    on disk or on a server). Safe to share between threads. Failures are StoreError (one line)."""

    def upsert(self, name: str, ids: list[str], embeddings: Any, documents: list[str] | None = None,
               metadatas: list[dict[str, Any]] | None = None) -> None:
        """Write (or replace) the vectors of ``ids``; ``None`` metadata values are dropped."""
        ...

    def delete(self, name: str, ids: list[str]) -> None:
        """Delete the vectors of ``ids`` (unknown ids are fine)."""
        ...

    def query(self, name: str, embedding: Any, k: int, where: dict[str, Any] | None = None) -> list[tuple[str, float]]:
        """The ``k`` nearest vectors (matching the metadata filter ``where``) as (id, cosine similarity), best first."""
        ...

    def ids(self, name: str) -> set[str]:
        """Every id in the collection."""
        ...

    def get_embeddings(self, name: str, ids: list[str]) -> dict[str, list[float]]:
        """The stored vectors of those ``ids`` that exist."""
        ...

    def count(self, name: str) -> int:
        """Vectors in the collection."""
        ...

    def purge(self, names: Iterable[str]) -> None:
        """Make deleted vectors unrecoverable in the collections ``names``: no copy of an erased vector
        may survive in the index's files (on a server, the server's own compaction finishes it)."""
        ...

    def drop(self, names: Iterable[str]) -> None:
        """Delete the collections ``names`` (missing ones are fine)."""
        ...

    def close(self) -> None:
        """Release the connections, open files and threads the index holds (the store's end); safe to call
        twice. A long-lived process (the MCP server, the tests) opens and closes many stores."""
        ...


# --------------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------------


class TextEncoder(Protocol):
    """Text to vectors for dense recall. Loads its model on first use."""

    model_id: str
    """Names the embedding space: vectors of encoders with different ids are not comparable."""

    def embed(self, texts: list[str]) -> Any:
        """A float32 array of shape (len(texts), dim) of unit rows; (0, dim) for no texts."""
        ...


class ImageEncoder(Protocol):
    """Images to vectors for image recall (CLIP)."""

    model_id: str
    """Names the embedding space: vectors of encoders with different ids are not comparable."""

    def embed_images(self, paths: list[Any]) -> Any:
        """A float32 array (len(paths), dim) of unit rows, (0, dim) for no paths; a bad file raises
        ImageError (one line)."""
        ...


class ImageFiles(Protocol):
    """Where the image files are kept (``adapters/image_store.py``): the user's directory (embedded), or
    the record server with a local cache of them (``remote``)."""

    dir: Path
    """The local files (a server store's private cache)."""
    remote: bool

    def store(self, records: RecordStore, path: Path) -> Any:
        """Check ``path`` is a safe image and keep it; returns ``adapters.images.ImageInfo``."""
        ...

    def keep(self, records: RecordStore, rel: str) -> None:
        """Make sure the image named by a new memory is stored where the records are."""
        ...

    def path(self, records: RecordStore, rel: str) -> Path:
        """A local file of the stored image ``rel``, fetched if need be."""
        ...

    def read(self, records: RecordStore, sha256: str) -> tuple[str, bytes] | None:
        """(extension, bytes) of a stored image, or None."""
        ...

    def put(self, records: RecordStore, sha256: str, ext: str, data: bytes) -> str:
        """Store image bytes already checked; returns the ``rel`` path."""
        ...

    def erase(self, records: RecordStore, sha256: str) -> None:
        """Shred a stored image's file (and its database row on a server)."""
        ...

    def shas(self, records: RecordStore) -> set[str]:
        """The digests of the stored images."""
        ...

    def prune(self, records: RecordStore) -> int:
        """Drop cached copies of images erased on another machine; how many."""
        ...


# --------------------------------------------------------------------------------------------------
# The portable archive (``memory export``/``import``, ``profile export --archive``/``import``)
# --------------------------------------------------------------------------------------------------


class ArchiveContents(Protocol):
    """What an export gathers (``core/transfer.py``), for :meth:`ArchiveFormat.write` to lay out."""

    user: str
    memories: builtins.list[Memory]
    """Every memory, superseded versions included."""
    personality: dict[str, Any]
    """``state``, ``updates``, ``history``, ``evidence``."""
    state: dict[str, Any]
    """``consolidated``."""
    images: dict[str, Path | bytes]
    """Image file name (``<sha256>.<ext>``) -> the file, or its bytes (a server store)."""
    models: dict[str, str] | None
    """The embedding models named in the manifest (None: the defaults)."""


class CheckedArchive(Protocol):
    """An archive read and checked whole by :meth:`ArchiveFormat.read`: nothing of it is written yet."""

    memories: builtins.list[Memory]
    personality: dict[str, Any]
    state: dict[str, Any]

    @property
    def manifest(self) -> dict[str, Any]:
        """What the archive says of itself (format, version, user, counts, the sha256 of every file)."""
        ...

    @property
    def images(self) -> builtins.list[str]:
        """The image files it carries, by name (``<sha256>.<ext>``)."""
        ...

    def check_links(self, known: set[str]) -> None:
        """PersonaError when a memory's successor is neither in the archive nor among ``known`` ids."""
        ...

    def copy_images(self, files: builtins.list[tuple[Path, str]],
                    progress: Callable[[str, int, int], None] | None = None) -> None:
        """Write these image files (destination, image file name) out of the archive, each checked
        again against its sha256 as it is written."""
        ...


class ArchiveFormat(Protocol):
    """The archive's file format (today a versioned zip, ``adapters/archive.py``). Every problem with an
    archive is one PersonaError line; a full disk is ``DiskFullError``."""

    def read(self, file: Path, progress: Callable[[str, int, int], None] | None = None) -> CheckedArchive:
        """Read and check all of ``file`` (sizes, sha256, every member), writing nothing."""
        ...

    def write(self, file: Path, contents: ArchiveContents, progress: Callable[[int, int], None] | None = None
              ) -> dict[str, Any]:
        """Write ``contents`` to ``file`` (new, or a regular file replaced whole once complete); the manifest."""
        ...
