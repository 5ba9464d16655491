"""Hybrid recall: dense (MiniLM), lexical (BM25 over FTS5) and image (CLIP) signals, fused.

Each retrieval signal proposes its own candidates; the candidates are then scored by a convex
combination of the signals' scores, each divided by that signal's best score for this query (so
BM25's unbounded scale and cosine's do not have to be calibrated against each other, yet a
signal's confidence still counts, which reciprocal-rank fusion throws away). Three more signals
re-rank; only the first can bring a memory in:

- ``context``: a turn is understood with its neighbours. Part of the lexical score of the turns
  next to it in its session (half at distance 1, a fifth at distance 2) is added to its own: an
  answer often shares no word with the question that the turn before it asked. A turn that only
  its neighbours match becomes a candidate, but it is not marked ``lexical``.
- ``speaker``: a turn whose speaker (``meta["speaker"]``, set for transcripts that name who
  spoke) is named in the query is preferred: "what did Anna say about..." is about Anna's turns.
- ``date``: a memory from a day or month the query names ("on October 13, 2023", "in June") is
  preferred, and one from the week after a named day a little (people tell of things afterwards).
  This is a soft preference; the model's own time window (``since``/``until``) is a hard filter.

The lexical query leaves out stop words and question words ("what", "did", "would"): they match
every short chatty turn. The time window is a real filter on every signal (the reference code's
filter did nothing), and superseded memories are left out unless asked for.

Two more re-rank the candidates near the top, from ``core/links.py``: ``taste`` (an inference question
answered by its subject's own first-person words) and ``substance`` (turns without content words demoted).
One more proposes candidates, from ``core/kinds.py``: ``instance`` ("what sports do I play?" also asks the
lexical index for the words of a sport: "tennis", "swim"). And one more, ``topic``, proposes candidates for a
hypothetical question ("would", "likely", "might") that names a speaker of the store's turns: the question without
the name, as a second dense query, over that speaker's own first-person turns ("Would Melanie enjoy Vivaldi?" →
"I'm a fan of classical like Bach and Mozart"). A transcript's turns name their speaker; the chat's do not, so
in chat it never runs.

On LoCoMo's development split (docs/benchmarks.md) recall@10 goes from 0.57 with plain
reciprocal-rank fusion (``fusion="rrf"``, kept as the baseline) to 0.785, 0.804 with ``taste`` and
``substance``, 0.821 with ``instance``, and 0.839 with ``topic`` and the wider lexicon of ``core/kinds.py``
(open-domain 0.591 → 0.818, multi-hop 0.591 → 0.622); at 10k memories a recall takes about 30 ms on two CPU
cores, the query's embedding included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from personavlm_cli.core import kinds, links, reembed
from personavlm_cli.core.dates import date_match as _date_match
from personavlm_cli.core.dates import query_dates
from personavlm_cli.core.learning import changes
from personavlm_cli.core.memory import TYPES, Memory, MemoryType
from personavlm_cli.core.store import IMAGES, TEXT, MemoryStore

if TYPE_CHECKING:
    from personavlm_cli.core.ports import RecordStore

# Convex-combination weights of the signals (each normalised by its best score). ``context`` is
# the share of the neighbours' lexical score carried over (1.0 = NEIGHBOURS as they are).
WEIGHTS = {"dense": 0.3, "keywords": 0.15, "lexical": 0.7, "image": 0.5, "context": 1.0, "speaker": 0.3,
           "date": 0.2, "image_text": 0.5, "taste": 0.3, "substance": 0.2,  # these two: core/links.py
           "instance": 1.0,  # core/kinds.py: a category's instances, a second lexical query
           "topic": 0.2}  # a hypothetical's named speaker: their own turns, by the question without their name
# CLIP's cosine of words and an image they do not describe is about 0.1-0.2, of a caption and its
# image about 0.3: below this an image is not a match for the words, only the least bad one.
IMAGE_TEXT_FLOOR = 0.2
NEIGHBOURS = (0.5, 0.2)  # share of a turn's lexical score given to the turns 1 and 2 away
FUSIONS = ("score", "rrf")
# The relevance floor: a memory is recalled only when it means nearly the same as the query (cosine >=
# FLOOR), matches its image, or shares a word with it (lexical, or its neighbours' words: context) without
# being known to mean something else (its cosine, when it is among the dense candidates, >= WORD_FLOOR).
# Nonsense then recalls nothing, and a prompt carries no memories rather than noise. Calibrated on LoCoMo's
# dev split (docs/benchmarks.md): every evidence turn recall@10 found has cosine >= 0.21, so its recall@10
# is unchanged (0.785), while gibberish and questions about the world get nothing from a personal store.
FLOOR = 0.3
WORD_FLOOR = 0.15
RRF_K = 60  # only for fusion="rrf", kept as the baseline the benchmark compares against
CANDIDATES = 100
TOPIC_FIRST_PERSON = 0.5  # the share of a turn's personal pronouns that are first person, for topic (links.py)
TOPIC_PEEK = 10  # the first candidates of the dense and lexical queries looked at for a speaker the question names

STOP_WORDS = frozenset([
    "a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and", "any", "are", "as", "at",
    "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do",
    "does", "doing", "done", "down", "during", "each", "either", "ever", "few", "for", "from", "further", "get",
    "gets", "got", "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him", "himself", "his",
    "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "kind", "like", "likely", "may", "me",
    "might", "more", "most", "much", "must", "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once",
    "only", "or", "other", "ought", "our", "ours", "ourselves", "out", "over", "own", "per", "please", "same",
    "shall", "she", "should", "so", "some", "such", "than", "that", "the", "their", "theirs", "them", "themselves",
    "then", "there", "these", "they", "this", "those", "through", "to", "too", "type", "under", "until", "up", "upon",
    "us", "very", "was", "we", "were", "what", "whats", "when", "where", "whether", "which", "while", "who", "whom",
    "whose", "why", "will", "with", "would", "you", "your", "yours", "yourself", "yourselves", "s", "t", "d", "ll",
    "m", "re", "ve",
])

_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class Query:
    text: str
    keywords: str = ""
    since: float | None = None  # epoch seconds
    until: float | None = None
    types: tuple[str, ...] = TYPES
    image_paths: list[Any] = field(default_factory=list)  # image files (str or Path)
    exclude_ids: set[str] = field(default_factory=set)
    include_superseded: bool = False


@dataclass
class Hit:
    memory: Memory
    score: float
    signals: dict[str, dict[str, float]] = field(default_factory=dict)  # signal -> {"rank": r, "score": s}


def query_terms(text: str) -> list[str]:
    """The words a search for ``text`` looks for, in order (lower-cased, no stop or question words).
    (``learning.grounding.content_words`` is the other word rule: the words that carry a statement's facts.)"""
    words = [w.lower() for w in _WORD.findall(text)]
    return [w for w in dict.fromkeys(words) if w not in STOP_WORDS and (len(w) > 1 or w.isdigit())]


def lexical_query(text: str) -> str:
    """The BM25 query: the content words, or every word when the text has no content word."""
    words = query_terms(text)
    return " ".join(words) if words else text


def _where(q: Query) -> dict[str, Any] | None:
    clauses: list[dict[str, Any]] = []
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


def _admitted(records: RecordStore, ids: list[str], q: Query, types: Iterable[str] | None = None) -> set[str]:
    """Those of ``ids`` that the query's filters (types, time window, current) admit."""
    types = list(q.types if types is None else types)
    out = records.filter_ids(ids, types if set(types) != set(TYPES) else None, q.since, q.until,
                             q.include_superseded)
    return out - set(q.exclude_ids)


def _vector_search(store: MemoryStore, name: str, vec: Any, pool: int, q: Query,
                   where: dict[str, Any] | None) -> list[tuple[str, float]]:
    """Nearest vectors that pass the query's filters.

    Chroma's metadata filter costs ~40 ms at 10k memories against ~4 ms without it, and the usual
    filter (current memories, maybe a time window) keeps most of them: so search unfiltered with
    room to spare and filter on the record file; only when too few pass, ask Chroma to filter."""
    if where is None:
        return store.vectors.query(name, vec, pool, None)
    room = pool * 2 + 20
    found = store.vectors.query(name, vec, room, None)
    keep = _admitted(store.records, [i for i, _ in found], q)
    kept = [(i, score) for i, score in found if i in keep]
    if len(kept) >= pool or len(found) < room:
        return kept[:pool]
    return store.vectors.query(name, vec, pool, where)


def _neighbours(records: RecordStore, ids: list[str], q: Query, width: int) -> tuple[dict[str, list[tuple[str, int]]], set[str]]:
    """For the turns among ``ids``: the turns up to ``width`` away in the same session, with distance.

    Also returns which of those neighbours the query's filters admit as candidates themselves."""
    if not ids or width <= 0 or MemoryType.TURN not in q.types:
        return {}, set()
    rows = records.session_turns(ids)
    sequences: dict[str, list[str]] = {}
    admitted: set[str] = set()
    for memory_id, session_id, start, end, current in rows:
        sequences.setdefault(session_id, []).append(memory_id)
        if ((current or q.include_superseded) and (q.since is None or end >= q.since)
                and (q.until is None or start <= q.until) and memory_id not in q.exclude_ids):
            admitted.add(memory_id)
    wanted = set(ids)
    out: dict[str, list[tuple[str, int]]] = {}
    for seq in sequences.values():
        for pos, memory_id in enumerate(seq):
            if memory_id in wanted:
                out[memory_id] = [(seq[other], d) for d in range(1, width + 1) for other in (pos - d, pos + d)
                                  if 0 <= other < len(seq)]
    return out, admitted


def _topic(store: MemoryStore, q: Query, text: str, rankings: dict[str, list[tuple[str, float]]], pool: int,
           where: dict[str, Any] | None) -> list[tuple[str, float]]:
    """``topic``: "Would Melanie enjoy Vivaldi?" is answered by what Melanie said of herself ("I'm a fan of
    classical, Bach and Mozart"), and her name, in every turn of hers, drowns what the question is about. When
    the question names a speaker of the store's turns (found among the first candidates: a transcript's
    turns name their speaker, the chat's do not, so in chat this stops here), the question without the name
    is asked of the vectors (a dense query, as on every store), and that speaker's turns are kept."""
    if MemoryType.TURN not in q.types:
        return []
    words = {w.lower() for w in _WORD.findall(text.replace("\u2019", "'"))}
    first = [i for name in ("dense", "lexical") for i, _ in rankings.get(name, [])[:TOPIC_PEEK]]
    speaker = links.subject(store.records.get_many(list(dict.fromkeys(first))), words) if first else None
    rest = links.without_subject(text, speaker) if speaker else ""
    if not speaker or not query_terms(rest):
        return []
    found = _vector_search(store, TEXT, store.text_encoder.embed([rest])[0], pool, q, where)
    # Their turns that speak mostly of themselves (taste's share: "I love ..." and not "you must love ...").
    theirs = {m.id for m in store.records.get_many([i for i, _ in found]) if m.type == MemoryType.TURN
              and (m.meta or {}).get("speaker") == speaker and links.first_person(m) >= TOPIC_FIRST_PERSON}
    return [(i, score) for i, score in found if i in theirs][:pool]


def relevant(signals: dict[str, dict[str, float]], floor: float = FLOOR) -> bool:
    """Is a candidate with these signals above the relevance floor (see FLOOR)?"""
    if "image" in signals:
        return True
    # topic's cosine counts as the query's: it is the same question, less the name of the speaker it is about.
    scores = [signals[name]["score"] for name in ("dense", "keywords", "topic") if name in signals]
    cosine = max(scores) if scores else None
    if cosine is not None and cosine >= floor:
        return True
    if "lexical" in signals or "context" in signals or "instance" in signals:
        return cosine is None or cosine >= min(floor, WORD_FLOOR)
    return False


def recall(store: MemoryStore, q: Query, k: int = 10, candidates: int = CANDIDATES,
           weights: dict[str, float] | None = None, *, fusion: str = "score", floor: float | None = FLOOR
           ) -> list[Hit]:
    """The ``k`` memories that best answer ``q``, best first, each with its per-signal ranks and scores;
    only those above the relevance floor (``floor`` None: every candidate, as before the floor).

    ``weights`` overrides WEIGHTS (0 turns a signal off); ``fusion`` "rrf" is the baseline this
    replaced: weighted reciprocal-rank fusion of the retrievers, the lexical query as typed, and no
    context, speaker or date signal.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion '{fusion}'")
    weights = {**WEIGHTS, **(weights or {})}
    rankings: dict[str, list[tuple[str, float]]] = {}
    where = _where(q)
    pool = candidates + len(q.exclude_ids)

    text, keywords = q.text.strip(), q.keywords.strip()
    want_dense = bool(text) and weights.get("dense", 0) > 0
    want_keywords = bool(keywords) and weights.get("keywords", 0) > 0
    if want_dense or want_keywords:
        texts = list(dict.fromkeys(t for t in (text if want_dense else "", keywords if want_keywords else "") if t))
        vecs = dict(zip(texts, store.text_encoder.embed(texts), strict=True))
        if want_dense:
            rankings["dense"] = _vector_search(store, TEXT, vecs[text], pool, q, where)
        if want_keywords:
            rankings["keywords"] = (rankings["dense"] if want_dense and keywords == text else
                                    _vector_search(store, TEXT, vecs[keywords], pool, q, where))
    if weights.get("lexical", 0) > 0:
        lexical_text = f"{q.text} {q.keywords}".strip()
        if lexical_text:
            if fusion == "score":
                lexical_text = lexical_query(lexical_text)
            rankings["lexical"] = store.records.lexical(lexical_text, pool, q.types, q.since, q.until,
                                                        q.include_superseded)
    if fusion == "score" and weights.get("instance", 0) > 0:
        # "What sports do I play?": the words of the categories' instances ("tennis", "swim"), asked too.
        instances = kinds.instance_words(f"{q.text} {q.keywords}", STOP_WORDS)
        if instances:
            rankings["instance"] = store.records.lexical(" ".join(instances), pool, q.types, q.since, q.until,
                                                         q.include_superseded)
    if fusion == "score" and weights.get("topic", 0) > 0 and text and links.is_hypothetical(text):
        topic = _topic(store, q, text, rankings, pool, where)
        if topic:
            rankings["topic"] = topic
    if q.image_paths and weights.get("image", 0) > 0 and "image" in q.types:
        vec = store.image_encoder.embed_images(q.image_paths).mean(axis=0)
        rankings["image"] = _vector_search(store, IMAGES, vec, pool, q, where)
    if text and not q.image_paths and "image" in q.types and weights.get("image", 0) > 0 \
            and weights.get("image_text", 0) > 0:
        # Words against what the images show (CLIP's text tower), once the images have real weights.
        vec = reembed.text_vector(store, text)
        if vec is not None:
            rankings["image_text"] = [(i, s) for i, s in _vector_search(store, IMAGES, vec, pool, q, where)
                                      if s >= IMAGE_TEXT_FLOOR]

    signals: dict[str, dict[str, dict[str, float]]] = {}
    raw: dict[str, dict[str, float]] = {}
    for name, ranking in rankings.items():
        rank = 0
        raw[name] = {}
        for memory_id, score in ranking:
            if memory_id in q.exclude_ids:
                continue
            rank += 1
            raw[name][memory_id] = float(score)
            signals.setdefault(memory_id, {})[name] = {"rank": rank, "score": round(float(score), 4)}

    if fusion == "rrf":
        fused: dict[str, float] = {}
        for name, scores in raw.items():
            for rank, memory_id in enumerate(scores, start=1):
                fused[memory_id] = fused.get(memory_id, 0.0) + weights[name] / (RRF_K + rank)
        return _hits(store, _above(fused, signals, floor), signals, k)

    # Context: the lexical scores of a turn's neighbours, carried over to it.
    lexical = dict(raw.get("lexical", {}))
    carried: dict[str, float] = {}
    if lexical and weights.get("context", 0) > 0:
        near, admitted = _neighbours(store.records, list(lexical), q, len(NEIGHBOURS))
        for memory_id, others in near.items():
            for other, distance in others:
                if other in admitted:
                    carried[other] = carried.get(other, 0.0) + NEIGHBOURS[distance - 1] * lexical[memory_id]
        ranked = sorted(carried, key=cast("Callable[[str], float]", carried.get), reverse=True)
        for rank, memory_id in enumerate(ranked, start=1):
            signals.setdefault(memory_id, {})["context"] = {"rank": rank, "score": round(carried[memory_id], 4)}
        for memory_id, value in carried.items():
            lexical[memory_id] = lexical.get(memory_id, 0.0) + weights["context"] * value
    if lexical:
        raw["lexical"] = lexical

    fused = {}
    for name, scores in raw.items():
        best = max(scores.values(), default=0.0)
        if best <= 0:
            continue
        for memory_id, score in scores.items():
            fused[memory_id] = fused.get(memory_id, 0.0) + weights[name] * max(score, 0.0) / best
    for memory_id in signals:
        fused.setdefault(memory_id, 0.0)
    fused = _above(fused, signals, floor)  # after the fusion: the floor never changes how the others rank

    # Speaker and date: priors over the candidates, never a way in. Only the candidates that a
    # prior could lift into the first k are looked at.
    memories: dict[str, Memory] | None = None
    query_text = f"{q.text} {q.keywords}"
    dates = query_dates(query_text) if weights.get("date", 0) > 0 else []
    lift = max(weights.get("speaker", 0), 0) + (max(weights.get("date", 0), 0) if dates else 0)
    # ``taste`` lifts, ``substance`` lowers (core/links.py): the window widens by both.
    lift += (max(weights.get("taste", 0), 0) if links.is_inference(query_text) else 0) \
        + max(weights.get("substance", 0), 0)
    if fused and lift > 0:
        words = {w.lower() for w in _WORD.findall(query_text)}
        ordered = sorted(fused.values(), reverse=True)
        floor = ordered[min(k, len(ordered)) - 1] - lift
        window = sorted((i for i, v in fused.items() if v >= floor), key=lambda i: -fused[i])[:max(4 * k, k + 30)]
        memories = {m.id: m for m in store.records.get_many(window)}
        links.apply(fused, signals, memories, query_text, weights, lambda m: links.names_speaker(m, words), STOP_WORDS)
        for memory_id, m in memories.items():
            if weights.get("speaker", 0) > 0 and links.names_speaker(m, words):
                fused[memory_id] += weights["speaker"]
                signals[memory_id]["speaker"] = {"rank": 1, "score": 1.0}
            if dates:
                match = _date_match(m.occurred_at, dates)
                if match:
                    fused[memory_id] += weights["date"] * match
                    signals[memory_id]["date"] = {"rank": 1, "score": match}
    memories = _standing(store, fused, signals, k, query_text, memories)
    return _hits(store, fused, signals, k, memories)


def _standing(store: MemoryStore, fused: dict[str, float], signals: dict[str, dict[str, dict[str, float]]], k: int,
              query_text: str, memories: dict[str, Memory] | None) -> dict[str, Memory]:
    """The newest word wins (``core/learning/changes.py``): past statements and the assistant's own turns are
    demoted among the candidates that could reach the first k."""
    top = sorted(fused, key=lambda i: -fused[i])[: max(k * 3, k + 10)]
    memories = dict(memories or {})
    missing = [i for i in top if i not in memories]
    if missing:
        memories.update((m.id, m) for m in store.records.get_many(missing))
    ranked = {i: memories[i] for i in top if i in memories}
    changes.rerank(fused, ranked, query_text, signals, fetch=store.records.get_many)
    memories.update(ranked)
    return memories


def _above(fused: dict[str, float], signals: dict[str, dict[str, dict[str, float]]], floor: float | None) -> dict[str, float]:
    if floor is None:
        return fused
    return {i: v for i, v in fused.items() if relevant(signals.get(i, {}), floor)}


def _hits(store: MemoryStore, fused: dict[str, float], signals: dict[str, dict[str, dict[str, float]]], k: int,
          memories: dict[str, Memory] | None = None) -> list[Hit]:
    # Ties keep the order the signals proposed them in (ids are random: no tie-break on them).
    best = sorted(fused, key=lambda i: -fused[i])[: max(k * 2, k + 5)]  # spares for vanished records
    memories = dict(memories or {})
    missing = [i for i in best if i not in memories]
    if missing:
        memories.update((m.id, m) for m in store.records.get_many(missing))
    hits = [Hit(memories[i], fused[i], signals.get(i, {})) for i in best if i in memories]
    return hits[:k]
