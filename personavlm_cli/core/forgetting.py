"""Forgetting is erasure: a memory, everything derived from it, its vectors and its image files.

By id (``plan``): derived memories (episodes, semantic memories, core and procedural versions) name
their sources in ``source_ids``. Forgetting follows those links to a fixed point, so no derived text
that could repeat the forgotten content survives. Sessions that still have turns left are queued for
consolidation again, which regenerates their episodes, habits and profile from what remains; a
version whose successor was erased becomes current again.

The use cases, each one entry that every caller uses (``memory forget``, the chat's ``/forget``,
``personavlm mcp``'s forget): :func:`forget_ids` and :func:`forget_text` plan and return a
:class:`Forgetting`, which the caller shows and confirms, then carries out with ``erase()``.

By text (``plan_text``, for ``memory forget --query`` and ``/forget TEXT``): exact and complete. What
matches is every memory that holds the words given, literally (case aside), in its text, keywords or
metadata: meaning alone never erases. Every literal occurrence goes, and nothing unrelated:

- the memories that hold the text, of every type and both roles, every version;
- what was derived from them alone: the assistant's reply to an erased message, the images shared
  with it, episodes over its session (the session is consolidated again from the turns that remain),
  a learnt statement whose every source goes;
- a memory derived from several sources, some of which remain, is kept and recomputed from those: its
  sources pruned, the merged variants that hold the text dropped;
- the core profile loses only the values that hold the text: a new version is written from the values
  that remain (each keeps its source when that survives), the versions that held the text are erased;
- a version whose successor is erased stays closed: an old truth never comes back as current.

The record store then merges its lexical index, checkpoints its write-ahead log and vacuums (free
pages are zeroed: ``secure_delete``), the vector shards that held an erased vector are rebuilt, and
the REPL's input history loses every line that holds the text: a byte search of the user's directory
finds nothing (``tests/test_forget_text.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personavlm_cli.core.errors import NotFoundError, PersonaError
from personavlm_cli.core.learning import profile as learning
from personavlm_cli.core.memory import Memory, MemoryType
from personavlm_cli.core.store import MemoryStore, new_memory
from personavlm_cli.core.update_queue import UpdateQueue
from personavlm_cli.core.update_stage import forget_personality_evidence


@dataclass
class ForgetPlan:
    targets: list[Memory]  # what the user asked to forget
    derived: list[Memory]  # what goes with it

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.targets + self.derived]


@dataclass
class Forgetting:
    """One forgetting, planned and not carried out yet: ``plan`` is what goes (shown to the user, then
    confirmed); :meth:`erase` carries it out, with the sessions that lose turns queued on ``queue``."""

    store: MemoryStore
    plan: ForgetPlan
    operation: str
    queue: UpdateQueue | None

    @property
    def nothing(self) -> bool:
        """Nothing would be erased or recomputed."""
        return not self.plan.ids and not (isinstance(self.plan, TextPlan) and self.plan.recomputed)

    def erase(self) -> list[str]:
        """Erase what the plan says (seconds on a big store: the vector index is rebuilt); the erased ids."""
        return execute(self.store, self.plan, self.operation, self.queue)


def forget_ids(store: MemoryStore, ids: list[str], *, operation: str = "forget-id",
               queue: UpdateQueue | None = None) -> Forgetting:
    """Forgetting these memories and what was derived from them (NotFoundError for an id with no memory).
    ``queue``: where the sessions that lose turns are queued for consolidation again; None: the store's
    own queue, when a turn goes."""
    wrong = [i for i in ids if not isinstance(i, str)]
    if wrong:
        raise NotFoundError(f"no memory with id '{wrong[0]}'")
    targets = store.records.get_many(list(ids))
    found = {m.id for m in targets}
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFoundError(f"no memory with id '{missing[0]}'")
    p = _plan(store, targets)
    if queue is None and any(m.type == MemoryType.TURN for m in p.targets + p.derived):
        queue = UpdateQueue(store.records)
    return Forgetting(store, p, operation, queue)


def forget_text(store: MemoryStore, text: str, *, operation: str = "forget-query",
                queue: UpdateQueue | None = None) -> Forgetting:
    """Forgetting a text, exactly and completely (``plan_text``: every memory that holds its words literally,
    what was derived from them alone, the profile values that hold them). ``queue``: where the sessions
    that lose turns are queued for consolidation again; None: the store's own queue."""
    return Forgetting(store, plan_text(store, text), operation, queue if queue is not None else UpdateQueue(store.records))


