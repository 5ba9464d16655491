"""Sentences of a message, and what each one does: state, ask, request, or suppose.

Splitting: a sentence ends at ``.``, ``!``, ``?`` (or a run of them) followed by a space and more
text, or at a line break; it does **not** end after an abbreviation ("Dr.", "St.", "Mrs.", "e.g.",
"a.m."), an initial ("J. R. R. Tolkien", "Anna K. Smith"), a number inside a decimal or a time ("3.5",
"7.30", "7:30") or an abbreviation with inner dots ("U.S."). Lower-case text splits too ("i'm 34. i
work ..."): people do not always capitalise.

Kinds (``kind``): only a ``statement`` can teach a fact about the user. The others:

- ``question``: ends with "?", or opens (after a greeting or "so", "btw", ...) with a question word
  or an auxiliary ("what", "do", "can", ...), or "I wonder", "I was wondering", "any idea";
- ``request``: asks the assistant to do something: "please", "remind me", "tell me", "can you",
  "I need you to", "don't forget to", an imperative from a short list ("suggest", "write", ...);
- ``hypothetical``: supposes or wishes rather than states: "if I ...", "what if", "suppose",
  "imagine", "let's say", "I wish", "if only", "I would ...", "I'd ...", "were I".
- ``small talk``: a greeting, thanks, "ok", "me too", ...
"""

from __future__ import annotations

import re

ABBREVIATIONS = frozenset([
    "dr", "drs", "st", "mr", "mrs", "ms", "mx", "prof", "sr", "jr", "mt", "ave", "rd", "blvd", "vs", "etc", "eg",
    "ie", "e.g", "i.e", "a.m", "p.m", "am", "pm", "approx", "dept", "univ", "inc", "ltd", "co", "corp", "gen", "col",
    "lt", "sgt", "capt", "cpt", "rev", "hon", "fr", "sen", "rep", "gov", "jan", "feb", "aug", "sept", "oct", "nov",
    "dec", "no", "nr", "tel", "ext", "fig", "cf", "al", "min", "max", "ca", "est", "apt", "bros",
])

_END = re.compile(r"[.!?]+[\"'’”)\]]*(?=\s+\S)")

GREETING = re.compile(
    r"^(?:(?:hi|hey|hello|hiya|yo|ok|okay|so|well|oh|btw|by the way|um+|uh+|hmm+|yeah|yes|anyway|also|and|but|"
    r"quick question|one more thing|good (?:morning|evening|afternoon))\b[\s,!.:;-]*)+", re.I)
_SUBJECT = r"(?:you|i|we|it|they|he|she|there|this|that|these|those|my|your|our|the|a|an|anyone|someone|anybody)"
QUESTION = re.compile(
    r"^(?:(?:what|who|whom|whose|when|where|why|how|which)(?!\s+(?:i|we|my|our)\b)|what's|who's|where's|how's|whats|whos|wheres|hows|"
    rf"(?:do|does|did|don't|doesn't|didn't|can|can't|could|couldn't|would|wouldn't|will|won't|should|shouldn't|"
    rf"shall|is|isn't|are|aren't|was|wasn't|were|weren't|have|haven't|has|hasn't|had|may|might|am)\s+{_SUBJECT}|"
    r"any idea|i wonder|i was wondering|i'm wondering|do you know|guess what|is it true)\b", re.I)
REQUEST = re.compile(
    r"^(?:please|pls|plz|tell me|remind me|help me|suggest|recommend|give me|show me|let me know|let's|lets|"
    r"write|explain|describe|list|find|make|create|draft|translate|summari[sz]e|check|look up|search|"
    r"can you|could you|would you|will you|don't forget|do not forget|note that|i need you to|i want you to|"
    r"i'd like you to|i would like you to|i'd like to know|i would like to know)\b", re.I)
REQUEST_ANYWHERE = re.compile(r"\b(?:remind me to|remind me about|can you|could you|would you mind|please)\b", re.I)
HYPOTHETICAL = re.compile(
    r"^(?:if|what if|suppose|supposing|imagine|let's say|lets say|say i|hypothetically|in theory|pretend|"
    r"were i|i wish|if only|in another life|assuming)\b|\b(?:i|we)(?: would|'d(?! (?:been|had|already|never|just))|"
    r" might) (?!like to know)"
    r"|\bi wish\b|\bif only\b|\bwhat if\b|\bif i (?:were|was|had|could|moved|lived|quit|won|got)\b", re.I)
SMALL_TALK = re.compile(
    r"^(?:hi|hello|hey|thanks|thank you|good (?:morning|evening|afternoon|night)|ok|okay|bye|goodbye|lol|haha|"
    r"yes|no|sure|great|cool|nice|wow|i see|i think so|i agree|i know|i guess|me too|i don't know)\b[\s!.,]*$",
    re.I)

KINDS = ("statement", "question", "request", "hypothetical", "small talk")


def _abbreviation_before(text: str, end: int) -> bool:
    """Is the ``.`` at ``end`` the end of an abbreviation or an initial, not of a sentence?"""
    if text[end] != ".":
        return False
    m = re.search(r"([A-Za-z][A-Za-z.]*)$", text[:end])
    if not m:
        return bool(re.search(r"\d$", text[:end])) and bool(re.match(r"\.\d", text[end:]))
    token = m.group(1)
    if token.lower() in ABBREVIATIONS or token.lower().rstrip(".") in ABBREVIATIONS:
        return True
    if len(token) == 1 and token.isupper() and token != "I":  # an initial: "J. R. R. Tolkien"
        return True
    return "." in token  # "U.S.", "e.g" (the inner dots say it is one abbreviation)


def split(text: str) -> list[str]:
    """The sentences of ``text``, stripped, in order (see the module's rules)."""
    out: list[str] = []
    for line in (text or "").splitlines():
        start = 0
        for m in _END.finditer(line):
            if m.group().startswith(".") and len(m.group().rstrip("\"'’”)]")) == 1 and _abbreviation_before(line, m.start()):
                continue
            piece = line[start:m.end()].strip()
            if piece:
                out.append(piece)
            start = m.end()
        piece = line[start:].strip()
        if piece:
            out.append(piece)
    return out


def body(sentence: str) -> str:
    """The sentence without an opening greeting or filler ("hey,", "so", "btw")."""
    s = sentence.strip()
    rest = GREETING.sub("", s, count=1)
    return rest if rest.strip() else s


def kind(sentence: str) -> str:
    """What ``sentence`` does: one of ``KINDS``."""
    s = sentence.strip().replace("’", "'")
    if not s:
        return "small talk"
    if SMALL_TALK.match(s):
        return "small talk"
    rest = body(s)
    if s.rstrip("\"')] ").endswith("?") or QUESTION.match(rest):
        return "question"
    if REQUEST.match(rest) or REQUEST_ANYWHERE.search(rest):
        return "request"
    if HYPOTHETICAL.search(rest):
        return "hypothetical"
    return "statement"


def is_statement(sentence: str) -> bool:
    return kind(sentence) == "statement"
