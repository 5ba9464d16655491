"""The response stage: recall first, then the answer, streamed; the model may ask for more.

Retrieve-first (the default, ``mode="retrieve-first"``): when the user has long-term memory, hybrid
recall runs for the message before the model starts (tens of milliseconds), and its best memories
are in the answer prompt. The model's first generation is the answer itself, streamed. It may still
ask for one more search by opening its reply with ``SEARCH: keywords`` (the generic profile's
system text says how): the opening is watched while it streams, so asking costs nothing when the
model does not ask. At most ``MAX_RETRIEVALS`` searches in all, then an answer is forced; the reply
is never empty (the reference code could return an empty string when its step cap was reached): a
model that still gives nothing, or only whitespace, raises ``NoAnswer`` and no text stands in for it.

``mode="model-decides"`` keeps the paper's loop with a small model: a separate decision call (JSON
schema, or the paper's tags for ``persona-vlm``) before every answer. ``mode="force"`` recalls up
front even when the model would not need to. The ``persona-vlm`` profile gets the up-front recall as
its first retrieval round and then follows the paper's tag protocol.

Within one answer a memory is returned at most once; turns in the recent context, memories already
shown in this session's earlier prompts and the message's own turn are never returned; an episodic
hit expands to its source turns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from personavlm_cli.core import dates
from personavlm_cli.core.errors import NoAnswer
from personavlm_cli.core.learning.grounding import only_asks
from personavlm_cli.core.memory import Memory, MemoryType
from personavlm_cli.core.ports import ChatModel
from personavlm_cli.core.prompts import MAX_RETRIEVALS, SEARCH_MARK, Context, GenericProfile, Step, profile_facts
from personavlm_cli.core.recall import Hit, Query

MODES = ("retrieve-first", "model-decides", "force")
# A reply that opens with a label echoes the compact prompt's "Question: … Answer in one sentence.": the
# label is not part of the answer.
ANSWER_LABELS = ("ANSWER:", "A:")
RECALLED_TYPES = (MemoryType.SEMANTIC, MemoryType.EPISODIC, MemoryType.PROCEDURAL, MemoryType.IMAGE,
                  MemoryType.TURN)
UPFRONT_K = 10  # memories recalled before the model starts (LoCoMo dev recall@10: 0.839)
NO_ANSWER = "the model gave an empty answer (twice)"
MAX_SHOWN = 14  # at most this many memories in one prompt, after episodes expand to their turns
COMPACT_K = 10  # the compact prompt (small models): fewer memories, each message with its own


@dataclass
class Reasoning:
    steps: list[Step] = field(default_factory=list)
    used: list[Memory] = field(default_factory=list)
    hits: dict[str, Hit] = field(default_factory=dict)
    nothing_relevant: list[int] = field(default_factory=list)  # steps (0-based) whose recall found nothing
    # above the relevance floor (core/recall.py FLOOR): their prompt carries no memories rather than noise
    profile: list[str] = field(default_factory=list)  # the core profile's fields sent with the message
    # (the compact layout, which has no system text: ``prompts.profile_facts``)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [s.to_dict() for s in self.steps], "used": [m.id for m in self.used],
                **({"profile": list(self.profile)} if self.profile else {})}


class ResponseStage:
    def __init__(self, model: ChatModel, profile: GenericProfile, recall: Callable[[Query, int], list[Hit]],
                 expand: Callable[[list[Memory]], list[Memory]], per_step: int = 8, model_search: bool = True):
        """``recall(query, k)`` searches memory; ``expand`` turns episodes into their source turns."""
        self.model = model
        self.profile = profile
        self.recall = recall
        self.expand = expand
        self.per_step = per_step
        self.model_search = model_search

    # -- the whole exchange -----------------------------------------------------------------------

    def respond(self, ctx: Context, r: Reasoning, mode: str = "retrieve-first", **sampling: Any) -> Iterator[str]:
        """Stream the answer; ``r`` is filled with the steps and the memories the prompt held."""
        if mode == "model-decides" or self.profile.tagged:
            if mode != "model-decides" and (ctx.has_long_term_memory or mode == "force"):
                # The paper's format: the up-front recall is the first retrieval round of the chat.
                raw = ('<think>I should look in my memory first.</think><retrieve>"keywords": "'
                       + " ".join(ctx.message.replace('"', "'").split())[:120]
                       + '" "start_time": "null" "end_time": "null"</retrieve>')
                self._search(ctx, r, Step("retrieve", think="recalled up front for the message",
                                          keywords=ctx.message, forced=mode == "force", raw=raw), k=UPFRONT_K)
            done = self.think(ctx, force_retrieve=False, into=r)
            yield from self.answer(ctx, done, **sampling)
            return
        compact = self.profile.style == "compact"
        if compact:
            r.profile = profile_facts(ctx.core, ctx.message)
        if ctx.has_long_term_memory or mode == "force":
            self._search(ctx, r, Step("retrieve", think="recalled up front for the message", keywords=ctx.message,
                                      forced=mode == "force"), k=COMPACT_K if compact else UPFRONT_K,
                         cap=COMPACT_K if compact else MAX_SHOWN)
        yield from self._answer_or_search(ctx, r, **sampling)

    def _answer_or_search(self, ctx: Context, r: Reasoning, **sampling: Any) -> Iterator[str]:
        while True:
            searches = sum(1 for s in r.steps if s.action == "retrieve")
            may_search = self.model_search and ctx.has_long_term_memory and searches < MAX_RETRIEVALS
            stops = self.profile.stops()
            stream = self.model.stream(self.profile.answer_messages(ctx, r.used), **sampling,
                                       **cast("dict[str, Any]", {"stop": stops} if stops else {}))
            opening: str | None = ""  # the reply's first characters, held back until they are not the mark
            produced = False
            try:
                for piece in stream:
                    if opening is None:
                        if piece:
                            produced = True
                            yield piece
                        continue
                    opening += piece
                    head = opening.lstrip()
                    up = head.upper()
                    label = next((x for x in ANSWER_LABELS if up.startswith(x)), None)
                    if label is not None:  # "Answer: It is Mango." is the prompt's layout echoed: dropped
                        opening = head[len(label):]
                        head = opening.lstrip()
                        up = head.upper()
                    elif any(x.startswith(up) and x != up for x in ANSWER_LABELS):
                        continue
                    if not head or (len(up) < len(SEARCH_MARK) and SEARCH_MARK.startswith(up)):
                        continue
                    if up.startswith(SEARCH_MARK):
                        rest = head[len(SEARCH_MARK):].lstrip(" ")
                        if ("\n" in rest and rest.split("\n")[0].strip()) or len(rest) >= 100:
                            break  # the keywords are read: stop generating, search
                        continue
                    produced = True
                    yield opening
                    opening = None
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
            if opening is not None and opening.lstrip().upper().startswith(SEARCH_MARK):
                lines = opening.lstrip()[len(SEARCH_MARK):].strip().splitlines()
                keywords = lines[0].strip(" .\"'")[:120] if lines else ""
                if may_search and keywords:
                    self._search(ctx, r, Step("retrieve", think="the model asked to search memory",
                                              keywords=keywords), k=self.per_step)
                    continue
                # Past the limit (or nothing to search for): the answer is forced, without the mark.
                r.steps.append(Step("answer", think="retrieval limit reached; answering with what was found",
                                    forced=True))
                yield from self._plain_answer(ctx, r, **sampling)
                return
            if opening and opening.strip():  # a short answer that ended inside the opening
                produced = True
                yield opening
            r.steps.append(Step("answer", think="answered" + (" with recalled memories" if r.used else "")))
            if not produced:
                yield from self._plain_answer(ctx, r, **sampling)
            return

    def _plain_answer(self, ctx: Context, r: Reasoning, **sampling: Any) -> Iterator[str]:
        """Never an empty answer: one plain try without the search protocol (a line that still asks to
        search is dropped); nothing again (or only whitespace) raises ``NoAnswer``."""
        produced = False
        opening: str | None = ""
        for piece in self.model.stream(self.profile.answer_messages(ctx, r.used, search=False), **sampling):
            if opening is not None:
                opening += piece
                head = opening.lstrip()
                if len(head) < len(SEARCH_MARK) and SEARCH_MARK.startswith(head.upper()):
                    continue
                if head.upper().startswith(SEARCH_MARK):
                    if "\n" not in head:
                        continue
                    piece = head.split("\n", 1)[1].lstrip()
                else:
                    piece = opening
                opening = None
            if piece:
                produced = produced or bool(piece.strip())
                yield piece
        if opening and opening.strip() and not opening.lstrip().upper().startswith(SEARCH_MARK):
            produced = True
            yield opening
        if not produced:
            raise NoAnswer(NO_ANSWER)

    def _search(self, ctx: Context, r: Reasoning, step: Step, k: int, cap: int = MAX_SHOWN) -> None:
        named = None
        if step.start_time is None and step.end_time is None:
            named = dates.window(ctx.message, ctx.now)
            if named is not None:
                step.start_time, step.end_time = named
                step.think = (step.think + " " if step.think else "") + "(time window from the message)"
        seen = {m.id for m in ctx.recent} | set(ctx.current_ids) | set(ctx.shown_ids) | {m.id for m in r.used}
        query = Query(
            text=ctx.message, keywords=step.keywords or ctx.message,
            since=step.start_time.timestamp() if step.start_time else None,
            until=step.end_time.timestamp() if step.end_time else None,
            image_paths=list(ctx.images), exclude_ids=seen,
            types=RECALLED_TYPES,  # the core profile is in the system text already
        )
        compact = self.profile.style == "compact"
        hits = self.recall(query, k + 4)
        if not hits and named is not None:
            # "in August" may name when something will happen, not when it was said: without the
            # window, rather than with nothing.
            query.since = query.until = None
            step.start_time = step.end_time = None
            step.think += " (nothing in that window; searched without it)"
            hits = self.recall(query, k + 4)
        if not hits:
            r.nothing_relevant.append(len(r.steps))
        # The user's own earlier questions (and summaries made only of questions) tell nothing about
        # them: asked again, they would be recalled first and crowd out the answer's evidence.
        hits = [h for h in hits if not (h.memory.type in (MemoryType.TURN, MemoryType.EPISODIC) and h.memory.role != "assistant"
                                        and only_asks(h.memory.text))]
        if compact:
            # The assistant's own earlier replies are not memories of the user, and a small model takes
            # them as facts; turns of an imported transcript name their speaker and stay.
            hits = [h for h in hits if not (h.memory.type == MemoryType.TURN and h.memory.role == "assistant"
                                            and not (h.memory.meta or {}).get("speaker"))][:k]
        else:
            hits = hits[:k]
        for h in hits:
            r.hits[h.memory.id] = h
        if compact:  # an episode is shown as its own (user's words) summary, not expanded to every turn
            found = [m for m in [h.memory for h in hits] if m.id not in seen]
        else:
            found = [m for m in self.expand([h.memory for h in hits]) if m.id not in seen]
        found = list({m.id: m for m in found}.values())
        # A statement learnt from a turn says what the turn said: show it once (the learnt one is
        # current; a turn whose statement was superseded would bring the old truth back).
        # The learnt one takes the turn's place in the ranking: a newer statement stays above an older one.
        learnt = {m.text.strip(): m for m in [*found, *r.used] if m.type in (MemoryType.SEMANTIC, MemoryType.PROCEDURAL)}
        used = {m.id for m in r.used}
        placed: list[Memory] = []
        for m in found:
            twin = learnt.get(m.text.strip()) if m.type == MemoryType.TURN else None
            m = twin or m
            if m.id not in used and all(x.id != m.id for x in placed):
                placed.append(m)
        found = placed
        found = found[: max(0, cap - len(r.used))]
        step.retrieved = [m.id for m in found]
        step.found = found
        r.used.extend(found)
        r.steps.append(step)

    # -- the paper's loop: a decision call before the answer --------------------------------------

    def think(self, ctx: Context, force_retrieve: bool = False, into: Reasoning | None = None) -> Reasoning:
        """Run the decision steps and retrievals; the answer itself is streamed by ``answer``."""
        r = into if into is not None else Reasoning()
        start = sum(1 for s in r.steps if s.action == "retrieve")
        for index in range(start, MAX_RETRIEVALS + 1):
            if index == MAX_RETRIEVALS:
                step = Step("answer", think="retrieval limit reached; answering with what was found", forced=True)
            elif index == 0 and force_retrieve:
                step = Step("retrieve", think="forced retrieval", keywords=ctx.message, forced=True)
            elif not ctx.has_long_term_memory:
                step = Step("answer", think="no long-term memories yet")
            else:
                step = self.profile.decide(self.model, ctx, r.used, r.steps)
            if step.action != "retrieve":
                r.steps.append(step)
                return r
            self._search(ctx, r, step, k=self.per_step)
        return r  # unreachable: the last iteration always answers

    def answer(self, ctx: Context, r: Reasoning, **sampling: Any) -> Iterator[str]:
        produced = False
        for piece in self.profile.answer(self.model, ctx, r.used, steps=r.steps, **sampling):
            if piece:
                produced = produced or bool(piece.strip())
                yield piece
        if not produced:
            # Never an empty answer: a model that produced nothing gets one plain retry.
            for piece in self.model.stream(self.profile.answer_messages(ctx, r.used, search=False), **sampling):
                produced = produced or bool(piece.strip())
                yield piece
            if not produced:
                raise NoAnswer(NO_ANSWER)
