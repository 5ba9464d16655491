"""The composition root: settings, consoles, the user's store and the model, built on demand.

Commands get an ``Env`` and ask it for what they need; nothing here is built until asked, so a
listing command never imports the model runtime or the vector engine.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personavlm_cli.cli.terminal import Terminal, active
from personavlm_cli.core import users
from personavlm_cli.core.config import Settings
from personavlm_cli.core.errors import ModelError, NotFoundError
from personavlm_cli.core.gate import ModelGate


def _warn_once(terminal: Terminal, warnings) -> None:
    """Say each settings warning once in a run (a secret others can read), however many times the
    settings are loaded."""
    said = terminal.__dict__.setdefault("_warned", set())
    for warning in warnings:
        if warning not in said:
            said.add(warning)
            from personavlm_cli.cli.text import line

            terminal.err.print(line(("Warning:", "yellow"), " ", warning), soft_wrap=True)


@dataclass
class Env:
    overrides: dict[str, Any] = field(default_factory=dict)
    user_flag: str | None = None
    _settings: Settings | None = None
    _store: Any = None
    _lock: Any = None
    _model: Any = None
    _flusher: Any = None
    model_lock: ModelGate = field(default_factory=ModelGate)
    terminal: Terminal = field(default_factory=active)  # streams, tty-ness, clock of this run (cli/terminal.py)

    # -- configuration ----------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.load(self.overrides)
            _warn_once(self.terminal, self._settings.warnings)
        return self._settings

    @property
    def user(self) -> str:
        if self.user_flag is not None:
            return users.validate_name(self.user_flag)
        return users.default_name(self.settings)

    def user_dir(self, create: bool = True) -> Path:
        return users.open_user_dir(self.settings, self.user, create=create)

    # -- the store --------------------------------------------------------------------------------

    def store(self, write: bool = True, create: bool = True):
        """The user's memory store; writers take the user's lock (one writer per store)."""
        if self._store is not None:
            return self._store
        from personavlm_cli.adapters.lock import StoreLock
        from personavlm_cli.core.store import MemoryStore

        # A server store's user directory is only this machine's cache and lock: made on first use,
        # so a second machine opens a user whose records are on the server.
        known = users.user_dir(self.settings, self.user).is_dir()  # this home had the user before
        path = self.user_dir(create=create or bool(self.database_url()))
        if known:
            self.check_store_kind(path)
        if write:
            self._lock = StoreLock(path, self.user).acquire()
        s = self.settings
        try:
            self._store = MemoryStore(
                path,
                text_encoder=_text_encoder,
                image_encoder=lambda: _image_encoder(s),
                vectors=lambda: _vectors(s, path, namespace(self.user, self._store.records)),
                readonly=not write,
                records=self.record_factory(path),
                images=self.image_place(path),
            )
        except BaseException:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            raise
        return self._store

    def database_url(self) -> str | None:
        """The PostgreSQL URL of the records when they live on a server (store.kind server with
        store.database_url); None when they are the local user directory's SQLite file."""
        s = self.settings
        return s["store.database_url"] if s["store.kind"] == "server" and s["store.database_url"] else None

    def record_factory(self, path: Path | None = None):
        """``factory(readonly=False)`` of the user's record store (MemoryStore calls it again for a fork)."""
        url, user = self.database_url(), self.user
        if url:
            from personavlm_cli.adapters.pg_records import PgRecordStore

            retry = self.settings["store.retry_seconds"]
            return lambda readonly=False: PgRecordStore(url, user, readonly=readonly, retry_s=retry)
        from personavlm_cli.adapters.records import RecordStore

        path = path or self.user_dir()
        return lambda readonly=False: RecordStore(path, readonly=readonly)

    def image_place(self, path: Path):
        """Where the user's images live: files of the user directory, or the record database (with a
        private cache of files in the same place)."""
        from personavlm_cli.adapters.image_store import DirImages, ServerImages

        if self.database_url():
            return ServerImages(Path(path) / ServerImages.CACHE)
        return DirImages(Path(path) / "images")

    def records(self, readonly: bool = True, check_kind: bool = True):
        """The user's records alone (listing commands: no vectors, no model); NotFoundError if none yet."""
        if self.database_url():
            if check_kind:
                try:
                    self.check_store_kind(users.user_dir(self.settings, self.user))
                except OSError:
                    pass
            return self.record_factory(Path())(readonly=readonly)
        from personavlm_cli.adapters.records import RecordStore

        path = self.user_dir(create=False)
        if not (path / RecordStore.FILENAME).exists():
            if check_kind:
                self.check_store_kind(path)
            raise NotFoundError(f"user '{self.user}' has no memories yet")
        return RecordStore(path, readonly=readonly)

    def check_store_kind(self, path: Path) -> None:
        """A user of this home whose memories lie in the other kind of store than the home's (a migration
        of some users only, `store migrate --user`) is told so in one line, never shown an empty memory.
        (A home that never had the user starts its own store: `store migrate` refuses to mix them.)"""
        from personavlm_cli.core.errors import StoreError

        s, user = self.settings, self.user
        local = (Path(path) / "personavlm.db").exists()
        if self.database_url():
            if local:
                raise StoreError(f"user '{user}' has memories in this home's embedded store, but this home uses the "
                                 f"server store: move them with `personavlm store migrate --to server --user {user}`")
        elif s["store.database_url"] and not local and Path(path).is_dir():
            from personavlm_cli.adapters.pg_records import PgRecordStore

            try:
                PgRecordStore(s["store.database_url"], user, readonly=True, connect_timeout=5).close()
            except Exception:  # none there, or the server cannot say: nothing to tell
                return
            raise StoreError(f"user '{user}' has memories on the server store, but this home uses the embedded "
                             f"store: move them with `personavlm store migrate --to embedded --user {user}`")

    def flush_in_background(self) -> None:
        """While a chat is open: the vector outbox flushed by a daemon thread as soon as the vector server
        is back (``core/outbox.py``); only a server's vectors can be down. Stopped by ``close``, unwaited."""
        if self._store is None or self._flusher is not None or self.settings["store.kind"] != "server":
            return
        from personavlm_cli.core import outbox

        self._flusher = outbox.for_store(self._store).start()

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.stop()  # never waited for: quitting never waits
            self._flusher = None
        if self._store is not None:
            self.tell_notices()
            self._store.close()
            self._store = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._model is not None:
            self._model.close()
            self._model = None

    def tell_notices(self) -> None:
        """Print what the store has to say (the vector server down, erasures pending), once each."""
        if self._store is None:
            return
        from personavlm_cli.cli.text import line

        for notice in self._store.take_notices():
            self.terminal.err.print(line((notice, "yellow")))

    # -- the model --------------------------------------------------------------------------------

    def model_path(self) -> tuple[Path, Path | None]:
        from personavlm_cli.adapters.gguf import embedded_model_path
        from personavlm_cli.core.models import resolve

        s = self.settings
        if not s["model.path"]:
            return embedded_model_path(), (Path(s["model.mmproj"]) if s["model.mmproj"] else None)
        path, mmproj = resolve(s.locations, s["model.path"])
        if s["model.mmproj"]:
            mmproj = Path(s["model.mmproj"])
        return path, mmproj

    def model(self):
        if self._model is None:
            s = self.settings
            if s["model.kind"] == "openai-compatible":
                from personavlm_cli.adapters.remote_llm import RemoteChatModel

                if not s["model.url"]:
                    raise ModelError("model.kind is openai-compatible but model.url is not set")
                self._model = RemoteChatModel(s["model.url"], s["model.name"], n_ctx=s["model.context"] or 4096,
                                              vision=s["model.vision"], api_key=s["model.api_key"],
                                              tokenizer=s["model.path"])  # the served GGUF, if given here
            else:
                from personavlm_cli.adapters.llm import ChatModel

                path, mmproj = self.model_path()
                self._model = ChatModel(path, n_ctx=s["model.context"], gpu_layers=s["model.gpu_layers"],
                                        mmproj=mmproj, threads=s["model.threads"])
        return self._model


def _text_encoder():
    from personavlm_cli.adapters.text_encoder import TextEncoder

    return TextEncoder()


def _image_encoder(s: Settings):
    from personavlm_cli.adapters.image_encoder import ImageEncoder

    weights = s["clip.weights"]
    return ImageEncoder(weights=None if weights in (None, "none") else weights, model_name=s["clip.model"],
                        cache_dir=s.locations.cache_dir / "clip")


def namespace(user: str, records) -> str:
    """Collection-name prefix of a user's store on a shared Chroma server: user name and store id."""
    return f"u-{user}-{records.store_id()[:8]}-"


def _vectors(s: Settings, path: Path, ns: str):
    from personavlm_cli.adapters.vectors import VectorIndex

    if s["store.kind"] == "server":
        if not s["store.url"]:
            raise NotFoundError("store.kind is server but store.url is not set")
        return VectorIndex(url=s["store.url"], namespace=ns)
    return VectorIndex(path=path / "chroma")


def is_tty(stream=None) -> bool:
    stream = stream or sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def private_umask() -> None:
    """Everything this program writes is the user's private data: files 0600, directories 0700."""
    os.umask(0o077)
