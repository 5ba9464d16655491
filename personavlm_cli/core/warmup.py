"""The conversation's next prefix, evaluated while the user reads.

llama.cpp reuses the longest common prefix of two prompts. The recent-turn window moves in large
steps (``Assistant.window``), and the message that comes right after a move would pay for the whole
new history. So when a turn ends and the window has to move for the next message, it is moved now,
and the new beginning of the prompt (system text and history) is evaluated into the chat model's
cache in a thread, as urgent background work: it holds the gate in background mode (``core/gate.py``),
learning jobs stop for it as they stop for an answer, and it stops between two small batches as soon
as a message is waiting, keeping what it evaluated. The next
message then pays only for its own tokens.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from personavlm_cli.core.gate import ModelGate
from personavlm_cli.core.ports import ChatModel

log = logging.getLogger("personavlm.warmup")


class PrefixWarmup:
    """One prefill of ``messages`` on ``model`` in a thread, yielding to any answer."""

    def __init__(self, model: ChatModel, gate: ModelGate, messages: list[dict[str, Any]]):
        self.model = model
        self.gate = gate
        self.messages = messages
        self.done: bool | None = None  # True: all of it is cached; False: stopped (or the backend has no cache)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="personavlm-prefill", daemon=True)

    def start(self) -> PrefixWarmup:
        self._thread.start()
        return self

    def _stopped(self) -> bool:
        return self._stop.is_set() or self.gate.answer_waiting()

    def _run(self) -> None:
        try:
            with self.gate.background(urgent=True):  # before learning jobs, after any answer
                if self._stop.is_set():
                    self.done = False
                    return
                self.done = self.model.prefill(self.messages, stop=self._stopped)
        except Exception as exc:  # a warm-up is an optimisation: it never breaks a chat
            self.done = False
            log.warning("the next prompt could not be prepared: %s: %s", type(exc).__name__, exc)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop now (at the next batch); True when the thread has ended."""
        self._stop.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()
