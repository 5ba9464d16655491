"""Hybrid recall: dense (MiniLM), lexical (BM25 over FTS5) and image (CLIP) signals, fused.

Each signal ranks candidates on its own; reciprocal-rank fusion (weighted) merges the rankings,
so no signal's raw score scale has to be calibrated against another's. The time window is a real
filter on every signal (the reference code's filter did nothing), and superseded memories are
left out unless asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from personavlm_cli.core.memory import TYPES, Memory
from personavlm_cli.core.store import IMAGES, TEXT, MemoryStore

RRF_K = 60
WEIGHTS = {"dense": 1.0, "keywords": 0.7, "lexical": 1.0, "image": 1.5}


@dataclass
class Query:
    text: str
    keywords: str = ""
    since: float | None = None  # epoch seconds
    until: float | None = None
    types: tuple[str, ...] = TYPES
    image_paths: list = field(default_factory=list)
    exclude_ids: set = field(default_factory=set)
    include_superseded: bool = False


@dataclass
class Hit:
    memory: Memory
    score: float
    signals: dict[str, dict] = field(default_factory=dict)  # signal -> {"rank": r, "score": s}


def _where(q: Query) -> dict | None:
    clauses: list[dict] = []
    if set(q.types) != set(TYPES):
        clauses.append({"type": {"$in": list(q.types)}})
    if q.since is not None:
        clauses.append({"end_ts": {"$gte": q.since}})
    if q.until is not None:
        clauses.append({"ts": {"$lte": q.until}})
    if not q.include_superseded:
        clauses.append({"current": True})
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def recall(store: MemoryStore, q: Query, k: int = 10, candidates: int = 50,
           weights: dict[str, float] | None = None) -> list[Hit]:
    weights = {**WEIGHTS, **(weights or {})}
    rankings: dict[str, list[tuple[str, float]]] = {}
    where = _where(q)
    pool = candidates + len(q.exclude_ids)

    texts = [t for t in (q.text.strip(), q.keywords.strip()) if t]
    if texts:
        vecs = store.text_encoder.embed(texts)
        if q.text.strip() and weights.get("dense", 0) > 0:
            rankings["dense"] = store.vectors.query(TEXT, vecs[0], pool, where)
        if q.keywords.strip() and weights.get("keywords", 0) > 0:
            rankings["keywords"] = store.vectors.query(TEXT, vecs[-1], pool, where)
    if weights.get("lexical", 0) > 0:
        lexical_text = f"{q.text} {q.keywords}".strip()
        if lexical_text:
            rankings["lexical"] = store.records.lexical(lexical_text, pool, q.types, q.since, q.until,
                                                        q.include_superseded)
    if q.image_paths and weights.get("image", 0) > 0 and "image" in q.types:
        vec = store.image_encoder.embed_images(q.image_paths).mean(axis=0)
        rankings["image"] = store.vectors.query(IMAGES, vec, pool, where)

    fused: dict[str, float] = {}
    signals: dict[str, dict[str, dict]] = {}
    for name, ranking in rankings.items():
        rank = 0
        for memory_id, score in ranking:
            if memory_id in q.exclude_ids:
                continue
            rank += 1
            fused[memory_id] = fused.get(memory_id, 0.0) + weights[name] / (RRF_K + rank)
            signals.setdefault(memory_id, {})[name] = {"rank": rank, "score": round(float(score), 4)}

    best = sorted(fused, key=fused.get, reverse=True)[: max(k * 2, k + 5)]
    memories = {m.id: m for m in store.records.get_many(best)}
    hits = [Hit(memories[i], fused[i], signals[i]) for i in best if i in memories]
    return hits[:k]
