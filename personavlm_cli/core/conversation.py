"""A chat, turn by turn: the use case the CLI drives, from the user's Enter to the queued update.

``Conversation.send`` owns one turn: the message is cut to what the context allows, stored with
its images in the right session, the context is gathered and fitted, recall and the response stage
run, and the answer streams. The caller shows the pieces and ends the turn explicitly, with
``finish()`` or ``interrupt()`` (Ctrl-C: the partial answer is kept, marked); only then is the
assistant's turn stored, the turn embedded, learnt from by rules, and its model work queued. A turn
used as a context manager is interrupted if the block raises and finished otherwise, so no path
leaves a turn half-stored.

A model that fails (unreachable, refused, timed out, an empty or whitespace-only answer) poisons
nothing: the turn records the error (``Turn.failure``), the user's message is kept (stored, embedded,
learnt from, queued), and no assistant turn is stored, so nothing of the failure is fed back into a
later prompt. Text the user already saw when a model failed mid-answer is kept, marked interrupted,
as a Ctrl-C keeps it; a turn with no text is never stored.

``open()`` and ``close()`` frame a chat: the background worker that drains the queue while the
user reads and types, and what is left for next time. Nothing here prints: the CLI words what the
turn reports (``TurnStats``, the notices' figures).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from personavlm_cli.core.assistant import Assistant, Exchange
from personavlm_cli.core.background import BackgroundUpdates
from personavlm_cli.core.errors import ModelInterrupted, NoAnswer, PersonaError
from personavlm_cli.core.gate import ModelGate
from personavlm_cli.core.learning.learner import Learner
from personavlm_cli.core.memory import Memory, now, prompt_time
from personavlm_cli.core.ports import ChatModel
from personavlm_cli.core.prompts import Context
from personavlm_cli.core.response_stage import Reasoning, ResponseStage
from personavlm_cli.core.update_queue import UpdateQueue
from personavlm_cli.core.update_stage import UpdateStage
from personavlm_cli.core.warmup import PrefixWarmup


@dataclass
class TurnStats:
    answer_tokens: int | None
    seconds: float
    first_token_s: float
    tokens_per_s: float | None
    context_used: int | None
    context: int
    prompt_tokens: int | None
    cached_tokens: int | None
    recalled: int
    interrupted: bool
    turns_left_out: int
    session: str
    time: str
    failed: str | None = None  # the model's failure, when no answer was stored


@dataclass
class Trimmed:
    """The message was longer than the context allows: only its first ``kept`` tokens were sent and stored."""

    tokens: int
    kept: int
    cut_bytes: int = 0  # the message's size in bytes when it was cut by bytes before tokenizing (else 0)


# The most bytes of a message tokenized per token of budget: a longer message is cut by bytes first, so a
# 50 MB line is never tokenized whole (no tokenizer makes tokens of 32 bytes of text in ordinary use).
BYTES_PER_TOKEN = 32


class Turn:
    """One message in flight. Iterate it for the answer's pieces, then ``finish()`` or ``interrupt()``."""

    def __init__(self, assistant: Assistant, ex: Exchange, ctx: Context, pieces: Generator[str, None, None],
                 at: datetime, *,
                 queue: UpdateQueue | None, learner: Learner | None, started: float,
                 trimmed: Trimmed | None = None):
        self.assistant = assistant
        self.exchange = ex
        self.context = ctx
        self.trimmed = trimmed
        self.images_unseen = bool(ex.images) and not assistant.vision
        self._pieces = pieces
        self._at = at
        self._queue = queue
        self._learner = learner
        self._shown: list[str] = []
        self._started = started
        self._first: float | None = None
        self.stats: TurnStats | None = None
        self.failure: PersonaError | None = None  # the model failed: no answer is stored

        self._held: ModelGate | None = None  # held from the message to the turn's end (``Conversation.send``)

    @property
    def turns_left_out(self) -> int:
        return self.exchange.turns_left_out

    @property
    def done(self) -> bool:
        return self.stats is not None

    def __iter__(self) -> Iterator[str]:
        try:
            for piece in self._pieces:
                if self._first is None:
                    self._first = time.perf_counter()
                yield piece
                # Kept once the caller asks for the next piece, i.e. once it has shown this one: a Ctrl-C
                # while a piece is shown keeps no more than the user saw.
                self._shown.append(piece)
        except ModelInterrupted:
            raise
        except PersonaError as exc:  # the model failed: nothing of it is stored (see _end)
            self.failure = exc
            raise
        if not "".join(self._shown).strip():  # whatever the response stage did, never store a blank
            self.failure = NoAnswer("the model gave an empty answer")
            raise self.failure

    def finish(self) -> TurnStats:
        """The answer ended (or the caller stops reading it): store it, learn, queue."""
        return self._end(interrupted=False)

    def interrupt(self) -> TurnStats:
        """Ctrl-C or an error cut the answer: the partial answer is stored, marked as interrupted."""
        return self._end(interrupted=True)

    def __enter__(self) -> Turn:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.done:
            self._end(interrupted=exc_type is not None)

    def _end(self, interrupted: bool) -> TurnStats:
        if self.stats is not None:
            return self.stats
        end = time.perf_counter()
        self._pieces.close()  # the model stops and the gate is given back
        a, ex = self.assistant, self.exchange
        ex.interrupted = interrupted
        ex.prompt = a.profile.answer_messages(self.context, cast(Reasoning, ex.reasoning).used)  # set by begin
        ex.answer = "".join(self._shown).strip()
        try:
            # Only text the user saw is stored as said: never a blank, never a stand-in for a failure.
            reply = a.store_assistant_turn(ex, self._at) if ex.answer else None
            # The message's own vectors are written after the answer: this answer's recall leaves the
            # message out anyway, and its text vector is the query's, cached by the encoder. A kill
            # before this point leaves them unembedded; the next start embeds them.
            with a.model_lock:
                a.store.embed([ex.user_turn, *ex.images, *([reply] if reply else [])])
            if self._learner is not None:
                self._learner.learn_turn(ex.user_turn)
            if self._queue is not None and (reply is not None or self.failure is not None):
                self._queue.enqueue_turn(ex.user_turn, reply)  # a failed turn: the message alone
        finally:
            a.personality_override = None  # an override holds for the next answer only
            self.stats = self._stats(end)
            if self._held is not None:
                # mypy reads the pair left to right (self._held None, then held): the cast says what Python does
                self._held, held = None, cast(ModelGate, self._held)
                held.release()  # background work may go on
        return self.stats

    def _stats(self, end: float) -> TurnStats:
        model, ex = self.assistant.model, self.exchange
        usage = dict(model.last_usage or {})
        tokens = usage.get("completion_tokens")
        if tokens is None and ex.answer:
            try:
                with self.assistant.model_lock:
                    tokens = model.count_tokens(ex.answer)
            except PersonaError:  # stats never break a chat
                tokens = None
        first = self._first or end
        gen_s = end - first
        prompt = usage.get("prompt_tokens")
        return TurnStats(
            answer_tokens=tokens, seconds=round(end - self._started, 2),
            first_token_s=round(first - self._started, 3),
            tokens_per_s=round(tokens / gen_s, 1) if tokens and gen_s > 0.05 else None,
            context_used=(prompt + (tokens or 0)) if prompt is not None else None, context=model.n_ctx,
            prompt_tokens=prompt, cached_tokens=usage.get("cached_tokens"),
            recalled=len(ex.reasoning.used) if ex.reasoning else 0, interrupted=ex.interrupted,
            turns_left_out=ex.turns_left_out, session=cast(str, ex.user_turn.session_id),  # a turn has one
            time=prompt_time(ex.user_turn.occurred), failed=str(self.failure) if self.failure else None)


