"""When a life changes: the newest statement wins, the older ones become the past.

A user's statement can make an older one past in two ways (``past_reason``):

- **announced**: it says a change ("moved", "switched", "no longer", "not ... anymore", "these days",
  "gave up", "sold", "passed away", ...) and names something the old statement said
  (``patterns.changes_what``: a shared content word, or the "from X" of "from X to Y");
- **a new value**: both fill the same single-valued *slot* of the same person with different values
  (``SLOTS``: where one lives, where one works or as what, how one gets to work, what one drinks, one's
  diet, one's shift, one's partner).

Both need the same subject: the user (first person), or the same named person of the user ("Lena
moved to Zurich" makes "my daughter Lena studies in Vienna" past, never "I live in Vienna").

What a past statement becomes:

- a learnt memory (semantic, procedural) is closed, as before (``valid_to``, ``superseded_by``);
- a raw user turn stays (it is the record of what was said, and "where did I live last year?" must
  find it) but carries ``meta["past"]`` = ``{"until", "by", "reason"}``. Recall demotes it (``rerank``)
  unless the question asks about the past, the prompt shows it as past ("until 15 March 2026"), and
  `memory search` and `/why` say so.

The assistant's own turns are not the user's word: ``rerank`` demotes them and never lets one outrank
a user's statement that shares a word with it (the prompt labels them "what you told the user").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from personavlm_cli.core import sentences as _sentences
from personavlm_cli.core.learning import grounding, patterns
from personavlm_cli.core.memory import Memory, MemoryType, from_iso

PAST_WEIGHT = 0.45  # a past statement's score is multiplied by this unless the question is about the past
ASSISTANT_WEIGHT = 0.7  # the assistant's own turns: recalled, labelled, below the user's word

_V = r"(?!(?:a|an|my|our|his|her|their|this|that|the|it|there|here)\b)([A-Za-z][\w'’.-]*(?:\s+(?-i:[A-Z])[\w'’.-]*){0,2})"
SLOTS: list[tuple[str, re.Pattern[str]]] = [
    ("home", re.compile(rf"\b(?:live|lives|living|moved|moving|relocated|relocating|settled|based|study|studies|"
                        rf"studying)\s+(?:in|to)\s+(?:the\s+)?{_V}", re.I)),
    ("workplace", re.compile(rf"\b(?:work|works|working|teach|teaches|teaching|employed)\s+(?:at|for)\s+(?:the\s+)?{_V}",
                             re.I)),
    ("job", re.compile(r"\b(?:work|works|working) as\s+(?:an?\s+)?([a-z][\w-]*(?:\s+[a-z][\w-]*)?)", re.I)),
    ("commute", re.compile(r"\b(cycle|cycling|bike|biking|walk|walking|drive|driving|run|running|take the \w+|"
                           r"taking the \w+|ride|riding|bus|train|tram|metro|subway|car|scooter)\b[^.!?]*?\bto work\b",
                           re.I)),
    ("drink", re.compile(r"\b(?:drink|drinking|drinks|my drink is|my go-to drink is|it's)\s+(?:a\s+|my\s+)?"
                         r"((?:(?:black|green|iced|hot|white|herbal|mint|oat|strong|sweet)\s+)?"
                         r"(?:coffee|tea|espresso|latte|lattes|cappuccino|green tea|black tea|matcha|water|juice|"
                         r"cola|coke|sprite|beer|wine|milk|chai|mocha|americano|flat white|decaf))\b", re.I)),
    ("diet", re.compile(r"\b(vegetarian|vegan|pescatarian|carnivore|omnivore|keto|gluten-free)\b", re.I)),
    ("shift", re.compile(r"\b(day|night|morning|evening|late|early|weekend)\s+shifts?\b", re.I)),
    ("partner", re.compile(r"\bmy\s+(?:husband|wife|partner|boyfriend|girlfriend|fiance|fiancee|fiancé|fiancée)"
                           r"\s*,?\s+((?-i:[A-Z])\w+)", re.I)),
]
# The words that state each slot, whatever its value: a new value's older statements are found by them
# too, not only by sharing words or meaning with the new statement ("We relocated to Braga" and "I live in
# Porto with my cat" share neither, and in a long history the old one is not among the nearest).
SLOT_WORDS = {
    "home": "live lives living moved relocated settled based study studies",
    "workplace": "work works working teach teaches employed",
    "job": "work works working job",
    "commute": "work commute cycle bike walk drive bus train tram metro car",
    "drink": "drink drinks coffee tea espresso latte lattes cappuccino matcha juice beer wine milk",
    "diet": "vegetarian vegan pescatarian keto gluten",
    "shift": "shift shifts",
    "partner": "husband wife partner boyfriend girlfriend fiance fiancee",
}
PAST_QUESTION = re.compile(
    r"\b(did|was|were|used to|before|previously|formerly|earlier|back then|at the time|ago|last (?:year|month|"
    r"week|summer|winter|spring|autumn|time)|in (?:19|20)\d\d|former|originally|history)\b", re.I)
_CUE = patterns.CHANGE


def slots(sentence: str) -> dict[str, str]:
    """The single-valued slots ``sentence`` fills, with their values (lower-cased, light-stemmed)."""
    out = {}
    for name, pattern in SLOTS:
        m = pattern.search(sentence)
        if m:
            value = m.group(1).lower().replace("the ", "").strip(" .,;:!'’")
            out[name] = " ".join(grounding.stem(w) for w in value.split())
    return out


def subject(sentence: str, people: tuple[str, ...] = ()) -> str:
    """Who the sentence is about: the user ("i": an "I" or "we" among its first words, "Ama and I"
    included), else a named person of the user's ("lena"), else a relation ("sister"), else the user."""
    said = grounding.words(sentence)[:6]
    if any(w in ("i", "i'm", "we", "we're", "i've", "we've", "i'd", "we'd") for w in said):
        return "i"
    names = {p.lower() for p in people}
    for w in said:
        if w in names:
            return w
    m = re.match(rf"^\W*(?:my|our)\s+(?:\w+\s+)?({patterns._REL}|{patterns._ANI})\b", sentence, re.I)
    return m.group(1).lower() if m else "i"


