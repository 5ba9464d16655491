"""The update stage's thread: it drains the job queue while the user reads and types."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from personavlm_cli.core.update_stage import UpdateStage

log = logging.getLogger("personavlm.update")


class BackgroundUpdates:
    """A thread that drains the job queue while the user reads and types.

    ``stop()`` returns within about a second whatever is pending: the job in progress is interrupted
    at its model's next token and stays queued (jobs are durable and idempotent). A failure in the
    thread is kept in ``error`` and logged; the queue keeps the work for next time. With ``after``,
    no job starts before that event is set (a chat's first answer has ended: ``Conversation.open``).
    """

    def __init__(self, make_stage: Callable[[], UpdateStage], after: threading.Event | None = None):
        self._make_stage = make_stage
        self._after = after
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="personavlm-update", daemon=True)
        self.error: BaseException | None = None
        self.stage: UpdateStage | None = None

    def start(self) -> BackgroundUpdates:
        self._thread.start()
        return self

    def poke(self) -> None:
        self._idle.clear()
        self._wake.set()

    def _run(self) -> None:
        stage = None
        try:
            stage = self.stage = self._make_stage()
            while not self._stop.is_set():
                self._wake.wait(0.5)
                self._wake.clear()
                if self._stop.is_set():
                    break
                if (self._after is None or self._after.is_set()) and stage.pending():
                    self._idle.clear()
                    stage.run_pending(stop=self._stop)
                self._idle.set()
        except BaseException as exc:  # reported by the CLI; the queue keeps the work
            self.error = exc
            log.error("background update stopped: %s: %s", type(exc).__name__, exc)
        finally:
            self._idle.set()
            if stage is not None:
                stage.store.records.close()

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self._idle.wait(timeout)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop now; True when the thread has ended (the job in progress stays queued)."""
        self._stop.set()
        self._wake.set()
        stage = self.stage
        if stage is not None and stage.model is not None:
            stage.model.interrupt()
        self._thread.join(timeout=timeout)
        return not self._thread.is_alive()
