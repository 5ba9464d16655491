"""The vector outbox flushed in the background (docs/deploy.md, "When the server is down").

While the vector server (Chroma) is down, new memories keep ``vector_state`` 0 and erasures queue their
vector deletions in the record store: the outbox (``core/store.py``). Without this module it is flushed
by the next write or command that finds the server back. :class:`OutboxFlusher` is a daemon thread,
started while a chat or ``personavlm mcp`` is open, that does it without the user doing anything:

* it sleeps while the server answers (it only looks at a flag, ``watching()``, twice a second);
* once a call found the server down, it calls ``step()`` with backoff (1 s doubling to 10 s, the
  gate's own retry time): ``step()`` asks the server now and, if it answers, writes every waiting
  vector and finishes every queued erasure (claimed: several processes flushing one user's outbox never
  run the same erasure, and a vector written for a memory erased meanwhile is deleted again);
* it stops at ``stop()`` without being waited for: quitting never waits for it (a step cut short by
  the end of the process leaves the outbox as it was, and the next one finishes it).

``step()`` returns True when the outbox is flushed, False while the server is still down; any other
failure (the record database busy or away) is logged and retried with the same backoff.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from personavlm_cli.core.store import MemoryStore

log = logging.getLogger("personavlm.outbox")

FIRST_S = 1.0  # the first retry after the server was found down
MOST_S = 10.0  # the longest wait between two tries (VectorGate.retry_s)
LOOK_S = 0.5  # how often an idle flusher looks at the flag


class OutboxFlusher:
    def __init__(self, step: Callable[[], bool], watching: Callable[[], bool], *, first: float = FIRST_S,
                 most: float = MOST_S, look: float = LOOK_S, name: str = "personavlm-outbox",
                 done: Callable[[], None] | None = None):
        self._step = step
        self._watching = watching
        self._done = done
        self.first, self.most, self.look = first, most, look
        self._stop = threading.Event()
        self._kick = threading.Event()  # wakes the thread (a kick, a stop)
        self._due = False  # kicked: try even if ``watching()`` says nothing
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.flushes = 0  # steps that emptied the outbox (tests, logs)
        self.tries = 0

    def start(self) -> OutboxFlusher:
        self._thread.start()
        return self

    def kick(self) -> None:
        """The server was found down (or something waits): start trying now, from the first delay."""
        self._due = True
        self._kick.set()

    def stop(self) -> None:
        """Stop at the next wait; never waited for (the thread is a daemon)."""
        self._stop.set()
        self._kick.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` or until kicked; False once stopped."""
        self._kick.wait(seconds)
        self._kick.clear()
        return not self._stop.is_set()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            if self._done is not None:
                try:
                    self._done()
                except Exception:
                    pass

    def _loop(self) -> None:
        delay = self.first
        while not self._stop.is_set():
            try:
                due = self._due or self._watching()
            except Exception:
                due = False
            if not due:
                if not self._wait(self.look):
                    return
                delay = self.first
                continue
            if not self._wait(delay):
                return
            self._due = False
            self.tries += 1
            try:
                flushed = self._step()
            except Exception as exc:
                log.warning("the vector outbox could not be flushed now: %s", exc)
                flushed = False
            if self._stop.is_set():
                return
            if flushed:
                self.flushes += 1
                delay = self.first
            else:
                delay = min(delay * 2, self.most)


def for_store(store: MemoryStore, **timing: Any) -> OutboxFlusher:
    """The flusher of an open store (a chat's): watches its vector gate, and flushes through a fork of the
    store (its own record connection, the same gate and notices), made in the thread at its first step
    and closed when the thread ends."""
    forks: list[MemoryStore] = []

    def step() -> bool:
        if not forks:
            forks.append(store.fork())
        return bool(forks[0].flush_outbox())

    def watching() -> bool:
        return store.vectors_down is not None

    def done() -> None:
        for fork in forks:
            fork.close()

    return OutboxFlusher(step, watching, done=done, **timing)
