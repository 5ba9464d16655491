"""One model and one store, two users: the answer the person waits for goes before background work.

The update stage runs in a thread. Each of its jobs holds the gate in background mode for the whole
job (its store writes and its model calls), so a `/forget` or an answer never meets a half-done job.
When an answer (foreground) arrives while a job holds the gate, the gate calls its ``on_wait``
hooks: the update stage's model stops its call at the next token, the job gives the gate back and
stays queued, and the answer starts. An answer therefore waits for at most the few milliseconds of
store work in progress and one model token, not for a whole update job. Between answers, background
work takes the gate only when no answer is waiting.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class ModelGate:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._cond = threading.Condition()
        self._waiting = 0
        self._urgent = 0  # background work that goes before the others (the next prompt's prefill)
        self._holder: int | None = None  # thread id of the background holder, if any
        self._depth = 0
        self._local = threading.local()  # the open ``with gate:`` blocks of each thread
        self.on_wait: list[Callable[[], None]] = []  # called when an answer waits for background work

    @contextmanager
    def foreground(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            background_busy = self._holder is not None and self._holder != threading.get_ident()
        if background_busy:
            self._interrupt()
        try:
            self._lock.acquire()
        finally:
            with self._cond:
                self._waiting -= 1
                self._cond.notify_all()
        try:
            yield
        finally:
            self._lock.release()

    @contextmanager
    def background(self, urgent: bool = False) -> Iterator[None]:
        """Background use; ``urgent`` work (the next prompt's prefill, ``core/warmup.py``) still yields
        to answers, but the other background work yields to it as it does to an answer."""
        if not urgent:
            with self._background(lambda: self._waiting == 0 and self._urgent == 0):
                yield
            return
        with self._cond:
            self._urgent += 1
            busy = self._holder is not None and self._holder != threading.get_ident()
        if busy:
            self._interrupt()
        try:
            with self._background(lambda: self._waiting == 0):
                yield
        finally:
            with self._cond:
                self._urgent -= 1
                self._cond.notify_all()

    def yield_wanted(self) -> bool:
        """Should background work in progress stop at its next step (an answer, or urgent work, waits)?"""
        return self._waiting > 0 or self._urgent > 0

    @contextmanager
    def _background(self, free: Callable[[], bool]) -> Iterator[None]:
        me = threading.get_ident()
        if self._holder == me:  # nested: the job already holds the gate
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        while True:
            with self._cond:
                self._cond.wait_for(free)
            self._lock.acquire()
            with self._cond:
                if free():
                    self._holder = me
                    break
            self._lock.release()  # an answer arrived meanwhile: let it have the model first
        try:
            yield
        finally:
            with self._cond:
                self._holder = None
            self._lock.release()

    def hold(self) -> None:
        """An answer is on its way (a chat turn, from the message to its end): background work stops
        at its next token and does not start again until :meth:`release`, so the turn's steps (its
        store writes, recall, the answer) never wait for a job that restarted between two of them."""
        with self._cond:
            self._waiting += 1
            background_busy = self._holder is not None and self._holder != threading.get_ident()
        if background_busy:
            self._interrupt()

    def release(self) -> None:
        with self._cond:
            self._waiting = max(0, self._waiting - 1)
            self._cond.notify_all()

    def _interrupt(self) -> None:
        for hook in list(self.on_wait):
            try:
                hook()
            except Exception:  # a hook must never block an answer
                pass

    def answer_waiting(self) -> bool:
        return self._waiting > 0

    # ``with gate:`` is the foreground use.
    def __enter__(self) -> None:
        cm = self.foreground()
        self._local.__dict__.setdefault("stack", []).append(cm)
        return cm.__enter__()

    def __exit__(self, *exc: object) -> bool | None:
        suppressed: bool | None = self._local.stack.pop().__exit__(*exc)
        return suppressed
