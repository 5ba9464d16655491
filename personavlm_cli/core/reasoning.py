"""The response stage: think, then answer or retrieve; at most 3 retrievals, then a forced answer.

Retrieved memories come back into the same exchange; within one answer a memory is returned at
most once, turns already in the recent context are never returned, and an episodic hit expands
to its source turns. The loop can never end without an answer (the reference code could return
an empty string when its step cap was reached).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

from personavlm_cli.core import timewords
from personavlm_cli.core.memory import Memory
from personavlm_cli.core.prompts import MAX_RETRIEVALS, Context, Step
from personavlm_cli.core.recall import Hit, Query


@dataclass
class Reasoning:
    steps: list[Step] = field(default_factory=list)
    used: list[Memory] = field(default_factory=list)
    hits: dict[str, Hit] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"steps": [s.to_dict() for s in self.steps], "used": [m.id for m in self.used]}


class ResponseStage:
    def __init__(self, model, profile, recall: Callable[[Query, int], list[Hit]],
                 expand: Callable[[list[Memory]], list[Memory]], per_step: int = 8):
        """``recall(query, k)`` searches memory; ``expand`` turns episodes into their source turns."""
        self.model = model
        self.profile = profile
        self.recall = recall
        self.expand = expand
        self.per_step = per_step

    def think(self, ctx: Context, force_retrieve: bool = False) -> Reasoning:
        """Run the decision steps and retrievals; the answer itself is streamed by ``answer``."""
        r = Reasoning()
        seen = {m.id for m in ctx.recent} | set(ctx.current_ids)
        for index in range(MAX_RETRIEVALS + 1):
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
            if step.start_time is None and step.end_time is None:
                named = timewords.window(ctx.message, ctx.now)
                if named is not None:
                    step.start_time, step.end_time = named
                    step.think = (step.think + " " if step.think else "") + "(time window from the message)"
            query = Query(
                text=ctx.message, keywords=step.keywords or ctx.message,
                since=step.start_time.timestamp() if step.start_time else None,
                until=step.end_time.timestamp() if step.end_time else None,
                image_paths=list(ctx.images), exclude_ids=seen,
            )
            hits = self.recall(query, self.per_step)
            found = [h.memory for h in hits]
            for h in hits:
                r.hits[h.memory.id] = h
            found = [m for m in self.expand(found) if m.id not in seen]
            seen.update(m.id for m in found)
            step.retrieved = [m.id for m in found]
            step.found = found
            r.used.extend(found)
            r.steps.append(step)
        return r  # unreachable: the last iteration always answers

    def answer(self, ctx: Context, r: Reasoning, **sampling) -> Iterator[str]:
        produced = False
        for piece in self.profile.answer(self.model, ctx, r.used, steps=r.steps, **sampling):
            if piece:
                produced = True
                yield piece
        if not produced:
            # Never an empty answer: a model that produced nothing gets one plain retry.
            for piece in self.model.stream(self.profile.answer_messages(ctx, r.used), **sampling):
                produced = produced or bool(piece)
                yield piece
            if not produced:
                yield "(the model gave no answer)"
