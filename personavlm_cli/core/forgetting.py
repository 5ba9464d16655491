"""Forgetting is erasure: a memory, everything derived from it, its vectors and its image files.

Derived memories (episodes, semantic memories, core and procedural versions) name their sources
in ``source_ids``. Forgetting follows those links to a fixed point, so no derived text that could
repeat the forgotten content survives. Sessions that still have turns left are queued for
consolidation again, which regenerates their episodes, habits and profile from what remains; a
version whose successor was erased becomes current again.
"""

from __future__ import annotations

from dataclasses import dataclass

from personavlm_cli.core.memory import Memory
from personavlm_cli.core.store import MemoryStore
from personavlm_cli.core.update import UpdateQueue, forget_personality_evidence


@dataclass
class ForgetPlan:
    targets: list[Memory]  # what the user asked to forget
    derived: list[Memory]  # what goes with it

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.targets + self.derived]


def plan(store: MemoryStore, ids: list[str]) -> ForgetPlan:
    records = store.records
    targets = records.get_many(ids)
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
    records = store.records
    ids = set(p.ids)
    sessions = {m.session_id for m in p.targets + p.derived if m.type == "turn" and m.session_id}
    sessions |= {m.session_id for m in p.derived if m.type in ("episodic", "core", "procedural") and m.session_id}
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
            if records.list(types=["turn"], session_id=session, limit=1):
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


def scrub_input_history(path, texts: list[str]) -> None:
    """Drop the REPL's remembered input lines that hold forgotten text (prompt_toolkit's file format:
    entries of "# time" then "+line" lines), rewriting the file so the old bytes do not linger."""
    import os

    texts = [t.strip() for t in texts if t and len(t.strip()) >= 4]
    if not texts or not path.exists():
        return
    entries, current = [], []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        if line.startswith("#") and current:
            entries.append(current)
            current = []
        current.append(line)
    if current:
        entries.append(current)
    kept = [e for e in entries
            if not any(t in "".join(x[1:] for x in e if x.startswith("+")) for t in texts)]
    if len(kept) == len(entries):
        return
    data = "".join("".join(e) for e in kept).encode("utf-8")
    size = path.stat().st_size
    with open(path, "r+b") as fh:  # overwrite in place, then cut: no copy of the old text is left
        fh.write(data + b"\0" * max(0, size - len(data)))
        fh.flush()
        os.fsync(fh.fileno())
        fh.truncate(len(data))


FORGET_TYPES = ("semantic", "episodic", "procedural", "core", "image", "turn")


def matching(store: MemoryStore, text: str, k: int = 5) -> list[Memory]:
    """What "forget TEXT" means, in the REPL and on the command line alike: the memories that share a
    word with the text (BM25) or mean nearly the same (cosine > 0.5), at most ``k``, each with every
    older version of it, so that nothing erased comes back as the current version."""
    from personavlm_cli.core.recall import Query, recall

    hits = recall(store, Query(text=text, types=FORGET_TYPES, include_superseded=True), k=k)
    found = [h.memory for h in hits
             if "lexical" in h.signals or h.signals.get("dense", {}).get("score", 0) > 0.5]
    out = {m.id: m for m in found}
    frontier = set(out)
    while frontier:
        older = [m for m in store.records.superseded_by_any(frontier) if m.id not in out]
        frontier = {m.id for m in older}
        out.update((m.id, m) for m in older)
    return list(out.values())
