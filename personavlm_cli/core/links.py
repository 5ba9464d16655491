"""What recall adds for questions whose answer is spread over several moments (issue 31).

Two re-ranking signals over recall's fused candidates, each a rule or a statistic (no model call
before the answer), each with its weight in ``recall.WEIGHTS`` (0 turns it off) and its name in a
hit's ``signals``, so ``/why`` and ``memory search --explain`` say why a memory came:

- ``taste``: an inference question ("would", "likely", "what kind of", "might", "prefer") is answered
  by what its subject said about themselves, their tastes, plans and habits, not by what others said
  to them. Among the subject's own memories (the turns of the speaker the question names, or the
  user's turns and learnt memories when it asks about "I"/"my"), a turn scores by the share of its
  personal pronouns that are first person ("I", "my", "we", "our" against "you", "your"): "We always
  look forward to our family camping trip" over "Wow, that painting of yours is awesome!". A learnt
  memory about the user scores 1.
- ``substance``: a turn with almost no content words ("Thanks, Gina!", "Cool! What did it look like?")
  is demoted: short turns win BM25 on a name alone (its length normalisation favours them) yet hold no
  fact. Below ``SUBSTANCE_WORDS`` content words a turn loses a share of the weight in proportion to
  what it lacks (its score in ``signals`` is what it took, a negative number); other memories (learnt
  facts are short on purpose) are left as they are.

Two helpers of recall's ``topic`` query (``core/recall.py``): the speaker a hypothetical question
("would", "likely") names (``subject``), and the question without that name (``without_subject``).

Measured on LoCoMo's development split (docs/benchmarks.md, "Recall for answers spread over several
moments"): ``taste`` takes open-domain recall@10 from 0.455 to 0.591 and changes no other category;
``substance`` adds about 0.02 on multi-hop and single-hop. Per-part sub-queries, neighbour expansion
(the reply after a hit), a per-session cap and per-sentence vectors were measured too and are not here
(the figures are in the same section).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from typing import Any

from personavlm_cli.core.memory import Memory, MemoryType

# Question words of an inference: what the subject would do, like or be, asked of what they said.
INFERENCE = re.compile(
    r"\b(would|likely|might|could|prefer|interested|enjoy|kind of|type of|sort of|be into|considered?)\b", re.I)
# The narrower kind: a judgement of what someone would do or be ("would", "likely"), not "what kind of X did
# they ...", which asks for a fact (topic's question, core/recall.py).
HYPOTHETICAL = re.compile(r"\b(would|likely|unlikely|might|could|probably)\b", re.I)
_FIRST = re.compile(r"\b(i|i'm|i've|i'd|i'll|im|ive|my|me|mine|myself|we|we're|we've|we'd|we'll|our|ours|us)\b",
                    re.I)
_SECOND = re.compile(r"\b(you|you're|you've|you'd|you'll|your|yours|yourself|ya|u)\b", re.I)
_USER_WORDS = re.compile(r"\b(i|me|my|mine|myself|i'm|i've|i'd)\b", re.I)
_PHOTO = re.compile(r"\[shares a photo:[^\]]*\]")
_WORD = re.compile(r"\w+", re.UNICODE)

SUBSTANCE_WORDS = 10  # content words from which a turn counts as holding something
# Both off: for a caller that gathers candidates to check each by rule (the learner looking for the older
# statements a new one makes past, core/learning/learner.py), where a prior on what answers a question only reorders.
OFF = {"taste": 0.0, "substance": 0.0}
LEARNT = (MemoryType.CORE, MemoryType.SEMANTIC, MemoryType.PROCEDURAL, MemoryType.EPISODIC)


def is_inference(text: str) -> bool:
    """Does the question ask what someone would do, like or be (answered from what they said)?"""
    return bool(INFERENCE.search(text or ""))


def is_hypothetical(text: str) -> bool:
    """Does the question ask for a judgement of what someone would do, like or be ("would", "likely")?"""
    return bool(HYPOTHETICAL.search(text or ""))


def asks_about_user(text: str) -> bool:
    """Is the question about the user themselves ("would I", "my")?"""
    return bool(_USER_WORDS.search((text or "").replace("’", "'")))


def spoken(memory: Memory) -> str:
    """A turn's own words: without a "Name: " prefix of a transcript or a shared photo's caption."""
    text = memory.text
    speaker = (memory.meta or {}).get("speaker")
    if speaker and text.startswith(f"{speaker}:"):
        text = text[len(speaker) + 1:]
    return _PHOTO.sub(" ", text)


def first_person(memory: Memory) -> float:
    """The share of a memory's personal pronouns that are first person (0 when it has none)."""
    words = spoken(memory).replace("’", "'")
    first, second = len(_FIRST.findall(words)), len(_SECOND.findall(words))
    return first / (first + second) if first + second else 0.0


