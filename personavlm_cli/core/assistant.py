"""One user's assistant: takes a message, keeps the timeline, reasons, answers, queues the updates.

The user's turn (and its images) is stored before generation starts and the assistant's as soon
as the answer ends, so a kill loses at most the answer being generated. Updates are queued after
the answer, never before it.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from personavlm_cli.core import personality as pem
from personavlm_cli.core.gate import ModelGate
from personavlm_cli.core.memory import Memory, MemoryType, new_id
from personavlm_cli.core.ports import ChatModel
from personavlm_cli.core.prompts import PROFILES, Context
from personavlm_cli.core.recall import Hit, Query, recall
from personavlm_cli.core.response_stage import Reasoning
from personavlm_cli.core.store import MemoryStore, new_memory
from personavlm_cli.core.update_queue import UpdateQueue


@dataclass
class Exchange:
    """One message and its answer, as the CLI shows and `/why` explains it."""

    user_turn: Memory
    images: list[Memory] = field(default_factory=list)
    reasoning: Reasoning | None = None
    answer: str = ""
    assistant_turn: Memory | None = None
    interrupted: bool = False
    new_session: bool = False
    turns_left_out: int = 0  # older turns of the session that no longer fit in the context
    prompt: list[dict[str, Any]] = field(default_factory=list)  # the final answer prompt (messages), for /why and benches


NOT_ANSWERS = ("", "(the model gave no answer)")


class Assistant:
    def __init__(self, store: MemoryStore, model: ChatModel, user: str, *, profile: str = "generic",
                 session_gap_minutes: int = 60, recent_turns: int = 20, model_lock: ModelGate | None = None,
                 vision: bool = False, mode: str = "retrieve-first", model_search: bool = True,
                 answer_tokens: int = 512, prompt_style: str = "full"):
        self.store = store
        self.model = model
        self.user = user
        self.profile = PROFILES[profile](style=prompt_style)
        self.gap = timedelta(minutes=session_gap_minutes)
        self.recent_turns = recent_turns
        self.model_lock = model_lock or ModelGate()
        self.vision = vision
        self.personality_override: dict[str, float] | None = None
        self.last: Exchange | None = None
        self.mode = mode
        self.model_search = model_search
        self.answer_tokens = answer_tokens
        # What the system text says about the user is read once per session: facts learnt during the
        # session are in its turns already, and a system text that changed every message would make
        # llama.cpp evaluate the whole prompt again (its cache keeps the longest common prefix).
        self._session_view: tuple[str | None, dict[str, Any], list[Memory], dict[str, float]] | None = None
        # Where the recent-turn window starts (the first turn it holds), kept between messages so the
        # window moves in large steps rather than one exchange per message (see ``window``).
        self._window_start: Memory | None = None
        self._search_offered: tuple[str | None, bool] | None = None  # (session, whether the system text offers SEARCH)

    def forget_view(self) -> None:
        """Read the profile, habits and personality again for the next answer (after a forget)."""
        self._session_view = None

    # -- sessions and context ---------------------------------------------------------------------

    def last_turn(self) -> Memory | None:
        turns = self.store.records.list(types=[MemoryType.TURN], limit=1, newest_first=True)
        return turns[0] if turns else None

    def session_for(self, at: datetime) -> tuple[str, str | None]:
        """(session id for a message at ``at``, the previous session id if this one is new)."""
        last = self.last_turn()
        if last is not None and at - last.occurred <= self.gap and at >= last.occurred - self.gap:
            return cast(str, last.session_id), None  # a turn always has a session
        return f"s_{at.strftime('%Y%m%d%H%M')}_{new_id(MemoryType.TURN)[-4:]}", (last.session_id if last else None)

    def recent(self, at: datetime) -> list[Memory]:
        """The recent-turn window: turns of the last session gap, at most ``recent_turns`` of them."""
        if self.recent_turns <= 0:
            return []
        since = (at - self.gap).timestamp()
        anchor = self._window_start
        # A session longer than the gap keeps its window's first turn until the window moves, rather
        # than losing one turn per message to the clock.
        wider = anchor is not None and anchor.occurred.timestamp() < since  # so anchor is a Memory where wider
        turns = list(reversed(self.store.records.list(
            types=[MemoryType.TURN], since=cast(Memory, anchor).occurred.timestamp() if wider else since, until=at.timestamp(),
            newest_first=True, limit=self.recent_turns * 2)))
        # A blank answer or the old stand-in for none (stored before failures stored nothing) is not fed back.
        turns = [t for t in turns if t.role != "assistant" or t.text.strip() not in NOT_ANSWERS]
        if wider and (not turns or turns[-1].session_id != cast(Memory, anchor).session_id
                      or turns[-1].occurred.timestamp() < since):
            # Another session (or this message starts one: the last turn is older than the gap): the gap rules.
            turns = [m for m in turns if m.occurred.timestamp() >= since]
        return self.window(turns)

    def window(self, turns: list[Memory]) -> list[Memory]:
        """The part of ``turns`` (oldest first) the prompt shows, moved in large steps.

        llama.cpp reuses only the longest common prefix of two prompts, so a window that slid by one
        exchange per message would change the prompt's beginning every time and the whole session
        would be evaluated again for each message. The window keeps its first turn while it holds at
        most ``recent_turns`` turns; when it would hold more, it moves at once by half its size (to
        the newest ``recent_turns // 2``, starting on a user turn): one full evaluation every
        ``recent_turns // 4`` messages instead of one per message.
        """
        n = self.recent_turns
        ids = [m.id for m in turns]
        anchor = self._window_start.id if self._window_start is not None else None
        start = ids.index(anchor) if anchor in ids else None
        if start is None:
            start = max(0, len(turns) - n)
        elif len(turns) - start > n:
            start = max(start + 1, len(turns) - max(2, n // 2))
        while start < len(turns) and turns[start].role == "assistant":  # never start on an answer
            start += 1
        self._window_start = turns[start] if start < len(turns) else None
        return turns[start:]

    def context(self, message: str, at: datetime, images: list[Path], recent: list[Memory],
                current_ids: AbstractSet[str] = frozenset(), session_id: str | None = None) -> Context:
        records = self.store.records
        view = self._session_view
        if view is None or session_id is None or view[0] != session_id:
            core = records.list(types=[MemoryType.CORE])
            view = (session_id, core[-1].meta.get("facts", {}) if core else {},
                    records.list(types=[MemoryType.PROCEDURAL]),
                    # the tone follows only the traits read with confidence (core/personality.py)
                    pem.for_tone(records.get_meta("personality") or pem.initial(),
                                 (records.get_meta("personality_evidence") or {}).get("totals")))
            self._session_view = view if session_id is not None else None
        vector = dict(view[3])
        if self.personality_override:
            vector.update(self.personality_override)
        recalled_for, shown = self._recalled_in(recent)
        if self.profile.style == "compact":
            shown = set()  # a small model reads each message's own context, not the whole session
        long_term = records.has_current_besides({m.id for m in recent} | set(current_ids))
        # The system text's offer to search changes the prompt's beginning: within a session it is made
        # once there is something to search, and then kept (one change per session at most).
        offered = self._search_offered
        if offered is None or session_id is None or offered[0] != session_id:
            offered = (session_id, long_term)
        elif long_term and not offered[1]:
            offered = (session_id, True)
        self._search_offered = offered if session_id is not None else None
        return Context(user=self.user, now=at, message=message, images=images, recent=recent,
                       core=dict(view[1]), procedural=list(view[2]), personality=vector, vision=self.vision,
                       has_long_term_memory=long_term, search_offered=offered[1],
                       current_ids=set(current_ids), recalled_for=recalled_for, shown_ids=shown)

    def _recalled_in(self, recent: list[Memory]) -> tuple[dict[str, list[Memory]], set[str]]:
        """The memories each recent user turn was sent with (from its answer's reasoning record)."""
        ids_for: dict[str, list[str]] = {}
        for m in recent:
            reasoning = (m.meta or {}).get("reasoning") if m.role == "assistant" else None
            if reasoning and reasoning.get("used") and m.source_ids:
                ids_for[m.source_ids[0]] = list(reasoning["used"])
        wanted = {i for ids in ids_for.values() for i in ids}
        found = {m.id: m for m in self.store.records.get_many(wanted)} if wanted else {}
        out = {turn: [found[i] for i in ids if i in found] for turn, ids in ids_for.items()}
        return out, set(wanted)

    def fit(self, ctx: Context) -> int:
        """Leave the oldest turns of the session out of the prompt when they no longer fit the model's
        context (room is kept for the recalled memories and the answer); returns how many."""
        n_ctx = getattr(self.model, "n_ctx", 0) or 0
        count = getattr(self.model, "count_tokens", None)
        if not n_ctx or count is None:
            return 0
        answer = min(self.answer_tokens, n_ctx // 4)
        reserve = min(1024, n_ctx // 4)  # recalled memories and the chat template
        room = n_ctx - answer - reserve - count(self.profile.system(ctx)) - count(ctx.message) - 32
        keep = 0
        sizes: list[int] = []  # tokens of each kept turn, newest first
        for m in reversed(ctx.recent):
            if m.role == "user":
                n = count(self.profile.user_block(m.text, m.occurred, ctx.recalled_for.get(m.id, []), ctx.core)) + 8
            else:
                n = count(m.text) + 8
            if room - n < 0:
                break
            room -= n
            keep += 1
            sizes.append(n)
        left_out = len(ctx.recent) - keep
        if left_out:
            # Moved in a large step, as the window is (``window``): the history left uses at most half
            # of the room, so the next messages fit after it and reuse its cached prefix.
            sizes = sizes[:keep]
            used, half = sum(sizes), (sum(sizes) + room) // 2
            while sizes and used > half:
                used -= sizes.pop()
                left_out += 1
            ctx.recent = ctx.recent[left_out:]
            while ctx.recent and ctx.recent[0].role == "assistant":  # never start on an answer
                ctx.recent = ctx.recent[1:]
                left_out += 1
            self._window_start = ctx.recent[0] if ctx.recent else None
            kept = {m.id for m in ctx.recent}
            ctx.recalled_for = {k: v for k, v in ctx.recalled_for.items() if k in kept}
            ctx.shown_ids = {m.id for ms in ctx.recalled_for.values() for m in ms}
        return left_out

    def next_prefix(self, at: datetime, session_id: str | None) -> list[dict[str, Any]] | None:
        """When the next message would find the recent-turn window moved (it is full, or the context
        is), move it now and return the beginning of that message's prompt (system text and history,
        then an empty user message), for the model to evaluate while the user reads; None when the
        window stays where it is (the model's cache already holds the prompt's beginning)."""
        if self.profile.tagged:  # the paper's layout puts the history inside one message: nothing stable
            return None
        before = self._window_start.id if self._window_start is not None else None
        recent = self.recent(at)
        ctx = self.context("", at, [], recent, session_id=session_id)
        self.fit(ctx)
        after = self._window_start.id if self._window_start is not None else None
        if before is None or after == before or not ctx.recent:  # a new window: this answer's prompt began it
            return None
        messages = self.profile.answer_messages(ctx, [])
        return [*messages[:-1], {"role": "user", "content": ""}]

    # -- storing ----------------------------------------------------------------------------------

    def store_user_turn(self, text: str, at: datetime, image_paths: list[Path],
                        session_id: str | None = None) -> tuple[Exchange, str | None]:
        """Validate and copy the images, then write the turn and its image memories in one transaction
        (in ``session_id`` when given, else in the session the time gap picks)."""
        infos = [self.store.store_image(p) for p in image_paths]  # raises before anything is written
        if session_id is not None:
            last = self.last_turn()
            session, previous = session_id, (last.session_id if last and last.session_id != session_id else None)
        else:
            session, previous = self.session_for(at)
        turn = new_memory(MemoryType.TURN, text, at, role="user", session_id=session,
                          meta={"images": [i.sha256 for i in infos]} if infos else {})
        images = []
        for src, info in zip(image_paths, infos):
            rel = str(Path(info.path).relative_to(self.store.images_dir))
            images.append(new_memory(
                MemoryType.IMAGE, f"Image {Path(src).name} ({info.width}x{info.height} {info.format}) shared with the "
                f"message: {text}", at, source_ids=[turn.id], session_id=session, image_sha256=info.sha256,
                meta={"path": rel, "filename": Path(src).name, "width": info.width, "height": info.height,
                      "format": info.format}))
        self.store.add([turn, *images], embed=False)
        return Exchange(user_turn=turn, images=images, new_session=previous is not None), previous

    def store_assistant_turn(self, ex: Exchange, at: datetime) -> Memory | None:
        meta: dict[str, Any] = {"reasoning": ex.reasoning.to_dict() if ex.reasoning else None}
        if ex.interrupted:
            meta["interrupted"] = True
        turn = new_memory(MemoryType.TURN, ex.answer, max(at, ex.user_turn.occurred), role="assistant",
                          session_id=ex.user_turn.session_id, source_ids=[ex.user_turn.id], meta=meta)
        if not self.store.add([turn], embed=False, sources=[ex.user_turn.id]):
            return None  # its message was erased meanwhile (another machine's forget): no answer quoting it
        ex.assistant_turn = turn
        return turn

    # -- the exchange -----------------------------------------------------------------------------

    def prepare(self, text: str, at: datetime, image_paths: list[Path] | None = None,
                queue: UpdateQueue | None = None, session_id: str | None = None) -> tuple[Exchange, Context]:
        """Everything before the model runs: store the user's turn (and its images), then gather the
        context for the answer and fit it to the model's context window."""
        image_paths = [Path(p) for p in image_paths or []]
        recent = self.recent(at)
        ex, previous_session = self.store_user_turn(text, at, image_paths, session_id=session_id)
        if previous_session and queue is not None:
            queue.enqueue_session(previous_session)
        stored = [self.store.image_path(m.meta["path"]) for m in ex.images]
        ctx = self.context(text, at, stored, recent, {ex.user_turn.id, *(m.id for m in ex.images)},
                           session_id=ex.user_turn.session_id)
        with self.model_lock:
            ex.turns_left_out = self.fit(ctx)
        return ex, ctx

    def recall(self, query: Query, k: int) -> list[Hit]:
        return recall(self.store, query, k=k)

    def expand(self, found: list[Memory]) -> list[Memory]:
        """Episodes expand to their source turns; images bring the turn they came with."""
        out: list[Memory] = []
        for m in found:
            if m.type == MemoryType.EPISODIC:
                out.extend(self.store.records.get_many(m.source_ids))
            elif m.type == MemoryType.IMAGE:
                out.append(m)
                out.extend(self.store.records.get_many(m.source_ids))
            else:
                out.append(m)
        return list({m.id: m for m in out}.values())


def parse_at(value: str | None) -> datetime:
    from personavlm_cli.core.memory import now, parse_time

    return parse_time(value, "--at time") if value else now()

