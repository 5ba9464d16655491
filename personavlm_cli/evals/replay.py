"""Replaying a benchmark user's history into a temporary store, and asking it questions in situ
(paper §6.4; used by Persona-MME, PERSONAMEM and the performance harness).

1. The history is written at its own timestamps with the **gold assistant replies**: the user's
   turn (and its images) and the gold reply are stored and embedded as a chat would store them, in
   the data's own sessions, and the update stage runs on them (per turn, and per session at each
   session's end), but the chat model never answers during the replay. ``update=False`` skips the
   update stage (it is slow with a small CPU model).
2. Each question is then asked at its own time through the full response stage
   (``conversation.respond``: recent context, core profile, the model's own decision to retrieve,
   recall, the streamed answer). As in the reference (``update=False`` for questions), a question
   leaves no trace: its turn and answer are erased through the store before the next one, so
   questions never see each other.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from personavlm_cli.core.assistant import Assistant, Exchange
from personavlm_cli.core.conversation import respond
from personavlm_cli.core.errors import PersonaError
from personavlm_cli.core.memory import Memory, MemoryType, parse_time
from personavlm_cli.evals.scoring import Answer
from personavlm_cli.evals.workspace import forget_exchange


@dataclass
class Turn:
    """One round of a history: the user's message (with its images) and the gold assistant reply."""

    at: datetime
    user: str
    assistant: str | None = None
    images: list[Path] = field(default_factory=list)


@dataclass
class RunSettings:
    model_factory: Callable[[], object]  # the chat model, loaded on first need
    text_encoder: object
    image_encoder: Callable | None = None  # a factory; None: no images
    update: bool = False
    force_retrieve: bool = False
    sampling: dict = field(default_factory=lambda: {"max_tokens": 64, "temperature": 0.0})
    prompt_profile: str = "generic"
    recent_turns: int = 20
    session_gap_minutes: int = 60


def parse_when(value, what: str) -> datetime:
    """The data's "YYYY-MM-DD HH:MM" (a trailing "(Weekday)" is dropped, as the reference does)."""
    text = str(value or "").split("(")[0].strip()
    if not text:
        raise PersonaError(f"{what}: no time given")
    return parse_time(text, what)


def round_stats(stats: dict) -> dict:
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in stats.items()}


def profile_facts(profile) -> dict[str, str]:
    """A profile (dict, text or anything JSON) as the core memory's flat string facts."""
    if isinstance(profile, dict):
        out = {}
        for k, v in profile.items():
            if v in (None, "", [], {}):
                continue
            value = v.strip() if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
            out[str(k).strip()[:60] or "profile"] = value
        return out
    if isinstance(profile, str):
        return {"persona": profile.strip()} if profile.strip() else {}
    if profile in (None, [], {}):
        return {}
    return {"profile": json.dumps(profile, ensure_ascii=False)}


