"""The patterns of what is learnt by rules: the user's own statements (semantic, or procedural for a
habit or a plan), the core profile's values (the schema's grammar, docs/learning.md), and the changes
a statement announces ("I switched from Sprite to Coke").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from personavlm_cli.core import sentences as _sentences
from personavlm_cli.core.learning.grounding import STOP, content_words, keywords_of, sentences, stem, words
from personavlm_cli.core.learning.profile import LIST_FIELDS
from personavlm_cli.core.memory import MemoryType

FIRST_PERSON = re.compile(r"\b(i|i'm|i’m|im|i've|i’ve|i'd|i'll|my|mine|me|myself|we|we're|we've|our|ours|us)\b", re.I)
QUESTION_START = re.compile(
    r"^\s*(what|who|whom|whose|when|where|why|how|which|do|does|did|can|could|would|will|should|shall|is|are|"
    r"was|were|have|has|had|may|might)\b", re.I)
REQUEST = re.compile(
    r"^\s*(please|pls|tell me|remind me|help me|suggest|recommend|give me|show me|let me|let's|lets|write|"
    r"explain|describe|list|find|make|create|can you|could you|would you|will you)\b", re.I)
SMALL_TALK = re.compile(
    r"^\s*(hi|hello|hey|thanks|thank you|good (morning|evening|afternoon|night)|ok|okay|bye|goodbye|lol|haha|"
    r"yes|no|sure|great|cool|nice|wow|i see|i think so|i agree|i know|i guess|me too|i don't know)\b[\s!.,]*$", re.I)
HABIT = re.compile(
    r"\b(every|each|daily|weekly|monthly|usually|always|often|normally|regularly|most (days|mornings|evenings)|"
    r"on (mondays|tuesdays|wednesdays|thursdays|fridays|saturdays|sundays|weekends)|at weekends|habit|routine)\b",
    re.I)
PLAN = re.compile(
    r"\b(plan|plans|planning|going to|gonna|will be|want to|wants to|hope to|hoping to|intend|goal|aim to|"
    r"trying to|next (week|month|year|summer|winter|spring|autumn)|this (summer|winter|spring|autumn|weekend)|"
    r"am going|are going|i'll|we'll)\b", re.I)
CHANGE = re.compile(
    r"\b(switch(ed|ing)?|chang(ed|ing)\s+(?:to|from|jobs?|careers?|teams?|schools?|"
    r"(?:my|our)\s+(?:job|career|mind|diet|name|plans?|team|school|address|number))"
    r"|no longer|not any ?more|anymore|stopped|instead|now (prefer|like|love|use|"
    r"drink|eat|live|work|take|go|have)|moved|relocat(ed|ing)|quit|gave up|given up|replaced|used to|prefer now|"
    r"actually|these days|nowadays|from now on|no more|sold|passed away|broke up|divorced|retired)\b", re.I)
FROM_TO = re.compile(r"\bfrom\s+(?:the\s+|my\s+|a\s+)?([A-Za-z][\w'-]*(?:\s+[A-Za-z][\w'-]*)?)\s+to\b", re.I)

RELATIONS = ("mother", "mom", "mum", "father", "dad", "brother", "sister", "son", "daughter", "wife", "husband",
             "partner", "boyfriend", "girlfriend", "fiance", "fiancee", "grandmother", "grandma", "grandfather",
             "grandpa", "aunt", "uncle", "cousin", "niece", "nephew", "twin", "kid", "child", "stepdaughter",
             "stepson", "stepmother", "stepfather")
ANIMALS = ("dog", "cat", "parrot", "bird", "rabbit", "bunny", "hamster", "horse", "fish", "goldfish", "turtle",
           "tortoise", "snake", "lizard", "guinea pig", "puppy", "kitten", "ferret", "pony", "budgie", "canary",
           "gecko", "iguana", "chinchilla", "rat", "mouse", "pig", "goat", "chicken", "duck")
LANGUAGES = ("english", "french", "german", "spanish", "italian", "portuguese", "dutch", "russian", "chinese",
             "mandarin", "cantonese", "japanese", "korean", "arabic", "hindi", "turkish", "polish", "swedish",
             "norwegian", "danish", "finnish", "greek", "hebrew", "czech", "hungarian", "romanian", "ukrainian",
             "vietnamese", "thai", "indonesian", "swahili", "catalan", "welsh", "irish", "latin")

# Words that look like a name after "I'm" but say something else (a nationality, a faith, a mood).
NOT_NAMES = frozenset([
    "american", "british", "english", "scottish", "welsh", "irish", "canadian", "australian", "indian", "pakistani",
    "chinese", "japanese", "korean", "french", "german", "dutch", "belgian", "swiss", "austrian", "italian", "spanish",
    "portuguese", "brazilian", "mexican", "argentinian", "chilean", "colombian", "peruvian", "cuban", "russian",
    "ukrainian", "polish", "czech", "slovak", "hungarian", "romanian", "bulgarian", "greek", "turkish", "danish",
    "swedish", "norwegian", "finnish", "icelandic", "israeli", "egyptian", "moroccan", "nigerian", "kenyan", "african",
    "european", "asian", "latino", "latina", "jewish", "muslim", "christian", "catholic", "protestant", "hindu",
    "buddhist", "sikh", "atheist", "vegan", "vegetarian", "sorry", "fine", "good", "ok", "okay", "back", "here",
    "home", "done", "ready", "sure", "happy", "tired", "sad", "busy", "free", "new", "monday", "tuesday", "wednesday",
    "thursday", "friday", "saturday", "sunday", "january", "february", "march", "april", "may", "june", "july",
    "august", "september", "october", "november", "december", "so", "just", "not", "also", "still", "really", "very",
    "glad", "excited", "afraid",
]) | frozenset(LANGUAGES)
_CAP = r"(?-i:[A-Z][\w'’-]+)"
_NAME = r"((?-i:[A-Z][\w'’-]+(?:\s+[A-Z][\w'’-]+)?))"
_PLACE = r"((?-i:[A-Z][\w'’.-]+(?:,?\s+[A-Z][\w'’.-]+){0,2}))"
_JOB_ENDINGS = r"(?:er|ist|ian|or|ant|ent|nurse|chef|doctor|lawyer|pilot|cook|clerk|nanny|vet|surgeon|medic|midwife)"
# A job word: an agent ending ("carpenter", "pharmacist", "librarian") or one of a few whole words.
_JOB = (r"(?:[a-z-]+(?:er|ist|ian|or|ant|ent)|[a-z-]*(?:nurse|chef|doctor|lawyer|pilot|cook|clerk|nanny|vet|"
        r"surgeon|medic|midwife|paramedic|engineer|dentist|barista|plumber|electrician))")
NOT_JOBS = frozenset([
    "vegetarian", "vegan", "fan", "member", "beginner", "lover", "believer", "person", "mother", "father", "parent",
    "owner", "smoker", "drinker", "runner", "reader", "student", "patient", "customer", "passenger", "foreigner",
    "introvert", "extrovert", "perfectionist", "optimist", "pessimist", "morning", "winner", "loser",
])
_ROLE = r"((?:an?\s+)?[a-z][a-z-]+(?:\s+[a-z][a-z-]+){0,3})"
_REL = "|".join(sorted(RELATIONS, key=len, reverse=True))
_ANI = "|".join(sorted(ANIMALS, key=len, reverse=True))
_COUNT = r"(?:a|an|one|two|three|four|five|\d)"
_LIVE = r"(?:(?:finally|just|recently|now|actually|also)\s+)?" \
        r"(?:live|am living|'m living|’m living|are living|'re living|now live|moved|have moved|'ve moved|relocated|" \
        r"have relocated|'ve relocated|just moved)"
# Where a workplace follows a job: "at" a named place ("at Dr. Lee's clinic", "at St. Anne's") or "at
# a/the" place; cut at punctuation, a conjunction or another preposition.
_WORKPLACE = re.compile(r"^\s+(at\s+(?:(?-i:[A-Z])[\w'’.-]*|the\s+\w[\w'’-]*|an?\s+\w[\w'’-]*)"
                        r"(?:\s+(?!(?:and|but|since|because|so|in|on|for|near|where|which|who|with|as|from|"
                        r"to|now|these|since)\b)[\w'’.-]+){0,3})", re.I)

PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("name", re.compile(r"\b(?:my name is|my name's|my name’s|i am called|i'm called)\s+"
                        r"([A-Za-z][\w'’-]+(?:\s+(?!(?:and|but|i|i'm|im|from|here|by|so)\b)[A-Za-z][\w'’-]+)?)", re.I)),
    ("name", re.compile(rf"\b(?:call me|this is)\s+{_NAME}", re.I)),
    ("name", re.compile(rf"^(?:(?:hi|hey|hello|hiya|ok|so|well)\b[\s,!.]*)*(?:i'm|i’m|i am|im)\s+{_NAME}"
                        r"(?=\s*(?:[,.!;]|$|\band\b|\bfrom\b|\bhere\b))", re.I)),
    ("age", re.compile(r"\b(?:i am|i'm|i’m|im)\s+(\d{1,3})(?:\s+years?\s+old|\s+y/?o\b)", re.I)),
    ("age", re.compile(r"\b(?:i am|i'm|i’m|im)\s+(\d{1,3})(?=\s*(?:[,;!]|\.(?!\d)|$|\band\b|\bnow\b|\btoday\b|"
                       r"\bthis year\b|\bnext\b|\bbut\b|\bso\b))", re.I)),
    ("age", re.compile(r"\bi (?:just |recently )?turned\s+(\d{1,3})\b", re.I)),
    ("occupation", re.compile(rf"\bi (?:work|am working|'m working|’m working) as\s+{_ROLE}", re.I)),
    ("occupation", re.compile(rf"\bmy (?:job|profession|occupation) is\s+{_ROLE}", re.I)),
    ("occupation", re.compile(r"\bi(?:'m| am|’m) an?\s+([a-z][a-z-]+(?:\s+[a-z][a-z-]+)?)\s+by (?:profession|trade)", re.I)),
    ("occupation", re.compile(rf"\bi(?:'m| am|’m|m) an?\s+((?:[a-z-]+\s+){{0,2}}{_JOB})\b", re.I)),
    ("occupation", re.compile(r"\bi (teach|lecture|work|volunteer|study)(?:es|s)?(?= at\s)", re.I)),
    ("location", re.compile(rf"\b(?:i|we) {_LIVE} (?:in|to)\s+{_PLACE}", re.I)),
    ("location", re.compile(rf"\b(?:i|we)(?:'m|’m| am|'re|’re| are) (?:now )?based in\s+{_PLACE}", re.I)),
    ("location", re.compile(r"\b(?:i|we) (?:live|now live|moved|relocated) (?:in|to)\s+((?-i:[a-z][a-z'-]{2,}))"
                            r"(?=\s*(?:[,.!;]|$|\b(?:now|with|and|but|since|for|near|because|these|this)\b))",
                            re.I)),
    ("hometown", re.compile(rf"\bi (?:was born|grew up) in\s+{_PLACE}", re.I)),
    ("hometown", re.compile(rf"\bi(?:'m| am|’m) (?:originally )?from\s+{_PLACE}", re.I)),
    ("hometown", re.compile(r"\bi(?:'m| am|’m) (?:originally )?from\s+((?-i:[a-z][a-z'-]{2,}))(?=\s*(?:[,.!;]|$|\bbut\b))",
                            re.I)),
    ("family", re.compile(rf"\b(?:my|our)\s+(?:older |younger |little |big |elder |baby |twin )?({_REL})\s*,?\s+"
                          rf"(?:is\s+(?:called|named)\s+)?{_NAME}", re.I)),
    ("pets", re.compile(rf"\b(?:my|our)\s+({_ANI})\s+(?:is\s+)?(?:called|named)\s+{_NAME}", re.I)),
    ("pets", re.compile(rf"\b(?:a|an|our|my)\s+({_ANI})\s+(?:called|named)\s+{_NAME}", re.I)),
    ("pets", re.compile(rf"\b(?:my|our)\s+(?:little |old |new |young )?({_ANI})\s*,?\s+{_NAME}", re.I)),
    ("pets", re.compile(rf"\b(?:i|we) (?:have|own|adopted|got) {_COUNT}\s+(?:little |young |rescue )?({_ANI})s?\s*"
                        rf"(?:,|:|\s+called|\s+named)\s*({_CAP}(?:\s*(?:,|\band\b)\s*{_CAP})*)", re.I)),
    ("languages", re.compile(rf"\bi (?:speak|am learning|'m learning|am fluent in)\s+((?:{'|'.join(LANGUAGES)})"
                             rf"(?:(?:,\s*|\s+and\s+)(?:{'|'.join(LANGUAGES)}))*)", re.I)),
]
# Places that a lower-case "I live in ..." names without being a place name.
NOT_PLACES = frozenset([
    "town", "city", "village", "house", "flat", "apartment", "home", "the", "a", "an", "my", "our", "peace", "fear",
    "hope", "sin", "harmony", "denial", "luxury", "style", "comfort", "hiding",
])
# A self-introduction's fragments ("ines here, 27 years old, nurse in the night shift"): only in a
# sentence that opens with "<name> here" or "I'm <Name>".
_HERE = re.compile(r"^(?:(?:hi|hey|hello|hiya)\b[\s,!.]*)*([A-Za-z][a-z'’-]+)\s+here\b", re.I)
NOT_HERE = frozenset([
    "me", "i", "we", "it", "everyone", "everybody", "someone", "somebody", "nobody", "nothing", "something", "all",
    "you", "they", "he", "she", "still", "back", "just", "right", "over", "up", "down", "out", "in", "not", "new",
    "who", "what", "this", "that", "there",
])
_AGE_FRAGMENT = re.compile(r"^(?:aged\s+)?(\d{1,3})(?:\s*(?:years?\s+old|y/?o|yrs?\s+old))?$", re.I)
_JOB_FRAGMENT = re.compile(rf"^(?:an?\s+)?((?:[a-z-]+\s+)?{_JOB})\b", re.I)

@dataclass
class Statement:
    text: str
    kind: MemoryType  # SEMANTIC or PROCEDURAL
    keywords: str
    change: bool = False  # announces a change: supersedes what it names
    changed_from: str = ""  # the old thing, when the sentence says "from X to Y"


@dataclass
class Learnt:
    statements: list[Statement] = field(default_factory=list)
    profile: dict[str, str] = field(default_factory=dict)  # field -> value


def is_about_the_user(sentence: str, people: tuple[str, ...] = ()) -> bool:
    """A statement (not a question, request, hypothetical or small talk: ``sentences.kind``) in the
    first person, or about one of ``people`` (the names of the user's family and pets), with at least
    two content words."""
    s = sentence.strip()
    if len(s) < 8 or s.endswith("?") or QUESTION_START.match(s) or REQUEST.match(s) or SMALL_TALK.match(s):
        return False
    if not _sentences.is_statement(s):
        return False
    if not FIRST_PERSON.search(s) and not _names_one_of(s, people):
        return False
    return len(content_words(s)) >= 2


def _names_one_of(sentence: str, people: tuple[str, ...]) -> bool:
    said = set(words(sentence))
    return any(p.lower() in said for p in people if p)


def statements_of(text: str, people: tuple[str, ...] = ()) -> list[Statement]:
    """The sentences of a user's message that state something about them (or about one of ``people``,
    the names in their profile's family and pets), in their own words."""
    out: list[Statement] = []
    for s in sentences(text):
        if not is_about_the_user(s, people):
            continue
        s = s[:400]
        habit = (HABIT.search(s) or PLAN.search(s)) and not CHANGE.search(s)
        kind = MemoryType.PROCEDURAL if habit else MemoryType.SEMANTIC
        m = FROM_TO.search(s)
        out.append(Statement(text=s, kind=kind, keywords=keywords_of(s), change=bool(CHANGE.search(s)),
                             changed_from=m.group(1) if m and CHANGE.search(s) else ""))
    return out


def _occupation(m: re.Match[str], sentence: str) -> str | None:
    """The job a pattern found, with its workplace when one follows ("paramedic at St. Luke's")."""
    value = m.group(1).strip().rstrip(",.")
    value = re.sub(r"^(an?)\s+", "", value, flags=re.I)
    if value.lower() in ("teach", "lecture", "work", "volunteer", "study"):  # "I teach at St. Anne's"
        verb = value.lower()
        value = {"teach": "teaches", "study": "studies"}.get(verb, verb + "s")
        tail = sentence[m.end():]
    else:
        job = re.split(r"\s+(?:at|in|for|and|but|since|because|on|with|from)\b", value, flags=re.I)[0].strip()
        kept: list[str] = []
        for w in job.split():  # "a porter there": the job ends at its first function word
            if kept and w.lower() in STOP:
                break
            kept.append(w)
        job = " ".join(kept)
        tail = sentence[m.start(1) + m.group(1).find(job) + len(job):] if job else ""
        value = job
    if not value or value.split()[-1].lower() in NOT_JOBS:
        return None
    place = _WORKPLACE.match(tail)
    if place:
        value = f"{value} {place.group(1).rstrip(',.;')}"
    elif value in ("teaches", "lectures", "works", "volunteers", "studies"):
        return None
    return value


def _introduction(sentence: str) -> dict[str, str]:
    """The fragments of a self-introduction: "ines here, 27 years old, nurse in the night shift"."""
    found: dict[str, str] = {}
    m = _HERE.match(sentence)
    if m and m.group(1).lower() not in NOT_HERE and m.group(1).lower() not in STOP \
            and m.group(1).lower() not in NOT_NAMES:
        found["name"] = m.group(1)[:1].upper() + m.group(1)[1:]
    elif not re.match(r"^(?:(?:hi|hey|hello)\b[\s,!.]*)*(?:i'm|i’m|i am|im)\s+(?:(?-i:[A-Z])|\d{1,3}\s*,)", sentence, re.I):
        return {}
    for fragment in re.split(r"\s*[,;]\s*", sentence)[1:]:
        fragment = fragment.strip().rstrip(".!")
        a = _AGE_FRAGMENT.match(fragment)
        if a and 0 < int(a.group(1)) < 130:
            found.setdefault("age", a.group(1))
            continue
        j = _JOB_FRAGMENT.match(fragment)
        if j and j.group(1).split()[-1].lower() not in NOT_JOBS:
            place = _WORKPLACE.match(fragment[j.end():])
            found.setdefault("occupation", j.group(1) + (f" {place.group(1)}" if place else ""))
    return found


def profile_of(text: str) -> dict[str, str]:
    """Core profile values stated in ``text``, by the schema's patterns (field -> value).

    Only statements count (``sentences.kind``): a question, request or hypothetical names no value.
    The grammar is documented in docs/learning.md."""
    found: dict[str, str] = {}
    for s in sentences(text):
        if s.strip().endswith("?") or QUESTION_START.match(s) or not _sentences.is_statement(s):
            continue
        s = s.replace("’", "'")
        for name, value in _introduction(s).items():
            found.setdefault(name, value)
        for name, pattern in PATTERNS:
            for m in pattern.finditer(s):
                said = _value(name, m, s)
                if said is None:
                    continue
                if name in LIST_FIELDS:
                    found[name] = ", ".join(dict.fromkeys([*filter(None, found.get(name, "").split(", ")),
                                                           *said.split(", ")]))
                else:
                    found.setdefault(name, said)
                if name not in LIST_FIELDS:
                    break
    return found


def _value(name: str, m: re.Match[str], sentence: str) -> str | None:
    if name == "pets" and m.lastindex and m.lastindex >= 2 and re.search(r"\band\b|,", m.group(2)):
        animal = m.group(1).lower()
        names = [n for n in re.split(r"\s*(?:,|\band\b)\s*", m.group(2)) if n and n.lower() not in NOT_NAMES]
        return ", ".join(f"{animal} {n}" for n in names) or None
    if name in ("family", "pets"):
        person = m.group(2)
        first = person.split()[0].lower()
        if first in NOT_NAMES or first in STOP:
            return None
        if len(person.split()) == 2 and (person.split()[1].lower() in NOT_NAMES or person.split()[1].lower() in STOP):
            person = person.split()[0]
        return f"{m.group(1).lower()} {person}"
    if name == "languages":
        return ", ".join(x.capitalize() for x in re.split(r",\s*|\s+and\s+", m.group(1)) if x)
    if name == "occupation":
        return _occupation(m, sentence)
    value: str = m.group(1).strip().rstrip(",.")
    if name == "name":
        parts = value.split()
        if parts[0].lower() in NOT_NAMES or parts[0].lower() in STOP:
            return None
        if len(parts) == 2 and (parts[1].lower() in NOT_NAMES or parts[1].lower() in STOP):
            parts = parts[:1]
        return " ".join(p[:1].upper() + p[1:] for p in parts)
    if name in ("location", "hometown"):
        if value.lower() in NOT_PLACES or value.lower() in STOP:
            return None
        return value[:1].upper() + value[1:]
    if name == "age" and not 0 < int(value) < 130:
        return None
    return value


def learn(text: str, people: tuple[str, ...] = ()) -> Learnt:
    return Learnt(statements_of(text, people), profile_of(text))

def changes_what(new: Statement | str, old_text: str) -> bool:
    """Does ``new`` (a change statement) replace ``old_text``? It must name something the old one said."""
    text = new.text if isinstance(new, Statement) else new
    if not CHANGE.search(text):
        return False
    old_words = {stem(w) for w in content_words(old_text)}
    m = FROM_TO.search(text)
    if m:
        named = {stem(w) for w in content_words(m.group(1))}
        return bool(named) and named <= old_words
    generic = {"switch", "switched", "chang", "stopp", "stop", "moved", "quit", "replac", "prefer",
               "actual", "instead", "longer", "anymore", "gave", "now", "used"}
    shared = {stem(w) for w in content_words(text)} & old_words
    return bool(shared - {stem(g) for g in generic})
