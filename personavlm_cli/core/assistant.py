"""One user's assistant: takes a message, keeps the timeline, reasons, answers, queues the updates.

The user's turn (and its images) is stored before generation starts and the assistant's as soon
as the answer ends, so a kill loses at most the answer being generated. Updates are queued after
the answer, never before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterator

from personavlm_cli.core import personality as pem
from personavlm_cli.core.errors import PersonaError
from personavlm_cli.core.gate import ModelGate
from personavlm_cli.core.memory import Memory, new_id
from personavlm_cli.core.ports import ChatModel
from personavlm_cli.core.prompts import PROFILES, Context
from personavlm_cli.core.reasoning import Reasoning
from personavlm_cli.core.recall import Query, recall
from personavlm_cli.core.store import MemoryStore, new_memory
from personavlm_cli.core.update import UpdateQueue, UpdateStage


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
    prompt: list[dict] = field(default_factory=list)  # the final answer prompt (messages), for /why and benches


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
        self._session_view: tuple[str, dict, list, dict] | None = None

    # -- sessions and context ---------------------------------------------------------------------

    def last_turn(self) -> Memory | None:
        turns = self.store.records.list(types=["turn"], limit=1, newest_first=True)
        return turns[0] if turns else None

    def session_for(self, at: datetime) -> tuple[str, str | None]:
        """(session id for a message at ``at``, the previous session id if this one is new)."""
        last = self.last_turn()
        if last is not None and at - last.occurred <= self.gap and at >= last.occurred - self.gap:
            return last.session_id, None
        return f"s_{at.strftime('%Y%m%d%H%M')}_{new_id('turn')[-4:]}", (last.session_id if last else None)

    def recent(self, at: datetime) -> list[Memory]:
        since = (at - self.gap).timestamp()
        turns = self.store.records.list(types=["turn"], since=since, until=at.timestamp(), newest_first=True,
                                        limit=self.recent_turns)
        return list(reversed(turns))

    def context(self, message: str, at: datetime, images: list[Path], recent: list[Memory],
                current_ids: set[str] = frozenset(), session_id: str | None = None) -> Context:
        records = self.store.records
        view = self._session_view
        if view is None or session_id is None or view[0] != session_id:
            core = records.list(types=["core"])
            view = (session_id, core[-1].meta.get("facts", {}) if core else {},
                    records.list(types=["procedural"]), dict(records.get_meta("personality") or pem.initial()))
            self._session_view = view if session_id is not None else None
        vector = dict(view[3])
        if self.personality_override:
            vector.update(self.personality_override)
        recalled_for, shown = self._recalled_in(recent)
        if self.profile.style == "compact":
            shown = set()  # a small model reads each message's own context, not the whole session
        return Context(user=self.user, now=at, message=message, images=images, recent=recent,
                       core=dict(view[1]), procedural=list(view[2]), personality=vector, vision=self.vision,
                       has_long_term_memory=records.has_current_besides({m.id for m in recent} | set(current_ids)),
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
        for m in reversed(ctx.recent):
            if m.role == "user":
                n = count(self.profile.user_block(m.text, m.occurred, ctx.recalled_for.get(m.id, []))) + 8
            else:
                n = count(m.text) + 8
            if room - n < 0:
                break
            room -= n
            keep += 1
        left_out = len(ctx.recent) - keep
        if left_out:
            ctx.recent = ctx.recent[left_out:]
            if ctx.recent and ctx.recent[0].role == "assistant":  # never start on an answer
                ctx.recent = ctx.recent[1:]
                left_out += 1
            kept = {m.id for m in ctx.recent}
            ctx.recalled_for = {k: v for k, v in ctx.recalled_for.items() if k in kept}
            ctx.shown_ids = {m.id for ms in ctx.recalled_for.values() for m in ms}
        return left_out

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
        turn = new_memory("turn", text, at, role="user", session_id=session,
                          meta={"images": [i.sha256 for i in infos]} if infos else {})
        images = []
        for src, info in zip(image_paths, infos):
            rel = str(Path(info.path).relative_to(self.store.images_dir))
            images.append(new_memory(
                "image", f"Image {Path(src).name} ({info.width}x{info.height} {info.format}) shared with the "
                f"message: {text}", at, source_ids=[turn.id], session_id=session, image_sha256=info.sha256,
                meta={"path": rel, "filename": Path(src).name, "width": info.width, "height": info.height,
                      "format": info.format}))
        self.store.add([turn, *images], embed=False)
        return Exchange(user_turn=turn, images=images, new_session=previous is not None), previous

    def store_assistant_turn(self, ex: Exchange, at: datetime) -> Memory | None:
        meta = {"reasoning": ex.reasoning.to_dict() if ex.reasoning else None}
        if ex.interrupted:
            meta["interrupted"] = True
        turn = new_memory("turn", ex.answer, max(at, ex.user_turn.occurred), role="assistant",
                          session_id=ex.user_turn.session_id, source_ids=[ex.user_turn.id], meta=meta)
        if not self.store.add([turn], embed=False, sources=[ex.user_turn.id]):
            return None  # its message was erased meanwhile (another machine's forget): no answer quoting it
        ex.assistant_turn = turn
        return turn

    # -- the exchange -----------------------------------------------------------------------------

    def respond(self, text: str, at: datetime, image_paths: list[Path] | None = None,
                force_retrieve: bool = False, updates: UpdateStage | None = None,
                sampling: dict | None = None, mode: str | None = None,
                session_id: str | None = None) -> tuple[Exchange, Iterator[str]]:
        """One turn as a generator (``conversation.Turn`` is the explicit form the chat uses): the
        user's turn is stored now; the generator streams the answer and ends the turn when it ends,
        or as interrupted when the consumer stops it early or an error cuts it."""
        from personavlm_cli.core.conversation import begin

        learn = updates is not None and updates.enabled
        turn = begin(self, text, at, list(image_paths or []), queue=updates.queue if updates is not None else None,
                     learner=updates.learner if learn else None, sampling=sampling,
                     mode="force" if force_retrieve else mode, session_id=session_id)

        def stream() -> Iterator[str]:
            try:
                yield from turn
            except (KeyboardInterrupt, GeneratorExit, PersonaError):
                turn.interrupt()
                raise
            finally:
                turn.finish()  # a no-op once interrupted

        return turn.exchange, stream()

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

    def recall(self, query: Query, k: int):
        return recall(self.store, query, k=k)

    def expand(self, found: list[Memory]) -> list[Memory]:
        """Episodes expand to their source turns; images bring the turn they came with."""
        out: list[Memory] = []
        for m in found:
            if m.type == "episodic":
                out.extend(self.store.records.get_many(m.source_ids))
            elif m.type == "image":
                out.append(m)
                out.extend(self.store.records.get_many(m.source_ids))
            else:
                out.append(m)
        return list({m.id: m for m in out}.values())


def parse_at(value: str | None) -> datetime:
    from personavlm_cli.core.memory import now, parse_time

    return parse_time(value, "--at time") if value else now()