class Replayer:
    """One benchmark user: a temporary store, the history written into it, questions asked of it."""

    def __init__(self, store, model, user: str, *, update: bool, prompt_profile: str = "generic",
                 recent_turns: int = 20, session_gap_minutes: int = 60):
        from personavlm_cli.core.update_stage import UpdateStage

        self.store = store
        self.model = model
        self.update = update
        self.assistant = Assistant(store, model, user, profile=prompt_profile, recent_turns=recent_turns,
                                   session_gap_minutes=session_gap_minutes,
                                   vision=bool(getattr(model, "vision", False)))
        self.updates = UpdateStage(store, model, user, self.assistant.model_lock, enabled=update) if update else None
        self.turns = 0
        self.update_seconds = 0.0
        self.last_time: datetime | None = None
        self.last_exchange: Exchange | None = None  # the last replayed message's Exchange (for complete_last_reply)

    # -- the history ----------------------------------------------------------------------------

    def seed_profile(self, profile, at: datetime) -> Memory | None:
        """The user's given profile as the initial core memory (paper §6.4: `profile`)."""
        from personavlm_cli.core.store import new_memory

        facts = profile_facts(profile)
        if not facts:
            return None
        text = "\n".join(f"{k}: {v}" for k, v in facts.items())
        memory = new_memory(MemoryType.CORE, text, at, meta={"facts": facts, "origin": "benchmark profile"})
        self.store.add([memory])
        return memory

    def replay_session(self, session_id: str, turns: list[Turn], progress: Callable[[], None] | None = None) -> None:
        """Store the session's turns as a chat would (gold replies), then run its update jobs."""
        pending: list[Memory] = []
        for turn in turns:
            pending.extend(self.replay_turn(session_id, turn))
            if progress is not None:
                progress()
        self.store.embed(pending)
        if turns:
            self.end_session(session_id)

    def replay_turn(self, session_id: str, turn: Turn) -> list[Memory]:
        """Store one round in ``session_id``. With the update stage, it is embedded and its turn job runs
        now (the job recalls over what is stored); returns the memories still to embed."""
        user_turn, memories, reply = self._store_turn(session_id, turn)
        self.turns += 1
        self.last_time = max(self.last_time or turn.at, turn.at)
        updates = self.updates
        if updates is None or user_turn is None:
            return memories
        self.store.embed(memories)
        self._run_update(lambda: updates.queue.enqueue_turn(user_turn, reply))
        return []

    def end_session(self, session_id: str) -> None:
        """The session's own update job (episodes, profile), as a chat runs it when a session ends."""
        updates = self.updates
        if updates is not None:
            self._run_update(lambda: updates.queue.enqueue_session(session_id))

    def _run_update(self, enqueue: Callable[[], None]) -> None:
        assert self.updates is not None, "run only with the update stage"
        t = time.perf_counter()
        enqueue()
        self.updates.run_pending()
        self.update_seconds += time.perf_counter() - t

    def _store_turn(self, session_id: str, turn: Turn) -> tuple[Memory | None, list[Memory], Memory | None]:
        from personavlm_cli.core.store import new_memory

        reply: Memory | None
        if not turn.user.strip() and not turn.images:  # a reply with no message before it
            reply = new_memory(MemoryType.TURN, (turn.assistant or "").strip(), turn.at, role="assistant",
                               session_id=session_id, meta={"reasoning": None, "gold": True})
            self.store.add([reply], embed=False)
            self.last_exchange = None
            return None, [reply], reply
        # The data's session, not the one the time gap would pick.
        ex, _previous = self.assistant.store_user_turn(turn.user, turn.at, turn.images, session_id=session_id)
        memories = [ex.user_turn, *ex.images]
        reply = None
        if turn.assistant is not None and turn.assistant.strip():
            reply = self._store_reply(ex, turn.assistant, turn.at)
            if reply is not None:  # None only when its message was erased meanwhile (another machine's forget)
                memories.append(reply)
        self.last_exchange = ex
        return ex.user_turn, memories, reply

    def _store_reply(self, ex: Exchange, text: str, at: datetime) -> Memory | None:
        ex.answer = text.strip()
        return self.assistant.store_assistant_turn(ex, at)

    def complete_last_reply(self, text: str, at: datetime) -> bool:
        """Add the gold reply to the last replayed message when a previous cut fell between the two."""
        ex = self.last_exchange
        if ex is None or ex.assistant_turn is not None or not text.strip():
            return False
        reply = self._store_reply(ex, text, at)
        self.store.embed([reply])
        updates = self.updates
        if updates is not None:
            self._run_update(lambda: updates.queue.enqueue_turn(ex.user_turn, reply))
        return True

    # -- questions -------------------------------------------------------------------------------

    def ask(self, text: str, at: datetime, *, force_retrieve: bool = False, sampling: dict | None = None) -> Answer:
        """Ask through the full response stage at ``at``; the question leaves no trace in the store."""
        t = time.perf_counter()
        pieces: list[str] = []
        error = None
        ex = None
        try:
            ex, stream = respond(self.assistant, text, at, [], force_retrieve=force_retrieve, updates=None,
                                                sampling=sampling)
            for piece in stream:
                pieces.append(piece)
        except PersonaError as exc:
            error = str(exc) or type(exc).__name__
        finally:
            seconds = time.perf_counter() - t
            forget_exchange(self.store, ex)
        r = ex.reasoning if ex is not None else None
        return Answer(text="".join(pieces).strip(), seconds=seconds,
                      retrievals=sum(1 for s in r.steps if s.action == "retrieve") if r else 0,
                      used=len(r.used) if r else 0, error=error)
