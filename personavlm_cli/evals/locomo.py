"""LoCoMo (Maharana et al., ACL 2024) as an evaluation of recall and answers (`personavlm eval locomo`).

A LoCoMo conversation is replayed into a fresh store as a timeline: each session at its real date,
the turns of a session one minute apart, speaker A as the user and speaker B as the assistant, each
turn's image caption kept with its text and its ``dia_id`` kept in the memory's meta. Then every
question of categories 1-4 is asked of the recall (``recall_at_k``: the share of the question's
evidence turns among the first k distinct timeline turns recall ranks) and, optionally, of the
chat model through the real response stage (``token_f1`` as LoCoMo's own evaluation computes it).

``run`` is the whole evaluation: each conversation goes into its own temporary store (the real record
file, the real Chroma index, the real MiniLM encoder), so nothing touches the user's own memories.
Nothing here knows anything about particular questions: the loader, the replay and the scoring
are the same for any conversation in LoCoMo's format.
"""

from __future__ import annotations

import json
import re
import statistics
import string
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from personavlm_cli.core.errors import NoAnswer, PersonaError
from personavlm_cli.core.memory import Memory, MemoryType, iso, new_id
from personavlm_cli.evals.workspace import Progress, mean, model_line, percentile, scratch, temporary_store

CATEGORIES = (1, 2, 3, 4)
CATEGORY_NAMES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
TURN_SPACING = timedelta(minutes=1)

_SESSION_KEY = re.compile(r"^session_(\d+)$")
_DIA_ID = re.compile(r"D\d+:\d+")


# --- the format -----------------------------------------------------------------------------------


@dataclass
class Turn:
    dia_id: str
    speaker: str
    text: str
    caption: str | None
    at: datetime
    session: int

    def indexed_text(self) -> str:
        """What the memory holds: the speaker's name (questions name people), the text, the photo."""
        body = self.text.strip()
        if self.caption:
            body = f"{body} [shares a photo: {self.caption.strip()}]".strip()
        return f"{self.speaker}: {body}"


@dataclass
class Question:
    question: str
    answer: str | None
    evidence: list[str]
    category: int
    index: int  # position in the conversation's qa list

    @property
    def scored(self) -> bool:
        """Recall is measured on categories 1-4 with annotated evidence (the reference figures)."""
        return self.category in CATEGORIES and bool(self.evidence)


@dataclass
class Conversation:
    sample_id: str
    speaker_a: str
    speaker_b: str
    sessions: list[tuple[int, datetime, list[Turn]]] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)

    @property
    def turns(self) -> list[Turn]:
        return [t for _n, _at, turns in self.sessions for t in turns]

    @property
    def last_time(self) -> datetime:
        turns = self.turns
        return turns[-1].at if turns else datetime(2000, 1, 1, tzinfo=UTC)


def parse_session_time(text: str) -> datetime:
    """LoCoMo's "1:56 pm on 8 May, 2023" (English month names, whatever the locale)."""
    m = re.match(r"^\s*(\d{1,2}):(\d{2})\s*([ap]m)\s+on\s+(\d{1,2})\s+([A-Za-z]+),?\s+(\d{4})\s*$", text, re.I)
    if not m:
        raise PersonaError(f"unreadable LoCoMo session time '{text}'")
    hour, minute, half, day, month, year = m.groups()
    months = ["january", "february", "march", "april", "may", "june", "july", "august", "september",
              "october", "november", "december"]
    name = month.lower()
    matches = [i for i, full in enumerate(months) if full.startswith(name[:3])]
    if not matches:
        raise PersonaError(f"unreadable month in LoCoMo session time '{text}'")
    h = int(hour) % 12 + (12 if half.lower() == "pm" else 0)
    return datetime(int(year), matches[0] + 1, int(day), h, int(minute), tzinfo=UTC)


def split_evidence(values: Iterable) -> list[str]:
    """Evidence ids, one per dia_id: the data has a few "D8:6; D9:17" entries holding two."""
    out: list[str] = []
    for value in values or []:
        for dia in _DIA_ID.findall(str(value)):
            if dia not in out:
                out.append(dia)
    return out


