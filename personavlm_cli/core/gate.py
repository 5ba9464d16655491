"""One model, two users: the answer the person waits for goes before background updates.

The update stage runs in a thread and uses the same model as the answers. A plain lock would make
a message typed right after an answer wait for a whole update job; with this gate the update stage
takes the model only between answers, one call at a time, so a waiting answer waits for at most the
one call in progress.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager


class ModelGate:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._cond = threading.Condition()
        self._waiting = 0
        self._local = threading.local()  # the open ``with gate:`` blocks of each thread

    @contextmanager
    def foreground(self):
        with self._cond:
            self._waiting += 1
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
    def background(self):
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._waiting == 0)
            self._lock.acquire()
            with self._cond:
                if self._waiting == 0:
                    break
            self._lock.release()  # an answer arrived meanwhile: let it have the model first
        try:
            yield
        finally:
            self._lock.release()

    # ``with gate:`` is the foreground use.
    def __enter__(self):
        cm = self.foreground()
        self._local.__dict__.setdefault("stack", []).append(cm)
        return cm.__enter__()

    def __exit__(self, *exc):
        return self._local.stack.pop().__exit__(*exc)