def plan(store: MemoryStore, ids: list[str]) -> ForgetPlan:
    """What forgetting these memories erases: them, and what was derived from them, to a fixed point."""
    return _plan(store, store.records.get_many(ids))


def _plan(store: MemoryStore, targets: list[Memory]) -> ForgetPlan:
    records = store.records
    doomed = {m.id for m in targets}
    # A user turn takes its images and the assistant's reply to it along.
    frontier = set(doomed)
    derived: dict[str, Memory] = {}
    while frontier:
        found = [m for m in records.derived_from(frontier) if m.id not in doomed]
        frontier = {m.id for m in found}
        for m in found:
            derived[m.id] = m
        doomed |= frontier
    return ForgetPlan(targets, list(derived.values()))


def execute(store: MemoryStore, p: ForgetPlan, operation: str, queue: UpdateQueue | None = None) -> list[str]:
    if isinstance(p, TextPlan):
        return execute_text(store, p, operation, queue)
    records = store.records
    ids = set(p.ids)
    sessions = {m.session_id for m in p.targets + p.derived if m.type == MemoryType.TURN and m.session_id}
    summaries = (MemoryType.EPISODIC, MemoryType.CORE, MemoryType.PROCEDURAL)
    sessions |= {m.session_id for m in p.derived if m.type in summaries and m.session_id}
    erased_now = {x.id: x for x in p.targets + p.derived}
    relink = [(m, _survivor(m, erased_now)) for m in records.superseded_by_any(ids) if m.id not in ids]
    scrub_input_history(store.user_dir / "input_history", [m.text for m in p.targets + p.derived])

    def revive_and_reopen() -> None:
        # A version whose successor is erased points to the next version that survives; when none does,
        # it becomes current again (or stays closed, if the erased line had been closed). The sessions
        # the erasure touched are consolidated again. All in the erasure's own transaction, so a kill
        # cannot leave one without the other.
        for m, (successor, closed) in relink:
            m.superseded_by = successor
            if successor is None and not closed:
                m.valid_to = None
            records.update(m)
        forget_personality_evidence(records, ids)  # what a forgotten message said about the user goes too
        done = records.get_meta("consolidated", {}) or {}
        for session in sessions:
            done.pop(session, None)
        records.set_meta("consolidated", done)

    erased = store.erase(p.ids, operation, before_commit=revive_and_reopen)
    if relink:  # their vectors' "current" flag may have changed (a kill here: the next start embeds them)
        store.embed([m for m, _ in relink])
    if queue is not None:
        for session in sorted(sessions):
            if records.list(types=[MemoryType.TURN], session_id=session, limit=1):
                queue.enqueue_session(session)
    return erased


def _survivor(m: Memory, erased: dict[str, Memory]) -> tuple[str | None, bool]:
    """Where ``m``'s line of versions goes once ``erased`` are gone: (the first later version that
    survives, or None; whether the line had been closed with no successor)."""
    nxt = m.superseded_by
    seen = set()
    while nxt in erased and nxt not in seen:
        seen.add(nxt)
        last = erased[nxt]
        if last.superseded_by is None:
            return None, last.valid_to is not None
        nxt = last.superseded_by
    return nxt, False


def scrub_input_history(path: Path, texts: list[str]) -> None:
    """Drop the REPL's remembered input lines that hold forgotten text (prompt_toolkit's file format:
    entries of "# time" then "+line" lines), rewriting the file so the old bytes do not linger."""
    import os

    texts = [t.strip().casefold() for t in texts if t and len(t.strip()) >= 2]
    if not texts or not path.exists():
        return
    entries: list[list[str]] = []
    current: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        if line.startswith("#") and current:
            entries.append(current)
            current = []
        current.append(line)
    if current:
        entries.append(current)
    kept = [e for e in entries
            if not any(t in "".join(x[1:] for x in e if x.startswith("+")).casefold() for t in texts)]
    if len(kept) == len(entries):
        return
    data = "".join("".join(e) for e in kept).encode("utf-8")
    size = path.stat().st_size
    with open(path, "r+b") as fh:  # overwrite in place, then cut: no copy of the old text is left
        fh.write(data + b"\0" * max(0, size - len(data)))
        fh.flush()
        os.fsync(fh.fileno())
        fh.truncate(len(data))


