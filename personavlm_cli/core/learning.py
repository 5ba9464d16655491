"""What the assistant learns about its user, taken from the user's own words and checked against them.

A small local model cannot be trusted to say what is true about the user: asked to extract facts it
invents them, and it happily builds them from its own answers. So learning does not depend on the
model's judgement:

- **Statements** are the user's own sentences that say something about them: a first-person
  sentence ("I", "my", "we", "our", ...) that is not a question, a greeting or a request to the
  assistant, with at least two content words. Each is kept in the user's words, as a semantic
  memory, or a procedural one when it states a habit ("every Saturday", "usually") or a plan
  ("I am planning", "next month", "in August I am going").
- **The core profile** has a schema (``FIELDS``): each field's value is cut out of one of the user's
  sentences by a pattern ("my name is X", "I work as X", "my parrot is called X"), and carries the
  id of the turn it came from. There are no free-form keys.
- **Grounding**: every learnt text must be supported by the user's own turns it cites: all its
  content words occur in them (``supported``). The assistant's turns are never evidence. A model,
  where it is used to rephrase, passes the same check, and what fails is dropped and counted.
- **Supersession**: a statement that announces a change ("I switched from Sprite to Coke", "I no
  longer ...", "... instead") closes the current statements that name what changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Words that carry no fact: function words, pronouns, auxiliaries, and the framing words a
# rephrasing may add ("the user"). A statement's *content words* are its other words.
STOP = frozenset("""
a about above after again against all also am an and any are aren't as at be because been before being
below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during
each few for from further had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers
herself him himself his how how's i i'd i'll i'm i've if in into is isn't it it's its itself let's me more
most mustn't my myself no nor not of off on once only or other ought our ours ourselves out over own same
shan't she she'd she'll she's should shouldn't so some such than that that's the their theirs them
themselves then there there's these they they'd they'll they're they've this those through to too under
until up very was wasn't we we'd we'll we're we've were weren't what what's when when's where where's which
while who who's whom why why's with won't would wouldn't you you'd you'll you're you've your yours yourself
yourselves just really quite so very also still even now then yet user user's users im ive id dont
s t d ll m re ve
""".split())

FIELDS = ("name", "age", "occupation", "location", "hometown", "family", "pets", "languages")
"""The core profile's fields, in display order. ``family`` and ``pets`` hold "relation Name" items,
``languages`` a list; the others one value each (a newer one replaces the older)."""

LIST_FIELDS = ("family", "pets", "languages")

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’-]*")
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")
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
    r"\b(switch(ed|ing)?|chang(ed|ing)|no longer|not any ?more|anymore|stopped|instead|now (prefer|like|love|use|"
    r"drink|eat|live|work)|moved|quit|gave up|replaced|used to|prefer now|actually)\b", re.I)
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

_NAME = r"((?-i:[A-Z][\w'’-]+(?:\s+[A-Z][\w'’-]+)?))"
_PLACE = r"((?-i:[A-Z][\w'’.-]+(?:,?\s+[A-Z][\w'’.-]+){0,2}))"
_JOB_ENDINGS = r"(?:er|ist|ian|or|ant|ent|nurse|chef|doctor|lawyer|pilot|cook|clerk|nanny|vet|surgeon|medic|midwife)"
NOT_JOBS = frozenset("vegetarian vegan fan member beginner lover believer person mother father parent owner "
                     "smoker drinker runner reader student patient customer passenger foreigner introvert "
                     "extrovert perfectionist optimist pessimist morning winner loser".split())
_ROLE = r"((?:an?\s+)?[a-z][a-z-]+(?:\s+[a-z][a-z-]+){0,3})"
_REL = "|".join(sorted(RELATIONS, key=len, reverse=True))
_ANI = "|".join(sorted(ANIMALS, key=len, reverse=True))

PATTERNS: list[tuple[str, re.Pattern]] = [
    ("name", re.compile(rf"\b(?:my name is|my name's|call me|i am called|i'm called)\s+{_NAME}", re.I)),
    ("age", re.compile(r"\b(?:i am|i'm|i’m|im)\s+(\d{1,3})(?:\s+years?\s+old|\s+y/?o\b)", re.I)),
    ("age", re.compile(r"\bi turned\s+(\d{1,3})\b", re.I)),
    ("occupation", re.compile(rf"\bi (?:work|am working) as\s+{_ROLE}", re.I)),
    ("occupation", re.compile(rf"\bmy (?:job|profession|occupation) is\s+{_ROLE}", re.I)),
    ("occupation", re.compile(r"\bi(?:'m| am) an?\s+([a-z][a-z-]+(?:\s+[a-z][a-z-]+)?)\s+by (?:profession|trade)", re.I)),
    ("occupation", re.compile(rf"\bi(?:'m| am|’m) an?\s+((?:[a-z-]+\s+){{0,2}}[a-z-]+{_JOB_ENDINGS})\b", re.I)),
    ("location", re.compile(rf"\bi (?:live|am living|now live|moved) (?:in|to)\s+{_PLACE}", re.I)),
    ("location", re.compile(rf"\bi(?:'m| am) based in\s+{_PLACE}", re.I)),
    ("hometown", re.compile(rf"\bi (?:was born|grew up) in\s+{_PLACE}", re.I)),
    ("hometown", re.compile(rf"\bi(?:'m| am) (?:originally )?from\s+{_PLACE}", re.I)),
    ("family", re.compile(rf"\bmy\s+(?:older |younger |little |big |elder |baby )?({_REL})\s+(?:is\s+(?:called|named)\s+)?{_NAME}",
                          re.I)),
    ("pets", re.compile(rf"\bmy\s+({_ANI})\s+(?:is\s+)?(?:called|named)\s+{_NAME}", re.I)),
    ("pets", re.compile(rf"\b(?:a|our|my)\s+({_ANI})\s+(?:called|named)\s+{_NAME}", re.I)),
    ("languages", re.compile(rf"\bi (?:speak|am learning|'m learning|am fluent in)\s+((?:{'|'.join(LANGUAGES)})"
                             rf"(?:(?:,\s*|\s+and\s+)(?:{'|'.join(LANGUAGES)}))*)", re.I)),
]


def words(text: str) -> list[str]:
    return [w.lower().replace("’", "'") for w in _WORD.findall(text or "")]


def content_words(text: str) -> set[str]:
    """The words of ``text`` that carry its facts (lower-cased; no function or framing words)."""
    out = set()
    for w in words(text):
        w = w.strip("'-")
        if w.endswith("'s"):
            w = w[:-2]
        if w and w not in STOP and (len(w) > 1 or w.isdigit()):
            out.add(w)
    return out


def _stem(w: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(w) > len(suffix) + 2 and w.endswith(suffix):
            return w[: -len(suffix)]
    return w


def supported(statement: str, evidence: list[str]) -> bool:
    """True when every content word of ``statement`` occurs in ``evidence`` (the user's own turns).

    Words match by a light stem ("drinks" and "drink", "hiking" and "hike"), never by meaning: a
    learnt statement may reorder or drop the user's words, not add to them.
    """
    said = {_stem(w) for text in evidence for w in content_words(text)}
    mine = {_stem(w) for w in content_words(statement)}
    return bool(mine) and mine <= said


def sentences(text: str) -> list[str]:
    out = []
    for line in (text or "").splitlines():
        for s in _SENTENCE.findall(line):
            s = s.strip()
            if s:
                out.append(s)
    return out


@dataclass
class Statement:
    text: str
    kind: str  # "semantic" or "procedural"
    keywords: str
    change: bool = False  # announces a change: supersedes what it names
    changed_from: str = ""  # the old thing, when the sentence says "from X to Y"


@dataclass
class Learnt:
    statements: list[Statement] = field(default_factory=list)
    profile: dict[str, str] = field(default_factory=dict)  # field -> value


def is_about_the_user(sentence: str) -> bool:
    s = sentence.strip()
    if len(s) < 8 or s.endswith("?") or QUESTION_START.match(s) or REQUEST.match(s) or SMALL_TALK.match(s):
        return False
    if not FIRST_PERSON.search(s):
        return False
    return len(content_words(s)) >= 2


def only_asks(text: str) -> bool:
    """Every sentence of ``text`` is a question: it tells nothing about the user, and recalled for a
    later message it would only echo what is asked again."""
    said = sentences(text)
    return bool(said) and all(s.rstrip().endswith("?") for s in said)


def keywords_of(text: str, limit: int = 6) -> str:
    seen = [w for w in dict.fromkeys(w.strip("'-") for w in words(text)) if w and w in content_words(w)]
    return ", ".join(seen[:limit])


def statements_of(text: str) -> list[Statement]:
    """The sentences of a user's message that state something about them, in their own words."""
    out: list[Statement] = []
    for s in sentences(text):
        if not is_about_the_user(s):
            continue
        s = s[:400]
        kind = "procedural" if (HABIT.search(s) or PLAN.search(s)) and not CHANGE.search(s) else "semantic"
        m = FROM_TO.search(s)
        out.append(Statement(text=s, kind=kind, keywords=keywords_of(s), change=bool(CHANGE.search(s)),
                             changed_from=m.group(1) if m and CHANGE.search(s) else ""))
    return out


def profile_of(text: str) -> dict[str, str]:
    """Core profile values stated in ``text``, by the schema's patterns (field -> value)."""
    found: dict[str, str] = {}
    for s in sentences(text):
        if s.strip().endswith("?") or QUESTION_START.match(s):
            continue
        for name, pattern in PATTERNS:
            m = pattern.search(s)
            if not m:
                continue
            if name in ("family", "pets"):
                value = f"{m.group(1).lower()} {m.group(2)}"
            elif name == "languages":
                value = ", ".join(x.capitalize() for x in re.split(r",\s*|\s+and\s+", m.group(1)) if x)
            else:
                value = m.group(1).strip().rstrip(",.")
            if name == "occupation":
                value = re.sub(r"^(an?)\s+", "", value, flags=re.I)
                value = re.split(r"\s+(?:at|in|for|and|but|since|because)\b", value)[0]
            if name == "occupation" and value.split()[-1].lower() in NOT_JOBS:
                continue
            if name == "age" and not 0 < int(value) < 130:
                continue
            if name in LIST_FIELDS:
                found[name] = ", ".join(dict.fromkeys([*filter(None, found.get(name, "").split(", ")), value]))
            else:
                found.setdefault(name, value)
    return found


def learn(text: str) -> Learnt:
    return Learnt(statements_of(text), profile_of(text))


def merge_profile(facts: dict[str, str], sources: dict[str, str], new: dict[str, str], turn_id: str
                  ) -> tuple[dict[str, str], dict[str, str]]:
    """The profile with ``new`` values applied: list fields gain items, single fields are replaced."""
    facts, sources = dict(facts), dict(sources)
    for name in FIELDS:
        if name not in new:
            continue
        if name in LIST_FIELDS and facts.get(name):
            items = facts[name].split(", ")
            for item in new[name].split(", "):
                # "brother Caspar" replaces an older "brother Caspar"-less value of the same relation+name
                if item not in items:
                    items.append(item)
            value = ", ".join(items)
        else:
            value = new[name]
        if facts.get(name) != value:
            facts[name] = value
            sources[name] = turn_id
    ordered = {k: facts[k] for k in FIELDS if k in facts}
    return ordered, {k: sources[k] for k in ordered if k in sources}


def profile_text(facts: dict[str, str]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in facts.items())


def changes_what(new: Statement | str, old_text: str) -> bool:
    """Does ``new`` (a change statement) replace ``old_text``? It must name something the old one said."""
    text = new.text if isinstance(new, Statement) else new
    if not CHANGE.search(text):
        return False
    old_words = {_stem(w) for w in content_words(old_text)}
    m = FROM_TO.search(text)
    if m:
        named = {_stem(w) for w in content_words(m.group(1))}
        return bool(named) and named <= old_words
    generic = {"switch", "switched", "chang", "chang", "stopp", "stop", "moved", "quit", "replac", "prefer",
               "actual", "instead", "longer", "anymore", "gave", "now", "used"}
    shared = {_stem(w) for w in content_words(text)} & old_words
    return bool(shared - {_stem(g) for g in generic})