def parse_conversation(raw: dict) -> Conversation:
    try:
        conv = raw["conversation"]
        sample_id = str(raw.get("sample_id") or "")
        a, b = conv["speaker_a"], conv["speaker_b"]
    except (KeyError, TypeError):
        raise PersonaError("not LoCoMo's format: each item needs 'conversation' with speaker_a and speaker_b") from None
    c = Conversation(sample_id=sample_id, speaker_a=a, speaker_b=b)
    numbers = sorted(int(m.group(1)) for key in conv if (m := _SESSION_KEY.match(key)))
    for n in numbers:
        turns_raw = conv.get(f"session_{n}") or []
        stamp = conv.get(f"session_{n}_date_time")
        if not turns_raw:
            continue
        if not stamp:
            raise PersonaError(f"{sample_id}: session_{n} has no session_{n}_date_time")
        start = parse_session_time(stamp)
        turns = []
        for j, t in enumerate(turns_raw):
            turns.append(Turn(dia_id=str(t.get("dia_id") or f"D{n}:{j + 1}"), speaker=str(t.get("speaker") or ""),
                              text=str(t.get("text") or ""), caption=t.get("blip_caption") or None,
                              at=start + j * TURN_SPACING, session=n))
        c.sessions.append((n, start, turns))
    for i, q in enumerate(raw.get("qa") or []):
        answer = q.get("answer")
        c.questions.append(Question(question=str(q.get("question") or ""),
                                    answer=None if answer is None else str(answer),
                                    evidence=split_evidence(q.get("evidence")), category=int(q.get("category") or 0),
                                    index=i))
    return c