# -- forgetting by text -------------------------------------------------------------------------------

MIN_TEXT = 2  # characters: "forget e" would match nearly everything


def needle(text: str) -> str:
    """The text to forget as it is matched: spaces collapsed, case folded. Too short: one PersonaError."""
    words = " ".join((text or "").split())
    if len(words) < MIN_TEXT:
        raise PersonaError(f"'{words}' is too short to forget by text (at least {MIN_TEXT} characters): "
                           "give more of the words, or the memory's id")
    return words.casefold()


def holds(m: Memory, wanted: str, *, meta: bool = True) -> bool:
    """Does ``m`` hold ``wanted`` (a ``needle``) literally: in its text, keywords or (``meta``) metadata?"""
    if wanted in " ".join(m.text.split()).casefold() or wanted in " ".join(m.keywords.split()).casefold():
        return True
    if not meta or not m.meta:
        return False
    return wanted in _flat(m.meta)


def _flat(value: object) -> str:
    """Metadata as the record store keeps it (JSON, non-ASCII as is), spaces collapsed, case folded."""
    return " ".join(json.dumps(value, ensure_ascii=False).split()).casefold()


def matching(store: MemoryStore, text: str) -> list[Memory]:
    """The memories that hold ``text`` literally (case aside), every version, oldest first."""
    wanted = needle(text)
    return [m for m in store.records.list(include_superseded=True) if holds(m, wanted)]


@dataclass
class ProfileChange:
    """The core profile without the values that hold the text."""

    removed: dict[str, str]  # field -> the value (or list items) that go
    facts: dict[str, str]  # what remains
    sources: dict[str, str]


@dataclass
class TextPlan(ForgetPlan):
    """What forgetting a text does, computed before anything changes (shown, then executed)."""

    text: str = ""
    profile: ProfileChange | None = None  # the current profile's change, if it holds the text
    recomputed: list[Memory] = field(default_factory=list)  # kept, with sources pruned or variants dropped
    reopened: list[Memory] = field(default_factory=list)  # kept; their successor goes, they stay closed


def plan_text(store: MemoryStore, text: str) -> TextPlan:
    """Everything that forgetting ``text`` erases or recomputes (see the module's docstring)."""
    wanted = needle(text)
    everything = store.records.list(include_superseded=True)
    by_id = {m.id: m for m in everything}
    doomed: dict[str, Memory] = {}
    recomputed: dict[str, Memory] = {}
    for m in everything:
        if m.type == MemoryType.CORE or not holds(m, wanted):
            continue
        if not holds(m, wanted, meta=False) and _drop_variants(m, wanted) is not None:
            recomputed[m.id] = m  # only a merged variant holds it: the memory stays, recomputed
            continue
        doomed[m.id] = m
    targets = list(doomed.values())
    # What was derived from the erased memories alone goes with them, to a fixed point.
    derived: dict[str, Memory] = {}
    while True:
        grown = False
        for m in everything:
            if m.id in doomed or m.type == MemoryType.CORE or not m.source_ids:
                continue
            sources = [s for s in m.source_ids if s in by_id]
            gone = [s for s in sources if s in doomed]
            if not gone:
                continue
            alone = m.type in (MemoryType.TURN, MemoryType.IMAGE, MemoryType.EPISODIC) or len(gone) == len(sources)
            if alone:
                doomed[m.id] = derived[m.id] = m
                recomputed.pop(m.id, None)
                grown = True
            else:
                recomputed[m.id] = m
        if not grown:
            break
    # The core profile: the versions that hold the text go; the current one is rewritten without it.
    profile = None
    cores = [m for m in everything if m.type == MemoryType.CORE]
    current = next((m for m in reversed(cores) if m.current), None)
    for m in cores:
        if holds(m, wanted):
            doomed[m.id] = m
            targets.append(m)
        elif any(s in doomed for s in m.source_ids):
            recomputed[m.id] = m
    if current is not None and current.id in doomed:
        profile = _profile_without(current, wanted, set(doomed))
    reopened = [m for m in everything if m.superseded_by in doomed and m.id not in doomed]
    return TextPlan(targets=targets, derived=list(derived.values()), text=text, profile=profile,
                    recomputed=[m for m in recomputed.values() if m.id not in doomed], reopened=reopened)