# Words of a slot's frame, not of its value: sharing them does not make two statements one fact
# ("I love my work colleagues" and "these days I walk to work").
FRAME = frozenset([
    "work", "works", "working", "job", "live", "lives", "living", "shift", "shifts", "drink", "drinks", "home", "day",
    "days",
])


def _names_the_old(new: str, old: str) -> bool:
    """``patterns.changes_what`` without the frame words: the change names what the old one said."""
    m = patterns.FROM_TO.search(new)
    if m:
        return patterns.changes_what(new, old)
    stem = grounding.stem
    shared = {stem(w) for w in grounding.content_words(new)} & {stem(w) for w in grounding.content_words(old)}
    return bool(shared - {stem(w) for w in FRAME}) and patterns.changes_what(new, old)


def past_reason(new: str, old: str, people: tuple[str, ...] = ()) -> str | None:
    """Why ``new`` (a later statement) makes ``old`` past, or None when both stand."""
    if subject(new, people) != subject(old, people):
        return None
    new_slots, old_slots = slots(new), slots(old)
    for name, value in new_slots.items():
        if name in old_slots and old_slots[name] != value and value not in old_slots[name]:
            return f"a newer {name}: {value}"
    cue = _CUE.search(new)
    if not cue:
        return None
    if new_slots and old_slots and not set(new_slots) & set(old_slots):
        return None  # the change is of a kind the old one does not state: "take the tram to work" vs "work as"
    if _names_the_old(new, old) or set(new_slots) & set(old_slots):
        return f"a change was announced ('{cue.group(0).lower()}')"
    return None


def is_statement(sentence: str) -> bool:
    """A sentence that states something (not a question, request, hypothetical or small talk)."""
    return _sentences.is_statement(sentence) and len(grounding.content_words(sentence)) >= 2


def about_the_past(text: str) -> bool:
    """Does a question ask about the past ("where did I live last year?"): past statements then stay."""
    return bool(PAST_QUESTION.search(text or ""))


def until(m: Memory) -> str | None:
    """When ``m`` stopped being true: its ``valid_to`` (a closed learnt memory) or a past turn's mark."""
    past = (m.meta or {}).get("past") if m.type in (MemoryType.TURN, MemoryType.EPISODIC) else None
    if past and past.get("until"):
        return str(past["until"])
    return m.valid_to if m.type in (MemoryType.SEMANTIC, MemoryType.PROCEDURAL, MemoryType.EPISODIC, MemoryType.CORE) else None