def content_words(memory: Memory, stop_words: Collection[str], limit: int = SUBSTANCE_WORDS) -> int:
    """How many distinct content words (not in ``stop_words``, recall's own list) a memory's own words
    hold, counted up to ``limit`` (recall looks at a few hundred candidates: a long turn stops early)."""
    seen: set[str] = set()
    for m in _WORD.finditer(spoken(memory)):
        word = m.group().lower()
        if word not in stop_words and (len(word) > 1 or word.isdigit()):
            seen.add(word)
            if len(seen) >= limit:
                break
    return len(seen)


def taste_score(memory: Memory, named: bool, about_user: bool) -> float:
    """The ``taste`` signal of one memory for an inference question (see the module)."""
    if memory.type == MemoryType.TURN:
        if named or (about_user and memory.role == "user" and not (memory.meta or {}).get("speaker")):
            return first_person(memory)
        return 0.0
    if about_user and memory.type in LEARNT and not named:
        return 1.0
    return 0.0


def names_speaker(memory: Memory, words: Collection[str]) -> bool:
    """Is ``memory`` a turn whose speaker the question names (``words``: its lower-cased words): the speaker's
    first name, or every part of it?"""
    name = (memory.meta or {}).get("speaker") if memory.type == MemoryType.TURN else None
    parts = [w.lower() for w in _WORD.findall(str(name or ""))]
    return bool(parts) and (parts[0] in words or all(p in words for p in parts))


def subject(memories: Iterable[Memory], words: Collection[str]) -> str | None:
    """The speaker the question names, among the turns of ``memories`` that name their speaker (a
    transcript's; the chat's own turns name none): the first one found."""
    return next((str(m.meta["speaker"]) for m in memories if names_speaker(m, words)), None)


def without_subject(text: str, speaker: str) -> str:
    """The question with its subject's name taken out ("Would Melanie enjoy Vivaldi?" → "Would enjoy
    Vivaldi?"): every turn of the speaker is about her, so her name says nothing of which one answers."""
    out = text.replace("\u2019", "'")
    for part in _WORD.findall(speaker):
        out = re.sub(rf"\b{re.escape(part)}(?:'s)?\b", " ", out, flags=re.I)
    return re.sub(r"\s+", " ", out).strip()


def substance_penalty(memory: Memory, stop_words: Collection[str]) -> float:
    """Between 0 and 1: how far a turn is from ``SUBSTANCE_WORDS`` content words (0 for other memories)."""
    if memory.type != MemoryType.TURN:
        return 0.0
    return max(0.0, 1.0 - content_words(memory, stop_words) / SUBSTANCE_WORDS)


def apply(fused: dict[str, float], signals: dict[str, dict[str, Any]], memories: dict[str, Memory], query_text: str,
          weights: dict[str, float], named: Callable[[Memory], bool],
          stop_words: Collection[str]) -> None:
    """Add ``taste`` and take ``substance`` from the fused scores of ``memories`` (recall's candidates
    that could reach the first k), in place; each change is recorded in ``signals``. ``named(memory)``
    says whether the memory's speaker is named in the query; ``stop_words`` are recall's."""
    w_taste = max(weights.get("taste", 0.0), 0.0) if is_inference(query_text) else 0.0
    w_substance = max(weights.get("substance", 0.0), 0.0)
    about_user = w_taste > 0 and asks_about_user(query_text)
    for memory_id, memory in memories.items():
        if memory_id not in fused:
            continue
        if w_taste:
            score = taste_score(memory, named(memory), about_user)
            if score > 0:
                fused[memory_id] += w_taste * score
                signals.setdefault(memory_id, {})["taste"] = {"rank": 1, "score": round(score, 4)}
        if w_substance:
            lack = substance_penalty(memory, stop_words)
            if lack > 0:
                fused[memory_id] -= w_substance * lack
                # The score shown (`--explain`, `/why`) is what was taken: negative.
                signals.setdefault(memory_id, {})["substance"] = {"rank": 1, "score": round(-w_substance * lack, 4)}
