"""Evidence for the Big Five: which sentences of a message say something about the user that bears on a
trait, and which way (``personavlm profile why TRAIT`` shows them).

A greeting, a factual question, a coding request or a recipe says nothing about its writer's
personality, and even trained models reach a correlation of about 0.4 with self-report after hundreds of
words. So the first decision is when *not* to move. A sentence is evidence only when it passes three gates:

1. **It is about the user**: a statement (not a question or a request to the assistant) with a
   first-person singular word (I, me, my, ...).
2. **It bears on a trait**: its embedding (the shipped MiniLM text encoder) is close to a marker of
   that trait: the public-domain IPIP Big-Five items (``data/ipip/big_five_markers.json``) and the paper's
   own descriptors (Table 10, ``personality.DESCRIPTORS``), at least ``MIN_SIMILARITY``.
3. **More than it bears on nothing**: it is closer to that marker than to any of ``NEUTRAL_ANCHORS``
   (first-person statements with no trait in them: "I need help with my code", "I have a cat") by
   ``MIN_MARGIN``.

Direction comes from the markers' keys. Sentence embeddings barely tell "I enjoy parties" from "I don't
enjoy parties", so polarity is taken out before embedding, on both sides: negations ("not", "n't",
"never", "rarely", "nothing", ...) are rewritten to the plain positive form and counted, and so are
words of dislike ("hate", "bores me", "wears me out") and words of the negative end of a judgement, a
small antonym lexicon ("boring" -> "exciting", "exhausting" -> "energising", "rude" -> "polite",
"anxious" -> "calm"; several in one statement count once: they reinforce, they do not cancel). An odd
count flips the direction. "I don't enjoy parties" becomes "I enjoy parties", flipped: extraversion
down; "Parties are exhausting" becomes "Parties are energising", flipped. The item "Don't talk a lot"
(extraversion, keyed minus) becomes "I talk a lot", keyed plus, by the same rule. Only the main
statement's negations count: "I never help people who don't help me" has one, and "no matter what",
"for no reason", "can't stop worrying" have none. A sentence of two statements, each with its own "I"
("I never miss a deadline, I start early"), is read as two.

Which end of its trait a statement is on: the mean similarity to the ``POLE_VOTERS`` nearest markers of
the high end against the same of the low end (one nearest marker alone is too often the opposite end on
the same topic), unless the nearest marker of one end leads the other end's by ``NEAREST_LEAD`` (a near
paraphrase of one marker decides). The markers are the IPIP items, the paper's descriptors, and the
project's own everyday descriptions of each end (``data/personality/markers.json``: "I always arrive on
time", "Parties make me tired"), which reach the behaviour people report ("I finished my tax return a
month early") that the questionnaire's abstract items do not.

Everything here (markers, lexicon, thresholds) was chosen on development writers only
(``shared/data/personality/dev.json``, ``data/personality/tuning.json``, ``development.json``); the
held-out writers (``heldout.json``, ``heldout2.json``) measure it (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from personavlm_cli.core.memory import TRAITS

if TYPE_CHECKING:
    from personavlm_cli.core.ports import TextEncoder

MARKERS_PATH = Path(__file__).resolve().parent.parent / "data" / "ipip" / "big_five_markers.json"
# the project's own everyday descriptions of each end of each trait (behaviour, feelings, tastes)
EVERYDAY_PATH = Path(__file__).resolve().parent.parent / "data" / "personality" / "markers.json"

MIN_SIMILARITY = 0.50  # cosine to the nearest marker (MiniLM); 0.45 let plain facts through ("I went to
# the gym this morning" -> "Get bored by routine") on the development neutral writers
MIN_MARGIN = 0.06  # ... above the nearest neutral anchor
FULL_SIMILARITY = 0.65  # at or above this a statement counts with weight 1; at MIN_SIMILARITY, 0.5
POLE_VOTERS = 3  # nearest markers of each end compared (1 and 2 did worse on the development writers)
NEAREST_LEAD = 0.10  # the nearest marker decides alone when it leads the other end's nearest by this
MAX_SENTENCES = 12  # a long paste is not a self-description: only its first sentences are read
MAX_SENTENCE_CHARS = 400

# First-person statements that carry no trait: what the user says about themselves all the time
# without telling anything about their personality (facts, plans, tasks, requests).
NEUTRAL_ANCHORS = (
    "I need help with my code.", "I am writing a Python script.", "I have a question about my homework.",
    "I am looking for a recipe for dinner.", "I am cooking pasta tonight.", "I have a meeting tomorrow at 3pm.",
    "I live in a city.", "I bought a new phone.", "I have a cat.", "My name is Alex.", "I work as an accountant.",
    "I am travelling for work this week.", "I had a sandwich for lunch.", "I am using a laptop.",
    "I need to buy groceries.", "My sister's birthday is next week.", "I just got home.",
    "I am reading a book about history.", "I want to learn how this works.", "I need a translation.",
    "I am fine, thanks.", "I watched the news.", "My train leaves at eight.", "I am planning a trip to Spain.",
    # second round: schedules, clothes, health and errands, which the everyday markers come near
    "I have an exam on Friday.", "I have a doctor's appointment.", "I am wearing a new shirt today.",
    "I have a cold.", "My back hurts.", "I am going to the shops later.", "I am taking driving lessons.",
    "I have a presentation at work tomorrow.", "I got a haircut.", "I cleaned the kitchen this morning.",
)

_FIRST_PERSON = re.compile(r"\b(i|i'm|i've|i'd|i'll|im|ive|me|my|myself|mine)\b", re.I)
_REQUEST = re.compile(r"^\s*(please\b|can you|could you|would you|will you|help me|give me|tell me|show me|"
                      r"let me know|write\b|fix\b|translate\b|summari[sz]e\b|explain\b|list\b|draft\b|"
                      r"convert\b|remind me|make me|find\b|what\b|how\b|why\b|when\b|where\b|who\b|which\b)",
                      re.I)
_SENTENCE = re.compile(r"[^.!?;\n]+[.!?;]*")

# Negations: the word, and what the positive form puts in its place.
_NEGATIONS = {
    "not": "", "never": "", "no": "", "rarely": "", "seldom": "", "hardly": "", "barely": "",
    "nothing": "something", "nobody": "somebody", "none": "some", "neither": "", "nor": "",
    "cannot": "can", "can't": "can", "won't": "will", "don't": "", "doesn't": "", "didn't": "",
    "isn't": "is", "aren't": "are", "wasn't": "was", "weren't": "were", "couldn't": "could",
    "wouldn't": "would", "shouldn't": "should", "haven't": "have", "hasn't": "has", "hadn't": "had",
    "without": "",
    "ain't": "am", "dont": "", "doesnt": "", "didnt": "", "cant": "can", "wont": "will", "isnt": "is",
}
# Words of dislike: the word (or phrase), and its positive counterpart.
_DISLIKE = [
    (r"\bhate(s|d)?\b", "love"), (r"\bdislike(s|d)?\b", "like"), (r"\bdetest(s|ed)?\b", "love"),
    (r"\bcan(no|')?t stand\b", "like"), (r"\bavoid(s|ed)?\b", "seek"),
    (r"\b(bore|bores|bored) me\b", "excite me"), (r"\b(annoy|annoys|annoyed|irritate|irritates) me\b", "please me"),
    (r"\b(drain|drains|drained|exhaust|exhausts|exhausted|tire|tires|tired) me( out)?\b", "energise me"),
    (r"\b(wear|wears|wore) me out\b", "energise me"), (r"\b(make|makes|made) me tired\b", "energise me"),
    (r"\bbore(s)? me to tears\b", "excite me"),
    (r"\bis not my thing\b", "is my thing"), (r"\baren't my thing\b", "are my thing"),
    (r"\bwaste of time\b", "good use of time"), (r"\bnonsense\b", "wonderful"), (r"\bpointless\b", "worthwhile"),
]
# Words of the negative end of a judgement and their positive counterparts (a small antonym lexicon: the
# valence of a sentence, which sentence embeddings barely carry): "Parties are tiring" reads as "Parties
# are energising", reversed; "I'm so messy" as "I'm so tidy", reversed. Counted with the words of dislike
# (once per statement); the markers are rewritten by the same rule, so both sides agree. Event verbs
# ("forgot", "lost", "late") are left out: the markers say them plainly, and "late at night" is no fault.
_ANTONYMS = [
    (r"\b(boring|dull)\b", "exciting"), (r"\bbored\b", "excited"),
    (r"\b(tiring|exhausting|draining)\b", "energising"), (r"\b(hard|difficult)( for me)? to\b", "easy to"),
    (r"\b(ugly|hideous)\b", "beautiful"), (r"\b(awful|terrible|horrible|garbage|rubbish)\b", "great"),
    (r"\b(stupid|idiots?)\b", "clever"), (r"\b(rude)\b", "polite"), (r"\b(harsh)\b", "gentle"),
    (r"\bselfish\b", "generous"), (r"\blazy\b", "hard-working"), (r"\b(messy|untidy|cluttered)\b", "tidy"),
    (r"\b(disorganised|disorganized)\b", "organised"), (r"\bcareless\b", "careful"),
    (r"\b(anxious|nervous|worried|tense|stressed|panicky|scared|afraid|frightened|terrified)\b", "calm"),
    (r"\b(sad|depressed|miserable|unhappy)\b", "happy"), (r"\b(angry|irritated|furious|grumpy)\b", "calm"),
    (r"\binsecure\b", "secure"), (r"\bshy\b", "outgoing"), (r"\bunfriendly\b", "friendly"),
]


@dataclass(frozen=True)
class Marker:
    trait: str
    key: int  # +1: agreeing raises the trait
    text: str  # as published
    source: str
    base: str = ""  # the positive first-person form that is embedded
    flipped: bool = False  # the base form reverses the published text: its key counts negated
    shown: str = ""  # the published text in the first person: what `profile why` shows


@dataclass(frozen=True)
class Evidence:
    """One sentence that bears on one trait."""

    trait: str
    start: int  # the sentence's span in the message
    end: int
    direction: float  # +1 raises the trait, -1 lowers it
    weight: float  # 0.5 .. 1: how clearly it bears on the trait
    similarity: float
    marker: str  # the nearest marker, as published, in the first person
    negated: bool  # the statement says the opposite of that marker

    def as_dict(self) -> dict[str, Any]:
        return {"trait": self.trait, "start": self.start, "end": self.end, "direction": self.direction,
                "weight": round(self.weight, 4), "similarity": round(self.similarity, 4), "marker": self.marker,
                "negated": self.negated}


# Phrases with a negative word that negate nothing about the user ("for no reason", "no matter what") or
# that say the positive ("can't stop worrying" = keep worrying, "don't mind" = like): rewritten, not counted.
_NOT_NEGATIONS = [
    (r"\bno matter\b", "whatever"), (r"\bfor no (good )?reason\b", "for some reason"), (r"\bno doubt\b", "surely"),
    (r"\bnot only\b", ""), (r"\bnot just\b", ""), (r"\bnothing but\b", "only"), (r"\bno wonder\b", "so"),
    (r"\b(can(no|')?t|cannot|couldn't|could not) (stop|help)\b", "keep"),
    (r"\b(do|does|did)(n't| not) mind\b", "like"),
]
# Where the main statement's scope ends: a negation after one of these words is in a subordinate clause
# ("I trust people until they give me a reason not to"; "I'm so nervous I can't think"), once the main
# clause has its subject.
_SCOPE_END = {"who", "that", "which", "when", "whenever", "until", "till", "because", "if", "unless", "than",
              "where", "while", "before", "after", "since", "though", "although", "even", "whether", "once",
              "so", "but", "as", "like", ",", ";", ":", "-", "—"}
_SUBJECT = {"i", "i'm", "im", "i've", "ive", "i'd", "i'll"}


def positive_form(sentence: str, antonyms: bool = True) -> tuple[str, int]:
    """The sentence with its negations, words of dislike and (with ``antonyms``) words of the negative end
    of a judgement rewritten to the plain positive form, and how many reversals that made (an odd count
    reverses what the sentence says; the words of dislike and judgement count once together). Only the main statement's
    negations count: one in a clause that follows it ("people who don't help me", "... I can't think
    straight") is left as written."""
    text = sentence.replace("\u2019", "'").replace("\u2018", "'")
    for pattern, repl in _NOT_NEGATIONS:
        text = re.sub(pattern, repl, text, flags=re.I)
    tokens = re.findall(r"[\w'](?:[\w'-]*[\w'])?|[^\w\s']+", text)
    # the main statement: up to the first subordinate word (or a second "I") after its subject
    main_end, subject_seen = len(tokens), False
    for i, tok in enumerate(tokens):
        low = tok.lower()
        if subject_seen and (low in _SCOPE_END or (low in _SUBJECT and i > 0)):
            main_end = i
            break
        if low in _SUBJECT or low in ("me", "my", "myself"):
            subject_seen = True
    main, rest = " ".join(tokens[:main_end]), " ".join(tokens[main_end:])
    valence = 0  # words of dislike and of the negative end: several in one statement reinforce, they count once
    for pattern, repl in _DISLIKE + (_ANTONYMS if antonyms else []):
        main, n = re.subn(pattern, repl, main, flags=re.I)
        valence += n
    count = min(valence, 1)
    words = []
    tokens = re.findall(r"[\w'](?:[\w'-]*[\w'])?|[^\w\s']+", main)
    for i, tok in enumerate(tokens):
        low = tok.lower()
        if low == "no" and (i + 1 >= len(tokens) or not re.match(r"\w", tokens[i + 1])):
            words.append(tok)  # "No, ..." answers; it does not negate what follows
        elif low in _NEGATIONS:
            count += 1
            if _NEGATIONS[low]:
                words.append(_NEGATIONS[low])
        elif low == "longer" and words and count and tokens[i - 1].lower() == "no":
            continue  # "no longer": the "no" was the negation
        else:
            words.append(tok)
    out = " ".join(words + ([rest] if rest else []))
    out = re.sub(r"\s+([,.!?;:])", r"\1", out)
    return re.sub(r"\s+", " ", out).strip(), count


def sentences(text: str) -> list[tuple[int, int]]:
    """Spans of the message's sentences (at most ``MAX_SENTENCES``)."""
    spans = []
    for m in _SENTENCE.finditer(text):
        s, e = m.start(), m.end()
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e - s >= 3:
            spans.append((s, min(e, s + MAX_SENTENCE_CHARS)))
        if len(spans) >= MAX_SENTENCES:
            break
    return spans


_CLAUSE_BREAK = re.compile(r"\s*(?:[,;:\u2013\u2014-]\s*(?:and |but |so )?|\s(?:and|but|so) )"
                           r"(?=(?:i|i'm|i've|i'd|i'll)\b)", re.I)


def clauses(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """A sentence's spans of statements joined with their own "I" ("I never miss a deadline, I start
    early": two statements, the negation belongs to the first). Each is read on its own."""
    out, s = [], start
    for m in _CLAUSE_BREAK.finditer(text, start, end):
        if m.start() > s:
            out.append((s, m.start()))
        s = m.end()
    out.append((s, end))
    return [(a, b) for a, b in out if len(text[a:b].split()) >= 2]


def about_the_user(sentence: str) -> bool:
    """A statement about the writer: a first-person singular word, not a question, not a request."""
    s = sentence.strip()
    if not s or s.endswith("?") or _REQUEST.match(s):
        return False
    return _FIRST_PERSON.search(s) is not None


def load_markers() -> list[Marker]:
    from personavlm_cli.core.personality import DESCRIPTORS

    data = json.loads(MARKERS_PATH.read_text(encoding="utf-8"))
    raw = [(t, int(k), text, src) for t, k, text, src in data["items"]]
    if EVERYDAY_PATH:
        raw += [(t, int(k), text, src) for t, k, text, src in
                json.loads(EVERYDAY_PATH.read_text(encoding="utf-8"))["items"]]
    for trait, (low, high) in DESCRIPTORS.items():  # the paper's own words for each end of each trait
        raw += [(trait, -1, f"Am {w.strip()}.", "paper") for w in low.split(",")]
        raw += [(trait, 1, f"Am {w.strip()}.", "paper") for w in high.split(",")]
    out = []
    for trait, key, text, source in raw:
        first = text if source.startswith("personavlm-") else "I " + text[0].lower() + text[1:]
        base, n = positive_form(first)
        out.append(Marker(trait, key, text, source, base, bool(n % 2), first))
    return out


class EvidenceReader:
    """Reads the evidence in a message with a text encoder (``core.ports.TextEncoder``); the markers'
    and anchors' vectors are computed once per reader."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder
        self.markers = load_markers()
        self._marker_vectors: Any = None  # float32 arrays, computed on first use
        self._anchor_vectors: Any = None

    def _vectors(self) -> tuple[Any, Any]:
        if self._marker_vectors is None:
            self._marker_vectors = self.encoder.embed([m.base for m in self.markers])
            self._anchor_vectors = self.encoder.embed([positive_form(a)[0] for a in NEUTRAL_ANCHORS])
        return self._marker_vectors, self._anchor_vectors

    def read(self, text: str) -> list[Evidence]:
        spans = [c for s, e in sentences(text or "") if about_the_user(text[s:e]) for c in clauses(text, s, e)]
        if not spans:
            return []  # no sentence about the user: nothing is embedded, nothing moves
        forms = [positive_form(text[s:e]) for s, e in spans]
        markers, anchors = self._vectors()
        vectors = self.encoder.embed([f for f, _ in forms])
        to_markers = vectors @ markers.T
        to_anchors = (vectors @ anchors.T).max(axis=1)
        out = []
        for (start, end), (_form, negations), sims, neutral in zip(spans, forms, to_markers, to_anchors):
            best = int(sims.argmax())
            similarity = float(sims[best])
            if similarity < MIN_SIMILARITY or similarity - float(neutral) < MIN_MARGIN:
                continue
            trait = self.markers[best].trait
            vote = self._vote(sims, trait)
            if vote == 0:
                continue
            direction = (1.0 if vote > 0 else -1.0) * (-1.0 if negations % 2 else 1.0)
            weight = min(1.0, 0.5 + 0.5 * (similarity - MIN_SIMILARITY) / (FULL_SIMILARITY - MIN_SIMILARITY))
            # what `why` shows: the nearest marker as published, and whether the statement says its opposite
            # ("I don't enjoy big parties": "I love large parties", negated)
            nearest = self.markers[best]
            out.append(Evidence(trait, start, end, direction, weight, similarity, nearest.shown,
                                direction * nearest.key < 0))
        return out

    def _vote(self, sims: Any, trait: str) -> float:
        """Which end of the trait the statement is on (> 0: high): the mean similarity to the
        ``POLE_VOTERS`` nearest markers of the high end against the same of the low end, or the nearest
        marker's end where it leads the other end's nearest by ``NEAREST_LEAD``."""
        ends: dict[int, list[float]] = {1: [], -1: []}
        for i, m in enumerate(self.markers):
            if m.trait == trait:
                ends[self._key(m)].append(float(sims[i]))
        if ends[1] and ends[-1]:
            top_high, top_low = max(ends[1]), max(ends[-1])
            if abs(top_high - top_low) >= NEAREST_LEAD:  # a near paraphrase of one end decides
                return top_high - top_low
        high, low = (sorted(ends[k], reverse=True)[:POLE_VOTERS] for k in (1, -1))
        return sum(high) / max(1, len(high)) - sum(low) / max(1, len(low))

    @staticmethod
    def _key(m: Marker) -> int:
        return -m.key if m.flipped else m.key


__all__ = ["Evidence", "EvidenceReader", "Marker", "TRAITS", "about_the_user", "clauses", "load_markers",
           "positive_form", "sentences"]