def load(path: Path | str, only: Iterable[str] | None = None) -> list[Conversation]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PersonaError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersonaError(f"cannot read {path} as JSON: {str(exc).splitlines()[0][:200]}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise PersonaError(f"{path}: expected LoCoMo's top-level array of conversations")
    convs = [parse_conversation(item) for item in data]
    if only:
        wanted = [w.strip() for w in only if w.strip()]
        known = {c.sample_id for c in convs}
        missing = [w for w in wanted if w not in known]
        if missing:
            raise PersonaError(f"no conversation '{missing[0]}' in {path} (it has {', '.join(sorted(known))})")
        convs = [c for c in convs if c.sample_id in wanted]
    return convs


# --- replaying into a store -----------------------------------------------------------------------


def turn_memories(conv: Conversation) -> list[Memory]:
    """The conversation's timeline as turn memories (speaker A: user, speaker B: assistant)."""
    memories: list[Memory] = []
    created = iso(datetime.now(UTC).replace(microsecond=0))
    for n, _start, turns in conv.sessions:
        session_id = f"{conv.sample_id or 'locomo'}-s{n}"
        for t in turns:
            role = "user" if t.speaker == conv.speaker_a else "assistant"
            memories.append(Memory(id=new_id("turn"), type="turn", text=t.indexed_text(), occurred_at=iso(t.at),
                                   created_at=created, role=role, session_id=session_id,
                                   meta={"dia_id": t.dia_id, "speaker": t.speaker}))
    return memories


def replay(conv: Conversation, store, batch: int = 128) -> dict[str, str]:
    """Write the timeline into ``store`` (embedding it); returns memory id -> dia_id."""
    memories = turn_memories(conv)
    for start in range(0, len(memories), batch):
        store.add(memories[start:start + batch])
    return {m.id: m.meta["dia_id"] for m in memories}


def ranked_turns(hits: Iterable, dia_of: dict[str, str], records=None) -> list[str]:
    """The distinct timeline turns (dia_ids) in the order recall ranks them.

    ``hits`` are recall hits (or memories); a turn stands for itself, any other memory for the turns
    in its ``source_ids`` (an image for the turn it came with, an episode for its turns), in order.
    """
    out: list[str] = []
    seen: set[str] = set()
    for h in hits:
        m = getattr(h, "memory", h)
        ids = [m.id] if m.type == MemoryType.TURN else list(m.source_ids)
        for memory_id in ids:
            dia = dia_of.get(memory_id)
            if dia is None and records is not None and m.type != MemoryType.TURN:
                src = records.get(memory_id)
                if src is not None and src.type != MemoryType.TURN:  # an episode over derived memories
                    ids.extend(s for s in src.source_ids if s not in ids)
                    continue
                dia = src.meta.get("dia_id") if src is not None else None
            if dia is not None and dia not in seen:
                seen.add(dia)
                out.append(dia)
    return out


def recall_at_k(ranked: list[str], evidence: list[str], k: int) -> float:
    """Share of the evidence turns found among the first k ranked distinct turns."""
    if not evidence:
        return 0.0
    top = set(ranked[:k])
    wanted = list(dict.fromkeys(evidence))
    return sum(1 for e in wanted if e in top) / len(wanted)


# --- answer scoring (LoCoMo's task_eval/evaluation.py, without its Porter stemming) ----------------

_ARTICLES = re.compile(r"\b(a|an|the|and)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text) -> str:
    """Lower-case, drop commas and punctuation, drop the articles (and 'and', as LoCoMo does)."""
    s = str(text).replace(",", "").lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def f1_tokens(prediction, truth) -> float:
    """Token F1 on the multisets of normalised whitespace tokens."""
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(truth).split()
    if not pred or not gold:
        return float(pred == gold)
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, answer, category: int) -> float:
    """LoCoMo's per-category F1: a multi-hop answer is scored per comma-separated sub-answer (each
    against the best-matching part of the prediction, then averaged); an open-domain answer counts up to
    its first ';'; the others are one token F1."""
    truth = str(answer)
    if category == 3:
        truth = truth.split(";")[0].strip()
    if category == 1:
        preds = [p.strip() for p in str(prediction).split(",")]
        golds = [g.strip() for g in truth.split(",")]
        return sum(max(f1_tokens(p, g) for p in preds) for g in golds) / len(golds)
    return f1_tokens(prediction, truth)


# --- summaries ------------------------------------------------------------------------------------


def by_category(rows: list[dict], key: str) -> dict[str, float | None]:
    """{"overall": mean, "1": mean, ..., "4": mean} over the rows that have ``key``."""
    out: dict[str, float | None] = {"overall": mean([r[key] for r in rows if r.get(key) is not None])}
    for c in CATEGORIES:
        out[str(c)] = mean([r[key] for r in rows if r["category"] == c and r.get(key) is not None])
    return out


def rounded(values: dict) -> dict:
    return {key: (round(v, 4) if isinstance(v, float) else v) for key, v in values.items()}


# --- the evaluation -------------------------------------------------------------------------------

EXTRA_KS = (5, 10, 25)
# The signals of issue 31 (core/links.py, core/kinds.py, recall's topic): `--ablate new` asks each question again
# without each of them.
NEW_SIGNALS = ("taste", "substance", "instance", "topic")


def ablations(names: str | None, weights: dict[str, float]) -> dict[str, dict[str, float]]:
    """``--ablate``: for each named signal (``new``: NEW_SIGNALS), the weights with that signal off."""
    from personavlm_cli.core.recall import WEIGHTS

    if not names:
        return {}
    chosen: list[str] = []
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        for one in (NEW_SIGNALS if name == "new" else (name,)):
            if one not in WEIGHTS:
                raise PersonaError(f"unknown signal '{one}' to ablate (use new or one of {', '.join(WEIGHTS)})")
            if one not in chosen:
                chosen.append(one)
    return {name: {**weights, name: 0.0} for name in chosen}


def recall_weights(signals: str | None, weight: list[str] | None, fusion: str) -> dict[str, float]:
    """Weights for recall: the chosen signals keep their weights (each 1.0 with rrf: the plain
    reciprocal-rank fusion of the reference figures), the others are off; ``weight`` (NAME=NUMBER
    items) overrides."""
    from personavlm_cli.core.recall import FUSIONS, WEIGHTS

    if fusion not in FUSIONS:
        raise PersonaError(f"unknown fusion '{fusion}' (use {' or '.join(FUSIONS)})")
    weights: dict[str, float] = {}
    if signals:
        chosen = [s.strip() for s in signals.split(",") if s.strip()]
        unknown = [s for s in chosen if s not in WEIGHTS]
        if unknown:
            raise PersonaError(f"unknown signal '{unknown[0]}' (use {', '.join(WEIGHTS)})")
        weights = {name: ((1.0 if fusion == "rrf" else WEIGHTS[name]) if name in chosen else 0.0) for name in WEIGHTS}
    for item in weight or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in WEIGHTS:
            raise PersonaError(f"bad --weight '{item}': use NAME=NUMBER with NAME one of {', '.join(WEIGHTS)}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise PersonaError(f"bad --weight '{item}': '{value}' is not a number") from None
    return weights


def plan_questions(convs: list[Conversation], limit: int | None) -> list[tuple[Conversation, list[Question]]]:
    """The scored questions of each conversation, at most ``limit`` in all (conversations left empty go)."""
    plan: list[tuple[Conversation, list[Question]]] = []
    left = limit
    for conv in convs:
        questions = [q for q in conv.questions if q.scored]
        if left is not None:
            questions = questions[:left]
            left -= len(questions)
        if questions:
            plan.append((conv, questions))
    return plan


@dataclass
class Answering:
    """What answering the questions needs (absent: recall only): the chat model, the settings the chat
    uses (``model.*``, ``chat.model_search``) and the retrieval mode."""

    model: object
    settings: object
    mode: str


@dataclass
class _Run:
    k: int
    pool: int
    weights: dict[str, float]
    fusion: str
    answering: Answering | None
    ablate: dict[str, dict[str, float]] = field(default_factory=dict)
    recall_ms: list[float] = field(default_factory=list)


def run(data: Path, plan: list[tuple[Conversation, list[Question]]], *, k: int, weights: dict[str, float],
        fusion: str, candidates: int | None, answering: Answering | None = None,
        progress: Progress | None = None, ablate: dict[str, dict[str, float]] | None = None) -> dict:
    """Replay each conversation of ``plan`` into a fresh temporary store and ask it its questions: recall@k
    (and more depths), and with ``answering`` the answer's token F1 and whether the evidence was in its
    prompt. ``ablate`` (from ``ablations``): each question is also recalled with each of those weights, and
    the report gets recall@k per category without each signal. Returns the report (figures per category and
    conversation, timings, one item per question)."""
    from personavlm_cli.adapters.text_encoder import TextEncoder
    from personavlm_cli.core.recall import CANDIDATES, WEIGHTS

    progress = progress or Progress()
    r = _Run(k=k, pool=candidates or CANDIDATES, weights=weights, fusion=fusion, answering=answering,
             ablate=dict(ablate or {}))
    used = {**WEIGHTS, **weights}
    started = time.perf_counter()
    rows: list[dict] = []
    per_conv: dict[str, dict] = {}
    encoder = TextEncoder()
    for conv, questions in plan:
        progress.describe(f"{conv.sample_id}: replaying")
        t0 = time.perf_counter()
        with scratch("personavlm-locomo-") as tmp:
            store = temporary_store(Path(tmp), encoder)
            try:
                dia_of = replay(conv, store)
                replay_s = time.perf_counter() - t0
                progress.describe(f"{conv.sample_id}: asking")
                t1 = time.perf_counter()
                conv_rows = []
                for q in questions:
                    conv_rows.append(_ask(r, store, conv, q, dia_of))
                    progress.advance(1)
                ask_s = time.perf_counter() - t1
            finally:
                store.close()
        rows.extend(conv_rows)
        per_conv[conv.sample_id] = {
            "turns": len(dia_of), "questions": len(conv_rows),
            "recall_at_k": mean([x["recall"] for x in conv_rows]),
            **({"f1": mean([x["f1"] for x in conv_rows]),
                "evidence_in_context": mean([x["evidence_in_context"] for x in conv_rows])}
               if answering is not None else {}),
            "replay_s": round(replay_s, 2), "questions_s": round(ask_s, 2),
            "total_s": round(time.perf_counter() - t0, 2),
        }

    recall_ms = r.recall_ms
    result = {
        "benchmark": "locomo",
        "data": str(data),
        "conversations": list(per_conv),
        "k": k,
        "questions": len(rows),
        "recall_at_k": rounded(by_category(rows, "recall")),
        "recall_at": {str(x): rounded(by_category(rows, f"recall@{x}")) for x in sorted({*EXTRA_KS, k})},
        "signals": [name for name, w in used.items() if w > 0] if fusion == "score" else
                   [name for name in ("dense", "keywords", "lexical", "image") if used.get(name, 0) > 0],
        "signals_seen": sorted({name for row in rows for name in row.pop("_signals")}),
        "weights": used,
        "fusion": fusion,
        "candidates": r.pool,
        "mode": "answer" if answering is not None else "retrieval-only",
        "timings": {
            "total_s": round(time.perf_counter() - started, 2),
            "recall_ms_mean": round(statistics.fmean(recall_ms), 2) if recall_ms else None,
            "recall_ms_p95": round(percentile(recall_ms, 95), 2) if recall_ms else None,
            "per_conversation": {c: {x: v[x] for x in ("replay_s", "questions_s", "total_s")}
                                 for c, v in per_conv.items()},
        },
        "per_conversation": {c: {x: (round(y, 4) if isinstance(y, float) else y) for x, y in v.items()
                                 if x not in ("replay_s", "questions_s", "total_s")} for c, v in per_conv.items()},
        "items": rows,
    }
    if r.ablate:
        result["ablation"] = {name: rounded(by_category([{"category": x["category"], "recall": x["without"][name]}
                                                         for x in rows], "recall")) for name in r.ablate}
    if answering is not None:
        result["f1"] = rounded(by_category(rows, "f1"))
        result["evidence_in_context"] = rounded(by_category(rows, "evidence_in_context"))
        tokens = [x["prompt_tokens"] for x in rows if x.get("prompt_tokens")]
        result["prompt_tokens_mean"] = round(statistics.fmean(tokens), 1) if tokens else None
        result["retrieval"] = answering.mode
        result["model"] = model_line(answering.model)
    return result


def _ask(r: _Run, store, conv: Conversation, q: Question, dia_of: dict[str, str]) -> dict:
    from personavlm_cli.core.recall import Query, recall

    k = r.k
    depth = max(k, *EXTRA_KS)
    t = time.perf_counter()
    hits = recall(store, Query(text=q.question), k=depth, candidates=r.pool, weights=r.weights, fusion=r.fusion)
    r.recall_ms.append((time.perf_counter() - t) * 1000)
    ranked = ranked_turns(hits, dia_of, store.records)
    row = {"_signals": {name for h in hits[:k] for name in h.signals},
           "conversation": conv.sample_id, "index": q.index, "category": q.category, "question": q.question,
           "evidence": q.evidence, "found": ranked[:k], "recall": recall_at_k(ranked, q.evidence, k)}
    for x in sorted({*EXTRA_KS, k}):
        row[f"recall@{x}"] = recall_at_k(ranked, q.evidence, x)
    if r.ablate:
        row["without"] = {}
        for name, weights in r.ablate.items():
            other = recall(store, Query(text=q.question), k=k, candidates=r.pool, weights=weights, fusion=r.fusion)
            row["without"][name] = recall_at_k(ranked_turns(other, dia_of, store.records), q.evidence, k)
    if r.answering is not None:
        llm = r.answering.model
        prediction, used = _answer(r, store, conv, q)
        in_prompt = ranked_turns(used, dia_of, store.records)
        usage = getattr(llm, "last_usage", None) or {}
        row.update(answer=q.answer, prediction=prediction, f1=token_f1(prediction, q.answer or "", q.category),
                   answer_used=[dia_of.get(m.id) for m in used if dia_of.get(m.id)],
                   evidence_in_context=recall_at_k(in_prompt, q.evidence, len(in_prompt) or 1),
                   prompt_tokens=usage.get("prompt_tokens"))
    return row


def _answer(r: _Run, store, conv: Conversation, q: Question) -> tuple[str, list]:
    """Ask the question through the chat's response stage (same mode and defaults), a day after the
    last session; nothing is stored, so one question never becomes memory for the next."""
    from personavlm_cli.core.assistant import Assistant
    from personavlm_cli.core.capability import choose_prompt_style
    from personavlm_cli.core.recall import recall
    from personavlm_cli.core.response_stage import Reasoning, ResponseStage

    llm, s = r.answering.model, r.answering.settings
    assistant = Assistant(store, llm, conv.speaker_a, profile=s["model.prompt_profile"],
                          vision=getattr(llm, "vision", False),
                          prompt_style=choose_prompt_style(s["model.prompt_style"], llm))
    at = conv.last_time + timedelta(days=1)
    ctx = assistant.context(q.question, at, [], [])
    stage = ResponseStage(llm, assistant.profile,
                          lambda query, n: recall(store, query, k=n, candidates=r.pool, weights=r.weights,
                                                  fusion=r.fusion),
                          assistant.expand,
                          model_search=s["chat.model_search"] and assistant.profile.style == "full")
    reasoning = Reasoning()
    pieces = stage.respond(ctx, reasoning, mode=r.answering.mode, max_tokens=min(int(s["model.max_tokens"]), 128),
                           temperature=0.0)
    try:
        answer = "".join(pieces).strip()
    except NoAnswer:  # an empty answer scores as one
        answer = ""
    return answer, list(reasoning.used)
