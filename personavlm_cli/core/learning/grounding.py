"""Grounding: a learnt text is kept only when the user's own words support it.

``supported``: every content word of a learnt text occurs in the user's turns it cites (by a light
stem, never by meaning); ``stated``: only the statements of a message are evidence (its questions,
requests, hypotheticals and small talk state nothing about the user). The words that carry a fact
(``content_words``) and a message's sentences are read here for the rest of the package.
"""

from __future__ import annotations

import re

from personavlm_cli.core import sentences as _sentences

# Words that carry no fact: function words, pronouns, auxiliaries, and the framing words a
# rephrasing may add ("the user"). A statement's *content words* are its other words.
STOP = frozenset([
    "a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and", "any", "are", "aren't",
    "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "can't",
    "cannot", "could", "couldn't", "did", "didn't", "do", "does", "doesn't", "doing", "don't", "down", "during",
    "each", "few", "for", "from", "further", "had", "hadn't", "has", "hasn't", "have", "haven't", "having", "he",
    "he'd", "he'll", "he's", "her", "here", "here's", "hers", "herself", "him", "himself", "his", "how", "how's", "i",
    "i'd", "i'll", "i'm", "i've", "if", "in", "into", "is", "isn't", "it", "it's", "its", "itself", "let's", "me",
    "more", "most", "mustn't", "my", "myself", "no", "nor", "not", "of", "off", "on", "once", "only", "or", "other",
    "ought", "our", "ours", "ourselves", "out", "over", "own", "same", "shan't", "she", "she'd", "she'll", "she's",
    "should", "shouldn't", "so", "some", "such", "than", "that", "that's", "the", "their", "theirs", "them",
    "themselves", "then", "there", "there's", "these", "they", "they'd", "they'll", "they're", "they've", "this",
    "those", "through", "to", "too", "under", "until", "up", "very", "was", "wasn't", "we", "we'd", "we'll", "we're",
    "we've", "were", "weren't", "what", "what's", "when", "when's", "where", "where's", "which", "while", "who",
    "who's", "whom", "why", "why's", "with", "won't", "would", "wouldn't", "you", "you'd", "you'll", "you're",
    "you've", "your", "yours", "yourself", "yourselves", "just", "really", "quite", "so", "very", "also", "still",
    "even", "now", "then", "yet", "user", "user's", "users", "im", "ive", "id", "dont", "s", "t", "d", "ll", "m",
    "re", "ve",
])

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’-]*")


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


def stem(w: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(w) > len(suffix) + 2 and w.endswith(suffix):
            return w[: -len(suffix)]
    return w


def supported(statement: str, evidence: list[str]) -> bool:
    """True when every content word of ``statement`` occurs in ``evidence`` (the user's own turns).

    Words match by a light stem ("drinks" and "drink", "hiking" and "hike"), never by meaning: a
    learnt statement may reorder or drop the user's words, not add to them.
    """
    said = {stem(w) for text in evidence for w in content_words(text)}
    mine = {stem(w) for w in content_words(statement)}
    return bool(mine) and mine <= said


def sentences(text: str) -> list[str]:
    """The sentences of ``text`` (``core/sentences.py``: abbreviations, initials, decimals and times
    do not end one)."""
    return _sentences.split(text)



def stated(text: str) -> str:
    """Only the statements of ``text``: its questions, requests, hypotheticals and small talk left out.
    The evidence a learnt fact may cite ("What's my sister's name?" states nothing)."""
    return " ".join(s for s in sentences(text) if _sentences.is_statement(s))


def not_a_fact(text: str) -> str | None:
    """What ``text`` is when it states nothing: "question", "request", "hypothetical" or "small talk"
    (the kind of its first sentence); None when one of its sentences is a statement."""
    kinds = [_sentences.kind(s) for s in sentences(text)]
    if not kinds or "statement" in kinds:
        return None
    return kinds[0]


def only_asks(text: str) -> bool:
    """Every sentence of ``text`` is a question: it tells nothing about the user, and recalled for a
    later message it would only echo what is asked again."""
    said = sentences(text)
    return bool(said) and all(s.rstrip().endswith("?") for s in said)


def keywords_of(text: str, limit: int = 6) -> str:
    seen = [w for w in dict.fromkeys(w.strip("'-") for w in words(text)) if w and w in content_words(w)]
    return ", ".join(seen[:limit])
