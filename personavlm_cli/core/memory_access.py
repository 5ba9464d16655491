"""The user's memory for other programs (what `personavlm mcp` serves): search, remember, list, show,
forget and the profile, as plain data.

Each is the same use case the chat and the `memory` commands run, not a second version of it:
search is the chat's recall (``core.recall.recall`` over the chat's memory types, a time named in the
query as its window); remember is ``/remember`` (``Learner.remember``: merged, superseding, profile
values applied; rules only, no model); forget is ``memory forget`` (``forgetting.forget_ids``: the ids
given, or those of the memories that hold the query's words; the sessions queued for consolidation) and
erases nothing without ``confirm``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from personavlm_cli.core import dates, forgetting
from personavlm_cli.core import personality as pem
from personavlm_cli.core.errors import NotFoundError, PersonaError
from personavlm_cli.core.memory import TYPES, Memory, MemoryType, now

if TYPE_CHECKING:
    from personavlm_cli.core.ports import RecordStore
    from personavlm_cli.core.store import MemoryStore

# the chat's (core.response_stage)
SEARCHED_TYPES = (MemoryType.SEMANTIC, MemoryType.EPISODIC, MemoryType.PROCEDURAL, MemoryType.IMAGE, MemoryType.TURN)
MAX_RESULTS = 100
MAX_TEXT = 10_000  # a statement to remember, in characters


def memory_data(m: Memory) -> dict[str, Any]:
    d: dict[str, Any] = {"id": m.id, "type": m.type, "text": m.text, "occurred_at": m.occurred_at,
                         "created_at": m.created_at, "current": m.current}
    if m.role:
        d["role"] = m.role
    if m.session_id:
        d["session_id"] = m.session_id
    if m.superseded_by:
        d["superseded_by"] = m.superseded_by
    if m.image_sha256:
        d["image_sha256"] = m.image_sha256
    return d


def _limit(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PersonaError("limit must be a whole number of at least 1")
    return min(value, MAX_RESULTS)


def _types(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    bad = [v for v in values if v not in TYPES]
    if bad:
        raise PersonaError(f"unknown memory type '{bad[0]}' (use {', '.join(TYPES)})")
    return list(values)


def search(store: MemoryStore, query: str, limit: int = 10, weights: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """The chat's recall for ``query``: the best ``limit`` memories with their scores."""
    from personavlm_cli.core.recall import Query, recall

    if not isinstance(query, str) or not query.strip():
        raise PersonaError("give a query: the words to look for")
    window = dates.window(query, now())
    q = Query(text=query, keywords=query, types=SEARCHED_TYPES,
              since=window[0].timestamp() if window else None, until=window[1].timestamp() if window else None)
    hits = recall(store, q, k=_limit(limit), weights=weights)
    if not hits and window is not None:  # as the chat does: a named time may be when it will happen
        q.since = q.until = None
        hits = recall(store, q, k=_limit(limit), weights=weights)
    return [{**memory_data(h.memory), "score": round(float(h.score), 5)} for h in hits]


def remember(store: MemoryStore, text: str) -> dict[str, Any]:
    """``/remember``: the user's statement, as written, learnt like any statement of theirs."""
    from personavlm_cli.core.learning.learner import Learner

    if not isinstance(text, str) or not text.strip():
        raise PersonaError("give the statement to remember")
    if len(text) > MAX_TEXT:
        raise PersonaError(f"a statement to remember is at most {MAX_TEXT} characters (this one has {len(text)})")
    kept, new = Learner(store).remember(text.strip(), now(), None)
    return {**memory_data(kept), "new": new}


def list_memories(records: RecordStore, types: list[str] | None = None, limit: int = 50,
                  include_superseded: bool = False) -> list[dict[str, Any]]:
    """The newest ``limit`` memories (of ``types``), oldest first."""
    items = records.list(types=_types(types), include_superseded=include_superseded, limit=_limit(limit),
                         newest_first=True)
    return [memory_data(m) for m in reversed(items)]


def show(records: RecordStore, memory_id: str) -> dict[str, Any]:
    """One memory with its provenance: what it comes from, what was derived from it, its versions."""
    m = records.get(memory_id) if isinstance(memory_id, str) else None
    if m is None:
        raise NotFoundError(f"no memory with id '{memory_id}'")
    versions, before = [m], m
    while True:  # older versions: the ones superseded by the oldest known
        older = [x for x in records.superseded_by_any([before.id]) if x.superseded_by == before.id]
        if not older:
            break
        before = older[0]
        versions.insert(0, before)
    after = m
    while after.superseded_by:
        nxt = records.get(after.superseded_by)
        if nxt is None or nxt.id in {v.id for v in versions}:
            break
        versions.append(nxt)
        after = nxt
    origin = {k: m.meta[k] for k in ("origin", "reason", "filename") if isinstance(m.meta.get(k), str)}
    return {**memory_data(m), **origin, "keywords": m.keywords or None,
            "sources": [memory_data(x) for x in records.get_many(m.source_ids)],
            "derived": [memory_data(x) for x in records.derived_from([m.id])],
            "versions": [memory_data(x) for x in versions] if len(versions) > 1 else []}


def forget(store: MemoryStore, ids: list[str] | None = None, query: str | None = None, confirm: bool = False) -> dict[str, Any]:
    """``memory forget IDS`` or ``--query TEXT``: without ``confirm``, what would be erased; with it, erased."""
    if bool(ids) == bool(query):
        raise PersonaError("say what to forget: ids, or a query (one of them)")
    # The same two use cases as `memory forget IDS` and `memory forget --query TEXT`: by text, exactly the
    # memories that hold the words (shared memories recomputed, only the profile values that hold them removed).
    job = forgetting.forget_ids(store, list(ids)) if ids else forgetting.forget_text(store, str(query))
    p = job.plan
    text_plan = p if isinstance(p, forgetting.TextPlan) else None
    changes: dict[str, Any] = {"derived": len(p.derived)}
    if text_plan is not None:
        changes["recomputed"] = len(text_plan.recomputed)
        changes["profile_values_removed"] = dict(text_plan.profile.removed) if text_plan.profile else {}
    if job.nothing:
        return {"erased": [], "would_erase": [], **changes}
    if not confirm:
        return {"erased": [], "would_erase": [memory_data(m) for m in p.targets], **changes,
                "note": "nothing was erased: call forget again with confirm set to true to erase these "
                        "and what was derived from them"}
    return {"erased": list(job.erase()), "would_erase": [], **changes}


def profile(records: RecordStore, user: str) -> dict[str, Any]:
    """The core profile, the habits and the Big Five, as `profile show --json` gives them."""
    core = records.list(types=[MemoryType.CORE])
    procedural = records.list(types=[MemoryType.PROCEDURAL])
    vector = records.get_meta("personality") or pem.initial()
    return {"user": user, "core": core[-1].meta.get("facts", {}) if core else {},
            "procedural": {m.meta.get("key", m.id): m.text for m in procedural},
            "big_five": {t: round(float(vector[t]), 4) for t in pem.TRAITS}}