def _drop_variants(m: Memory, wanted: str) -> dict[str, Any] | None:
    """``m``'s metadata without the merged variants that hold the text; None if the text is elsewhere in it."""
    meta = dict(m.meta)
    merged = meta.get("merged")
    if isinstance(merged, list):
        meta["merged"] = [x for x in merged if wanted not in _flat(x)]
        if not meta["merged"]:
            meta.pop("merged")
    if wanted in _flat(meta):
        return None
    return meta


def _profile_without(core: Memory, wanted: str, doomed: set[str]) -> ProfileChange:
    facts = dict(core.meta.get("facts") or {})
    if not facts:  # an old profile without its fields: read them back from its text
        facts = dict(line.split(": ", 1) for line in core.text.splitlines() if ": " in line)
    sources = dict(core.meta.get("sources") or {})
    removed: dict[str, str] = {}
    kept: dict[str, str] = {}
    for key, value in facts.items():
        value = str(value)
        if wanted in key.casefold():
            removed[key] = value
            continue
        if key in learning.LIST_FIELDS:
            items = [x for x in value.split(", ") if x]
            gone = [x for x in items if wanted in " ".join(x.split()).casefold()]
            if gone:
                removed[key] = ", ".join(gone)
                items = [x for x in items if x not in gone]
            if items:
                kept[key] = ", ".join(items)
        elif wanted in " ".join(value.split()).casefold():
            removed[key] = value
        else:
            kept[key] = value
    kept_sources = {k: v for k, v in sources.items() if k in kept and v not in doomed}
    return ProfileChange(removed=removed, facts=kept, sources=kept_sources)


def execute_text(store: MemoryStore, p: TextPlan, operation: str, queue: UpdateQueue | None = None) -> list[str]:
    """Carry out a ``plan_text``: the erasure, the recomputed memories and the new profile in one
    transaction, then the compaction (``MemoryStore.erase``), then the vectors of what changed."""
    records = store.records
    wanted = needle(p.text)
    gone = {m.id for m in p.targets + p.derived}
    sessions = {m.session_id for m in p.targets + p.derived
                if m.type in (MemoryType.TURN, MemoryType.EPISODIC) and m.session_id}
    scrub_input_history(store.user_dir / "input_history", [p.text] + [m.text for m in p.targets + p.derived])
    new_core = None
    if p.profile is not None and p.profile.facts:
        old = next(m for m in p.targets if m.type == MemoryType.CORE and m.current)
        new_core = new_memory(MemoryType.CORE, learning.profile_text(p.profile.facts), old.occurred_at,
                              source_ids=list(dict.fromkeys(p.profile.sources.values())),
                              session_id=old.session_id, meta={"facts": p.profile.facts, "sources": p.profile.sources,
                                                                "recomputed": "forget"})
    changed: list[Memory] = []

    def rewrite() -> None:
        if new_core is not None:
            records.insert([new_core])
        for m in p.recomputed:
            fresh = records.get(m.id)
            if fresh is None:
                continue
            fresh.source_ids = [s for s in fresh.source_ids if s not in gone]
            meta = _drop_variants(fresh, wanted)
            if meta is not None:
                fresh.meta = meta
            if fresh.type == MemoryType.CORE and isinstance(fresh.meta.get("sources"), dict):
                fresh.meta["sources"] = {k: v for k, v in fresh.meta["sources"].items() if v not in gone}
            records.update(fresh)
            changed.append(fresh)
        for m in p.reopened:
            fresh = records.get(m.id)
            if fresh is None:
                continue
            # The current profile's line goes on in the new version; any other line stays closed.
            fresh.superseded_by = new_core.id if new_core is not None and fresh.type == MemoryType.CORE else None
            records.update(fresh)
            changed.append(fresh)
        done = records.get_meta("consolidated", {}) or {}
        for session in sessions:
            done.pop(session, None)
        records.set_meta("consolidated", done)

    erased = store.erase(list(gone), operation, before_commit=rewrite)
    store.embed(list({m.id: m for m in [*changed, *([new_core] if new_core is not None else [])]}.values()))
    if queue is not None:
        for session in sorted(sessions):
            if records.list(types=[MemoryType.TURN], session_id=session, limit=1):
                queue.enqueue_session(session)
    return erased