@dataclass
class Closing:
    """What a chat leaves when it ends: updates still queued, and a background failure if one happened."""

    pending: int
    error: str | None = None


@dataclass
class Conversation:
    """One chat with the assistant; ``learn`` False is ``--no-update`` (nothing learnt, nothing queued)."""

    assistant: Assistant
    learn: bool = True
    extractor: str = "rules"
    sampling: dict[str, Any] = field(default_factory=dict)
    force_retrieve: bool = False
    clock: Callable[[], datetime] = now
    totals: dict[str, float] = field(default_factory=lambda: {"answers": 0, "tokens": 0, "seconds": 0.0})

    def __post_init__(self) -> None:
        store = self.assistant.store
        self.queue = UpdateQueue(store.records)
        self.learner = Learner(store)
        self.background: BackgroundUpdates | None = None
        self._worker_model: ChatModel | None = None
        self._answered = threading.Event()  # this chat's first answer has ended: pending work may start
        self.last: Turn | None = None
        self.warmup: PrefixWarmup | None = None  # the next prompt's beginning, evaluated while the user reads

    # -- a chat's frame -----------------------------------------------------------------------------

    def open(self, worker_model: ChatModel | None = None) -> None:
        """Queue what earlier chats left unconsolidated and start the background worker on
        ``worker_model`` (the update thread's own model context, loaded by the caller). The worker
        starts no job before the chat's first answer has ended (``ended``): work left by an earlier
        chat never runs beside the first message, which finds the model, the store and the CPU free."""
        if not self.learn:
            return
        current, _ = self.assistant.session_for(self.clock())
        self.queue.enqueue_unconsolidated(except_session=current)
        if worker_model is None:
            return
        a = self.assistant
        self._worker_model = worker_model
        a.model_lock.on_wait.append(worker_model.interrupt)
        self._answered = threading.Event()
        self.background = BackgroundUpdates(
            lambda: UpdateStage(a.store.fork(), worker_model, a.user, a.model_lock, extractor=self.extractor),
            after=self._answered).start()
        self.background.poke()

    def close(self, consolidate: bool) -> Closing:
        """End the chat at once, whatever learning is pending: the queue is durable, and the next
        chat's worker (or `memory update`) finishes it."""
        error = None
        stopped = True
        if self.warmup is not None:
            self.warmup.stop()
            self.warmup = None
        if self.background is not None:
            stopped = self.background.stop()
            if self.background.error is not None:
                error = f"{type(self.background.error).__name__}: {self.background.error}"
            self.background = None
        if self._worker_model is not None and self._worker_model is not self.assistant.model and stopped:
            self._worker_model.close()
        self._worker_model = None
        if not self.learn:
            return Closing(0, error)
        if consolidate:
            last = self.assistant.last_turn()
            if last is not None:
                self.queue.enqueue_session(cast(str, last.session_id))  # a turn has a session
        return Closing(len(self.queue.pending()), error)

    def learning_status(self) -> tuple[int, int]:
        """(updates pending, learnt statements dropped so far for want of the user's own words)."""
        records = self.assistant.store.records
        return len(self.queue.pending()), int(records.get_meta("learning_dropped") or 0)

    # -- a turn -------------------------------------------------------------------------------------

    def send(self, text: str, images: list[Path] | None = None, at: datetime | None = None,
             session_id: str | None = None) -> Turn:
        """Start one turn: the user's message (and images) is stored before this returns; iterate the
        turn for the answer and end it with ``finish()`` or ``interrupt()``. ``session_id`` puts the
        turn in a given session (a replayed conversation) instead of the one the time gap picks."""
        started = time.perf_counter()
        a = self.assistant
        at = at or self.clock()
        gate = a.model_lock
        gate.hold()  # answers first: background work yields now and waits until this turn ends
        try:
            text, trimmed = self._fit_message(text)
            turn = begin(a, text, at, images or [], queue=self.queue if self.learn else None,
                         learner=self.learner if self.learn else None, sampling=self.sampling,
                         mode="force" if self.force_retrieve else None, session_id=session_id, started=started,
                         trimmed=trimmed)
        except BaseException:
            gate.release()
            raise
        turn._held = gate
        self.last = turn
        return turn

    def ended(self, turn: Turn) -> None:
        """Count a finished turn into the chat's totals and let the worker go on."""
        st = turn.stats
        if st is not None:
            self.totals["answers"] += 1
            self.totals["tokens"] += st.answer_tokens or 0
            self.totals["seconds"] += st.seconds
            self._prepare_next(turn)
        self._answered.set()
        if self.background is not None:
            self.background.poke()

    def _prepare_next(self, turn: Turn) -> None:
        """If the next message would find the recent-turn window moved, move it now and let the model
        evaluate the new prompt's beginning while the user reads (``core/warmup.py``)."""
        if self.warmup is not None:
            self.warmup.stop()  # a previous one still at work: its prefix is out of date
            self.warmup = None
        try:
            messages = self.assistant.next_prefix(self.clock(), turn.exchange.user_turn.session_id)
        except PersonaError:
            return
        if messages is not None:
            self.warmup = PrefixWarmup(self.assistant.model, self.assistant.model_lock, messages).start()

    def _fit_message(self, text: str) -> tuple[str, Trimmed | None]:
        """A message longer than half the context is cut to its first tokens (what is stored is what was sent)."""
        model = self.assistant.model
        budget = max(256, model.n_ctx // 2)
        text, cut_bytes = _cut_bytes(text, budget * BYTES_PER_TOKEN)
        with self.assistant.model_lock:  # the update thread may be using the model
            n = model.count_tokens(text)
            if n <= budget:
                return text, Trimmed(n, n, cut_bytes) if cut_bytes else None
            lo, hi = 0, len(text)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if model.count_tokens(text[:mid]) <= budget:
                    lo = mid
                else:
                    hi = mid - 1
        return text[:lo], Trimmed(n, budget, cut_bytes)

    def remember(self, text: str) -> tuple[Memory, bool]:
        """``/remember``: the text as a memory of this session (if one is open), merged or superseding;
        (the memory kept, whether it is new)."""
        a = self.assistant
        at = self.clock()
        session: str | None
        session, _ = a.session_for(at)
        last = a.last_turn()
        if last is None or last.session_id != session:
            session = None
        with a.model_lock:
            return self.learner.remember(text, at, session)


def _cut_bytes(text: str, limit: int) -> tuple[str, int]:
    """``text`` cut to at most ``limit`` bytes of UTF-8 (on a character boundary), and its size in bytes
    when it was cut (0 when it fits)."""
    if len(text) <= limit // 4:
        return text, 0
    size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    if size <= limit:
        return text, 0
    head = text[:limit].encode("utf-8", "surrogatepass")[:limit]
    return head.decode("utf-8", "ignore"), size


def begin(assistant: Assistant, text: str, at: datetime, images: list[Path], *, queue: UpdateQueue | None,
          learner: Learner | None, sampling: dict[str, Any] | None = None, mode: str | None = None,
          session_id: str | None = None, started: float | None = None, trimmed: Trimmed | None = None) -> Turn:
    """Store the user's turn, gather and fit the context, and start the response stage (lazily: the
    model runs when the turn is iterated)."""
    started = time.perf_counter() if started is None else started
    a = assistant
    ex, ctx = a.prepare(text, at, images, queue=queue, session_id=session_id)
    stage = ResponseStage(a.model, a.profile, a.recall, a.expand,
                          model_search=a.model_search and a.profile.style == "full")
    a.last = ex
    ex.reasoning = Reasoning()
    mode = mode or a.mode

    def pieces() -> Generator[str, None, None]:
        with a.model_lock:
            yield from stage.respond(ctx, cast(Reasoning, ex.reasoning), mode=mode, **dict(sampling or {}))

    return Turn(a, ex, ctx, pieces(), at, queue=queue, learner=learner, started=started, trimmed=trimmed)


def respond(assistant: Assistant, text: str, at: datetime, image_paths: list[Path] | None = None,
            force_retrieve: bool = False, updates: UpdateStage | None = None,
            sampling: dict[str, Any] | None = None, mode: str | None = None,
            session_id: str | None = None) -> tuple[Exchange, Iterator[str]]:
    """One turn as a generator, for the evaluations: the chat's own ``Turn`` (``begin``), driven to its end: the
    user's turn is stored now; the generator streams the answer and ends the turn when it ends,
    or as interrupted when the consumer stops it early or an error cuts it. An empty answer
    (``NoAnswer``) ends the stream with no pieces and nothing stored: a replay goes on."""
    learn = updates is not None and updates.enabled
    turn = begin(assistant, text, at, list(image_paths or []), queue=updates.queue if updates is not None else None,
                 learner=cast(UpdateStage, updates).learner if learn else None, sampling=sampling,
                 mode="force" if force_retrieve else mode, session_id=session_id)

    def stream() -> Iterator[str]:
        try:
            yield from turn
        except NoAnswer:
            turn.interrupt()  # the user's message stays; no answer is stored
            return
        except (KeyboardInterrupt, GeneratorExit, PersonaError):
            turn.interrupt()
            raise
        finally:
            turn.finish()  # a no-op once interrupted

    return turn.exchange, stream()
