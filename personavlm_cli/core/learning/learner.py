"""The rules ``Learner``: learning that needs no model, written to the store. The user's own statements
and profile values (``patterns``), each kept only if the user's words support it (``grounding``), merged
with a near-duplicate, and what a change names made past (``changes``). Runs in the chat turn right after
the answer and again, idempotently, in the queued turn job (core/update_stage.py)."""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime
from typing import cast

from personavlm_cli.core import links
from personavlm_cli.core.learning import changes, grounding, patterns, profile
from personavlm_cli.core.memory import Memory, MemoryType
from personavlm_cli.core.recall import Query, recall
from personavlm_cli.core.store import MemoryStore, new_memory

log = logging.getLogger("personavlm.update")

NEAR_DUPLICATE = 0.92
_ID_PREFIX: dict[str, str] = {MemoryType.SEMANTIC: "sem", MemoryType.EPISODIC: "epi",
                             MemoryType.PROCEDURAL: "proc", MemoryType.CORE: "core"}


def stable_id(kind: str, *parts: str) -> str:
    """Ids derived from their sources, so a job re-run after a kill writes the same rows again."""
    prefix = _ID_PREFIX[kind]
    return f"{prefix}_{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:10]}"


class Learner:
    """Learning that needs no model: the user's own statements and profile values, written with
    merging of near-duplicates and supersession of what a change names. Runs in the chat turn right
    after the answer (milliseconds) and again, idempotently, in the queued turn job."""

    def __init__(self, store: MemoryStore):
        self.store = store

    def dropped(self, what: str, text: str) -> None:
        records = self.store.records
        records.set_meta("learning_dropped", int(records.get_meta("learning_dropped") or 0) + 1)
        # The log never holds memory text: forgetting could not reach it there.
        log.info("a learnt %s was not supported by the user's own words (%d words); dropped", what,
                 len(text.split()))

    def learn_turn(self, user_turn: Memory) -> list[Memory]:
        """Learn from one user message by rules: its statements about the user, and profile values.

        Ids derived from the turn (and the ``learnt:`` mark) make a second run after a kill a no-op.
        """
        if user_turn.role != "user" or self.store.records.get_meta(f"learnt:{user_turn.id}"):
            return []
        people = profile.people_of(self._facts())
        learnt = patterns.learn(user_turn.text, people)
        images = [m.id for m in self.store.records.derived_from([user_turn.id]) if m.type == MemoryType.IMAGE]
        kept: list[Memory] = []
        for i, st in enumerate(learnt.statements):
            if not grounding.supported(st.text, [user_turn.text]):
                self.dropped(st.kind, st.text)
                continue
            memory = new_memory(st.kind, st.text, user_turn.occurred_at, keywords=st.keywords,
                                source_ids=[user_turn.id, *images], session_id=user_turn.session_id,
                                meta={"origin": "said", **({"key": _key(st.text)} if st.kind == MemoryType.PROCEDURAL else {})})
            memory.id = stable_id(st.kind, user_turn.id, str(i))
            kept.append(self.integrate_semantic(memory, people))
        if learnt.profile:
            self.update_profile(learnt.profile, user_turn)
        self.close_past(user_turn, [st.text for st in learnt.statements], people)
        self.store.records.set_meta(f"learnt:{user_turn.id}", True)
        return kept

    def _facts(self) -> dict[str, str]:
        current = self.store.records.list(types=[MemoryType.CORE])
        return dict(current[-1].meta.get("facts", {})) if current else {}

    def close_past(self, user_turn: Memory, said: list[str], people: tuple[str, ...]) -> int:
        """What ``user_turn``'s statements make past (``learning/changes.py``): older user turns that state the
        old value are marked past, learnt memories that do are closed, and family or pets it says are
        gone leave the profile. The number of memories made past."""
        made = 0
        facts = self._facts()
        gone = [g for s in said for g in changes.gone_items(s, facts)]
        if gone:
            self._drop_profile_items(gone, user_turn)
        for sentence in said:
            kinds = (MemoryType.TURN, MemoryType.SEMANTIC, MemoryType.PROCEDURAL)
            hits = recall(self.store, Query(text=sentence, types=kinds, exclude_ids={user_turn.id}), k=12,
                          floor=None, weights=links.OFF)  # candidates: each is checked below
            seen = {h.memory.id for h in hits}
            for slot in changes.slots(sentence):  # and the older statements of the slots it fills
                more = recall(self.store, Query(text=changes.SLOT_WORDS[slot], types=kinds,
                                                exclude_ids={user_turn.id}), k=20, floor=None,
                              weights={"dense": 0.0, "keywords": 0.0, **links.OFF})
                hits += [h for h in more  # set.add in the test: each memory once (mypy: the value of a None call)
                         if h.memory.id not in seen and not seen.add(h.memory.id)]  # type: ignore[func-returns-value]
            for hit in hits:
                old = hit.memory
                if old.occurred > user_turn.occurred or old.id == user_turn.id:
                    continue
                if old.type == MemoryType.TURN:
                    if old.role != "user" or (old.meta or {}).get("past"):
                        continue
                    reasons = [changes.past_reason(sentence, s, people) for s in grounding.sentences(old.text)
                               if changes.is_statement(s)]
                    reason = next((r for r in reasons if r), None)
                    if reason and changes.mark_past(old, user_turn, reason):
                        self.store.replace(old)
                        made += 1
                        # A summary that holds the old statement is past as well (what was said then).
                        for episode in self.store.records.derived_from([old.id]):
                            if episode.type == MemoryType.EPISODIC and episode.current and \
                                    changes.mark_past(episode, user_turn, reason):
                                self.store.replace(episode)
                elif old.current and user_turn.id not in old.source_ids:
                    reason = changes.past_reason(sentence, old.text, people)
                    if reason:
                        self.store.supersede(old, None, at=user_turn.occurred_at, operation="changed")
                        made += 1
        return made

    def _drop_profile_items(self, gone: list[tuple[str, str]], user_turn: Memory) -> None:
        current = self.store.records.list(types=[MemoryType.CORE])
        if not current:
            return
        old = current[-1]
        facts = dict(old.meta.get("facts", {}))
        for name, item in gone:
            items = [x for x in (facts.get(name) or "").split(", ") if x and x != item]
            if items:
                facts[name] = ", ".join(items)
            else:
                facts.pop(name, None)
        sources = {k: v for k, v in (old.meta.get("sources") or {}).items() if k in facts}
        text = profile.profile_text(facts)
        memory = new_memory(MemoryType.CORE, text, user_turn.occurred_at,
                            source_ids=list(dict.fromkeys(sources.values())) + [old.id],
                            session_id=user_turn.session_id,
                            meta={"facts": facts, "sources": sources, "gone": [item for _n, item in gone]})
        memory.id = stable_id(MemoryType.CORE, text, user_turn.id, "gone")
        if self.store.records.get(memory.id) is None:
            self.store.supersede(old, memory, at=user_turn.occurred_at)

    def update_profile(self, values: dict[str, str], user_turn: Memory) -> Memory | None:
        """Apply schema values said in ``user_turn`` to the core profile (a new version if it changes)."""
        good = {k: v for k, v in values.items() if k in profile.FIELDS and grounding.supported(v, [user_turn.text])}
        for k in set(values) - set(good):
            self.dropped(f"profile value {k}", values[k])
        if not good:
            return None
        current = self.store.records.list(types=[MemoryType.CORE])
        old = current[-1] if current else None
        facts = dict(old.meta.get("facts", {})) if old else {}
        sources = dict(old.meta.get("sources", {})) if old else {}
        updated, sources = profile.merge_profile(facts, sources, good, user_turn.id)
        if old is not None and updated == facts:
            return None
        text = profile.profile_text(updated)
        memory = new_memory(MemoryType.CORE, text, user_turn.occurred_at,
                            source_ids=list(dict.fromkeys(sources.values())) + ([old.id] if old else []),
                            session_id=user_turn.session_id, meta={"facts": updated, "sources": sources})
        memory.id = stable_id(MemoryType.CORE, text, user_turn.id)
        if self.store.records.get(memory.id):
            return None
        if old is not None:
            self.store.supersede(old, memory, at=user_turn.occurred_at)
        else:
            self.store.add([memory])
        return memory

    def integrate_semantic(self, memory: Memory, people: tuple[str, ...] | None = None) -> Memory:
        """Add a learnt statement without pile-up: merge a near-duplicate, supersede what it changes.

        A statement that announces a change ("I switched from Sprite to Coke") closes every current
        semantic or procedural memory that names what changed, whichever way each was learnt.
        """
        records = self.store.records
        if records.get(memory.id) is not None:
            return cast(Memory, records.get(memory.id))  # there a moment ago
        kinds = (MemoryType.SEMANTIC, MemoryType.PROCEDURAL)
        hits = recall(self.store, Query(text=memory.text, types=kinds), k=8, floor=None)  # checked below
        for hit in hits:
            old = hit.memory
            similarity = hit.signals.get("dense", {}).get("score", 0.0)
            if similarity >= NEAR_DUPLICATE and old.type == memory.type:
                old.source_ids = list(dict.fromkeys(old.source_ids + memory.source_ids))
                old.meta.setdefault("merged", []).append({"at": memory.occurred_at, "text": memory.text})
                self.store.replace(old)
                return old
        if people is None:
            people = profile.people_of(self._facts())
        replaced = [h.memory for h in hits if h.memory.occurred <= memory.occurred
                    and (patterns.changes_what(memory.text, h.memory.text)
                         or changes.past_reason(memory.text, h.memory.text, people))]
        if not replaced:
            self.store.add([memory])
            return memory
        memory.meta["supersedes"] = replaced[0].id if len(replaced) == 1 else [m.id for m in replaced]
        self.store.supersede(replaced[0], memory, at=memory.occurred_at)
        for old in replaced[1:]:
            with records.transaction():
                records.supersede(old.id, memory.id, memory.occurred_at)
            old.valid_to, old.superseded_by = memory.occurred_at, memory.id
            self.store.embed([old])
        return memory

    def remember(self, text: str, at: datetime, session_id: str | None) -> tuple[Memory, bool]:
        """What the user asked to remember, in their words (``/remember``): merged or superseding like
        any learnt statement, and profile values said in it applied. (The memory kept, whether it is new.)"""
        memory = new_memory(MemoryType.SEMANTIC, text, at, keywords=grounding.keywords_of(text), session_id=session_id,
                            meta={"origin": "/remember"})
        kept = self.integrate_semantic(memory)
        if kept.id == memory.id:
            self.update_profile(patterns.profile_of(text), memory)  # "my name is ..." and the like
        return kept, kept.id == memory.id


def _key(text: str) -> str:
    return "_".join(sorted(grounding.content_words(text))[:4])[:40] or "habit"
