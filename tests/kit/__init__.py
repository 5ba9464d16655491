"""The test kit: one scripted chat model, one store builder (real or with stand-in vectors), one memory
builder, and the layer rules (``tests/kit/layers.py``). Tests import what they need from here:

    from tests.kit import ScriptedModel, fake_store, memory, real_store

``tests/conftest.py`` offers the ``store`` fixture (a real store in the test's folder, closed after it).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from personavlm_cli.core.memory import Memory, MemoryType, iso, new_id

# -- the chat model ----------------------------------------------------------------------------------------------


def render(messages: list[dict]) -> list[str]:
    """A prompt as a token list: each message's role and words (a chat template in miniature), as the
    cache of ``ScriptedModel(cache=True)`` counts it."""
    tokens: list[str] = []
    for m in messages:
        content = m["content"] if isinstance(m["content"], str) else " ".join(p.get("text", "") for p in m["content"])
        tokens += [f"<{m['role']}>", *content.split(), "</>"]
    return tokens


class ScriptedModel:
    """The chat-model port (core/ports.py) with scripted answers, as llm's MockModel: ``replies`` (or
    ``enqueue``) are the next answers, streamed word by word (``by="char"``: a character at a time); every
    prompt is kept in ``prompts`` (its sampling options in ``samplings``). ``decisions`` are the next
    ``complete_json`` answers; with none left it answers a reasoning step with "answer" and any other schema
    with 3 for each property (``json``: a function of the messages and the schema answers instead, its forks'
    too; ``json_error``: any schema but a reasoning step's raises a ModelError with that text, a model that
    never gives JSON).

    Options for what a test watches:

    - failures: ``fail_after`` raises a ModelError after that many pieces of every answer;
    - a llama.cpp-like prompt cache (``cache=True``): a call reuses the longest common prefix of its prompt
      (``render``) with what the context held, and ``last_usage`` says so; ``prefill`` fills the cache without
      answering (``prefill_evaluates=False``: it keeps nothing, as a server's cache slots are their own) and
      keeps each prompt in ``prefills``. Without the cache ``prefill`` returns False;
    - a log of calls (``log``, a list shared with the model's forks): ``(name, "answer")`` for every streamed
      answer, ``(name, "job")`` for every ``complete_json``; a fork is named ``name + "-fork"``;
    - ``interrupt`` counts in ``interrupts`` and sets ``aborted`` (an Event a test's slow call can watch).
    """

    vision = False
    load_info = None
    weights_bytes = None

    def __init__(self, replies: list[str] | None = None, *, decisions: list[dict] | None = None,
                 default: str = "Fine, thanks.", by: str = "word", fail_after: int | None = None,
                 json: Callable[[list[dict], dict], Any] | None = None, json_error: str | None = None,
                 n_ctx: int = 2048, cache: bool = False, prefill_evaluates: bool = True,
                 log: list[tuple[str, str]] | None = None, name: str = "model"):
        self.replies = list(replies or [])
        self.decisions = list(decisions or [])
        self.default, self.by, self.fail_after, self.json, self.json_error = default, by, fail_after, json, json_error
        self.n_ctx = n_ctx
        self.cache: list[str] | None = [] if cache else None
        self.prefill_evaluates = prefill_evaluates
        self.log, self.name = log, name
        self.prompts: list[list[dict]] = []
        self.samplings: list[dict[str, Any]] = []
        self.prefills: list[list[dict]] = []
        self.json_calls = 0
        self.last_usage: dict = {}
        self.interrupts = 0
        self.aborted = threading.Event()
        self.closed = False

    def enqueue(self, *replies: str) -> ScriptedModel:
        self.replies.extend(replies)
        return self

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def _evaluate(self, messages: list[dict]) -> dict:
        """The prompt through the cache: its tokens, and how many of them the cache already held."""
        tokens = render(messages)
        cached = 0
        for a, b in zip(self.cache or [], tokens):
            if a != b:
                break
            cached += 1
        self.cache = tokens
        return {"prompt_tokens": len(tokens), "cached_tokens": cached}

    def stream(self, messages: list[dict], **sampling: Any) -> Iterator[str]:
        from personavlm_cli.core.errors import ModelError

        self.prompts.append(messages)
        self.samplings.append(sampling)
        if self.log is not None:
            self.log.append((self.name, "answer"))
        reply = self.replies.pop(0) if self.replies else self.default
        pieces = list(reply) if self.by == "char" else [w if i == 0 else " " + w for i, w in enumerate(reply.split(" "))]
        usage = self._evaluate(messages) if self.cache is not None else {
            "prompt_tokens": sum(len(str(m.get("content", "")).split()) for m in messages), "cached_tokens": 0}
        self.last_usage = {**usage, "completion_tokens": len(pieces)}
        for i, piece in enumerate(pieces):
            if self.fail_after is not None and i == self.fail_after:
                raise ModelError("the model stopped: out of memory")
            yield piece

    def complete(self, messages: list[dict], **sampling: Any) -> str:
        return "".join(self.stream(messages, **sampling))

    def complete_json(self, messages: list[dict], schema: dict, **kw: Any) -> Any:
        self.json_calls += 1
        if self.log is not None:
            self.log.append((self.name, "job"))
        if self.decisions:
            return self.decisions.pop(0)
        if self.json is not None:
            return self.json(messages, schema)
        properties = schema.get("properties", {})
        if "action" in properties:
            return {"think": "answer", "action": "answer", "keywords": "", "start_time": "null", "end_time": "null"}
        if self.json_error is not None:
            from personavlm_cli.core.errors import ModelError

            raise ModelError(self.json_error)
        return {t: 3 for t in properties}

    def prefill(self, messages: list[dict], stop: Callable[[], bool] | None = None) -> bool:
        if self.cache is None or not self.prefill_evaluates:
            return False
        self.prefills.append(messages)
        self._evaluate(messages)
        return True

    def fork(self) -> ScriptedModel:
        """A second model for a background thread: the same script options, its own cache, the shared log."""
        return ScriptedModel(default=self.default, by=self.by, json=self.json, json_error=self.json_error, n_ctx=self.n_ctx,
                             cache=self.cache is not None, prefill_evaluates=self.prefill_evaluates, log=self.log,
                             name=self.name + "-fork")

    def interrupt(self) -> None:
        self.interrupts += 1
        self.aborted.set()

    def close(self) -> None:
        self.closed = True


def neutral_json(messages: list[dict], schema: dict) -> dict[str, Any]:
    """JSON answers that learn nothing: Big Five all 3, no decision, nothing extracted."""
    props = schema.get("properties", {})
    if "openness" in props:
        return {t: 3 for t in props}
    if "decision" in props:
        return {"reason": "", "decision": False, "content": "", "keywords": ""}
    return {next(iter(props)): []}


def neutral(replies: list[str] | None = None) -> ScriptedModel:
    """The scripted model whose JSON answers are neutral (``neutral_json``), its forks too: replies in order,
    then "Fine, thanks."."""
    return ScriptedModel(replies, json=neutral_json)


# -- stores ------------------------------------------------------------------------------------------------------


class FakeVectors:
    """An in-memory stand-in for the vector index: what was upserted, by collection. ``server`` (a dict) makes it
    a vector server that can be switched off: while ``server["up"]`` is False every call fails as an unreachable
    server's does. A search returns the collection's first ``k`` ids (this stand-in is not for ranking)."""

    def __init__(self, server: dict[str, bool] | None = None) -> None:
        self.server = server
        self.data: dict[str, dict[str, list[float]]] = {"memories": {}, "images": {}}

    def _up(self) -> None:
        from personavlm_cli.core.errors import UnreachableError

        if self.server is not None and not self.server["up"]:
            raise UnreachableError("the vector store at http://vectors:8000 is not reachable: connection refused")

    def upsert(self, name: str, ids: list[str], vectors: list[list[float]], metadatas: Any = None,
               documents: Any = None) -> None:
        self._up()
        self.data.setdefault(name, {}).update(zip(ids, vectors))

    def delete(self, name: str, ids: list[str]) -> None:
        self._up()
        for i in ids:
            self.data.setdefault(name, {}).pop(i, None)

    def purge(self, names: Any) -> None:
        self._up()

    def query(self, name: str, vector: Any, k: int, where: Any = None) -> list[tuple[str, float]]:
        self._up()
        return [(i, 1.0) for i in list(self.data.get(name, {}))[:k]]

    def ids(self, name: str) -> set[str]:
        self._up()
        return set(self.data.get(name, {}))

    def count(self, name: str) -> int:
        self._up()
        return len(self.data.get(name, {}))

    def close(self) -> None:
        pass


class HashEncoder:
    """Text and image "embeddings" from a hash: deterministic, instant, and different for different input."""

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [[float(b) for b in hashlib.sha256(t.encode()).digest()[:8]] for t in texts]

    def embed_images(self, paths: list[Any]) -> list[list[float]]:
        return [[float(b) for b in hashlib.sha256(Path(p).read_bytes()).digest()[:8]] for p in paths]


def fake_store(path: Path, server: dict[str, bool] | None = None) -> tuple[Any, FakeVectors]:
    """A store whose records are real (SQLite, image files) and whose vectors and encoders are stand-ins: for
    tests of what is written and read, not of search. Returns the store and its vectors. ``server``: the vectors
    are a server that can be switched off (``FakeVectors``); connecting to it while it is down fails too."""
    from personavlm_cli.adapters.image_store import embedded_parts
    from personavlm_cli.core.store import MemoryStore

    path.mkdir(parents=True, exist_ok=True)
    vectors = FakeVectors(server)

    def connect() -> FakeVectors:
        vectors._up()
        return vectors

    store = MemoryStore(path, **embedded_parts(path), text_encoder=HashEncoder, image_encoder=HashEncoder,
                        vectors=connect)
    return store, vectors


_ENCODER: Any = None


def real_store(path: Path) -> Any:
    """A store with the real parts (SQLite, Chroma on disk, the ONNX text encoder, shared by every store of the
    run: it is read-only), no image encoder. The caller closes it."""
    from personavlm_cli.adapters.image_store import embedded_parts
    from personavlm_cli.adapters.text_encoder import TextEncoder
    from personavlm_cli.adapters.vectors import VectorIndex
    from personavlm_cli.core.store import MemoryStore

    global _ENCODER
    if _ENCODER is None:
        _ENCODER = TextEncoder()
    encoder = _ENCODER
    path.mkdir(parents=True, exist_ok=True)
    return MemoryStore(path, **embedded_parts(path), text_encoder=lambda: encoder, image_encoder=lambda: None,
                       vectors=lambda: VectorIndex(path=path / "chroma"))


def server_store(path: Path, database_url: str, user: str, *, vectors: Any = None, text_encoder: bool = True) -> Any:
    """A server store's real parts: the user's PostgreSQL records (``database_url``, a server the test started),
    the image cache, the shared ONNX text encoder (None with ``text_encoder=False``), and ``vectors`` (a factory;
    None: Chroma on disk under ``path``). The caller closes it."""
    from personavlm_cli.adapters.image_store import ServerImages
    from personavlm_cli.adapters.pg_records import PgRecordStore
    from personavlm_cli.adapters.text_encoder import TextEncoder
    from personavlm_cli.adapters.vectors import VectorIndex
    from personavlm_cli.core.store import MemoryStore

    global _ENCODER
    if text_encoder and _ENCODER is None:
        _ENCODER = TextEncoder()
    encoder = _ENCODER if text_encoder else None
    path.mkdir(parents=True, exist_ok=True)
    return MemoryStore(path, text_encoder=lambda: encoder, image_encoder=lambda: None,
                       vectors=vectors or (lambda: VectorIndex(path=path / "chroma")),
                       records=lambda readonly=False: PgRecordStore(database_url, user, readonly=readonly),
                       images=ServerImages(path / ServerImages.CACHE))


# -- memories ----------------------------------------------------------------------------------------------------


def memory(text: str = "I like tea.", type: str = MemoryType.SEMANTIC, at: datetime | str | None = None,
           **fields: Any) -> Memory:
    """One memory, every field but ``text`` and ``type`` defaulted: an id of its type, a fixed time (or
    ``at``), created a day later; any other field of ``Memory`` as a keyword."""
    occurred = at if isinstance(at, str) else iso(at) if at is not None else "2026-01-01T10:00:00+00:00"
    if not fields.get("id"):
        fields["id"] = new_id(type)
    fields.setdefault("created_at", "2026-01-02T00:00:00+00:00")
    return Memory(type=type, text=text, occurred_at=occurred, **fields)
