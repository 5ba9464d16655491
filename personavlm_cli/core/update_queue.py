"""The durable queue of the update stage's work, in the record store: enqueueing needs no model, so
the chat, `memory edit` and forgetting only queue; ``UpdateStage`` (core/update_stage.py) runs the jobs."""

from __future__ import annotations

from typing import Any

from personavlm_cli.core.memory import Memory
from personavlm_cli.core.ports import RecordStore


class UpdateQueue:
    """The durable queue of update work, in the record store: a ``turn`` job per answered message, a
    ``session`` job per finished session. Enqueueing is idempotent where it matters (one pending
    consolidation per session) and needs no model: the chat, `memory edit` and forgetting only queue;
    the worker (``UpdateStage``) runs the jobs, now in the background or later."""

    KINDS = ("turn", "session")

    def __init__(self, records: RecordStore) -> None:
        self.records = records

    def enqueue_turn(self, user_turn: Memory, assistant_turn: Memory | None) -> None:
        self.records.add_job("turn", {"user": user_turn.id,
                                      "assistant": assistant_turn.id if assistant_turn else None})

    def enqueue_session(self, session_id: str) -> None:
        if not any(j["payload"].get("session") == session_id for j in self.records.jobs(["session"])):
            self.records.add_job("session", {"session": session_id})

    def enqueue_unconsolidated(self, except_session: str | None = None) -> None:
        """Sessions with turns that no consolidation has seen yet (a kill before exit, say)."""
        done = self.records.get_meta("consolidated", {}) or {}
        for session, n in self.records.turn_counts().items():
            if session != except_session and done.get(session) != n:
                self.enqueue_session(session)

    def pending(self) -> list[dict[str, Any]]:
        return [j for j in self.records.jobs() if j["kind"] in self.KINDS]