def until_text(m: Memory) -> str | None:
    """"15 March 2026" for a past memory, else None."""
    when = until(m)
    if not when:
        return None
    try:
        d: datetime = from_iso(when)
    except ValueError:
        return when[:10]
    return f"{d.day} {d.strftime('%B %Y')}"


def is_assistants(m: Memory) -> bool:
    """The assistant's own turn (not an imported transcript's, which names its speaker)."""
    return m.type == MemoryType.TURN and m.role == "assistant" and not (m.meta or {}).get("speaker")


def rerank(fused: dict[str, float], memories: dict[str, Memory], query_text: str,
           signals: dict[str, dict[str, Any]], fetch: Callable[[list[str]], list[Memory]] | None = None) -> None:
    """Demote past statements (unless the question asks about the past) and the assistant's own turns,
    in place; an assistant turn never stays above a user statement that shares a content word with it.
    Each demotion is written into the memory's ``signals`` (``past``, ``assistant``): `/why` and
    `memory search --explain` show it."""
    keep_past = about_the_past(query_text)
    for memory_id, m in list(memories.items()):
        if memory_id not in fused:
            continue
        if until(m) and not keep_past and m.type in (MemoryType.TURN, MemoryType.EPISODIC):
            before = fused[memory_id]
            fused[memory_id] *= PAST_WEIGHT
            past = (m.meta or {}).get("past") or {}
            signals.setdefault(memory_id, {})["past"] = {
                "rank": 0, "score": PAST_WEIGHT, "until": (until(m) or "")[:10], "by": past.get("by"),
                "reason": past.get("reason", "superseded")}
            # The statement that made it past comes in, above it: the newest word wins.
            newer = past.get("by")
            if newer and newer not in fused and fetch is not None:
                found = fetch([newer])
                if found:
                    memories[newer] = found[0]
                    fused[newer] = 0.0
                    signals.setdefault(newer, {})["newer"] = {"rank": 0, "score": 1.0}
            if newer in fused and fused[newer] <= fused[memory_id]:
                fused[newer] = max(fused[newer], before)
                fused[memory_id] = min(fused[memory_id], fused[newer] * 0.99)
        if is_assistants(m):
            fused[memory_id] *= ASSISTANT_WEIGHT
            signals.setdefault(memory_id, {})["assistant"] = {"rank": 0, "score": ASSISTANT_WEIGHT}
    users = [(i, grounding.content_words(m.text)) for i, m in memories.items()
             if i in fused and not is_assistants(m) and m.type in (MemoryType.TURN, MemoryType.SEMANTIC, MemoryType.PROCEDURAL)
             and (m.type != MemoryType.TURN or m.role == "user")]
    for memory_id, m in memories.items():
        if memory_id not in fused or not is_assistants(m):
            continue
        mine = grounding.content_words(m.text)
        rivals = [fused[i] for i, words in users if words & mine]
        if rivals and fused[memory_id] >= min(rivals):
            fused[memory_id] = min(rivals) * 0.99


GONE = re.compile(r"\b(passed away|died|ran away|was put down|put to sleep|broke up|divorced|split up|we lost|i lost|"
                  r"no longer have|gave away|rehomed)\b", re.I)


def gone_items(sentence: str, facts: dict[str, str]) -> list[tuple[str, str]]:
    """Items of the profile's family and pets that ``sentence`` says are gone ("Churro passed away"):
    (field, item) pairs, the item as the profile holds it ("cat Churro")."""
    clause = next((c for c in re.split(r"[,;]|\bbut\b|\band\b", sentence) if GONE.search(c)), None)
    if clause is None:
        return []
    said = set(grounding.words(clause))
    out = []
    for name in ("family", "pets"):
        for item in filter(None, (facts.get(name) or "").split(", ")):
            person = item.split()[-1].lower()
            if person in said:
                out.append((name, item))
    return out


def mark_past(turn: Memory, by: Memory, reason: str) -> bool:
    """Mark the user turn ``turn`` as past (stated again differently in ``by``); False if it already is."""
    meta = dict(turn.meta or {})
    if meta.get("past"):
        return False
    meta["past"] = {"until": by.occurred_at, "by": by.id, "reason": reason}
    turn.meta = meta
    return True
