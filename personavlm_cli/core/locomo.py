"""LoCoMo (Maharana et al., ACL 2024) as an evaluation of recall and answers.

A LoCoMo conversation is replayed into a fresh store as a timeline: each session at its real date,
the turns of a session one minute apart, speaker A as the user and speaker B as the assistant, each
turn's image caption kept with its text and its ``dia_id`` kept in the memory's meta. Then every
question of categories 1-4 is asked of the recall (``recall_at_k``: the share of the question's
evidence turns among the first k distinct timeline turns recall ranks) and, optionally, of the
chat model through the real response stage (``token_f1`` as LoCoMo's own evaluation computes it).

Nothing here knows anything about particular questions: the loader, the replay and the scoring
are the same for any conversation in LoCoMo's format.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable

from personavlm_cli.core.errors import PersonaError
from personavlm_cli.core.memory import Memory, iso, new_id

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
        return turns[-1].at if turns else datetime(2000, 1, 1, tzinfo=timezone.utc)


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
    return datetime(int(year), matches[0] + 1, int(day), h, int(minute), tzinfo=timezone.utc)


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
    created = iso(datetime.now(timezone.utc).replace(microsecond=0))
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
        ids = [m.id] if m.type == "turn" else list(m.source_ids)
        for memory_id in ids:
            dia = dia_of.get(memory_id)
            if dia is None and records is not None and m.type != "turn":
                src = records.get(memory_id)
                if src is not None and src.type != "turn":  # an episode over derived memories
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


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def by_category(rows: list[dict], key: str) -> dict[str, float | None]:
    """{"overall": mean, "1": mean, ..., "4": mean} over the rows that have ``key``."""
    out: dict[str, float | None] = {"overall": mean([r[key] for r in rows if r.get(key) is not None])}
    for c in CATEGORIES:
        out[str(c)] = mean([r[key] for r in rows if r["category"] == c and r.get(key) is not None])
    return out
