"""A category a question asks about, to the words of its instances (issue 31's ``instance`` signal).

"What sports do I play?" is answered by "I swim every Tuesday" and "tennis with Bo on Sunday": no word is
shared, and MiniLM's cosine of a short question and a long turn is weak. The categories a question asks
about ("sports", "activities", "pets", "cities", "my relationship status") are looked up in a small shipped
lexicon of everyday categories (``data/kinds/kinds.json``, written from general knowledge of English, not
from any conversation), and recall (``core/recall.py``) asks the lexical index (BM25) a second time, for the
words of their instances. What that finds is the ``instance`` signal: fused with its weight in
``recall.WEIGHTS`` (0 turns it off), able to bring a memory in, and named in a hit's signals, so
``--explain`` and ``/why`` say why it came.

A category word counts only where the question asks for its instances (``categories``): a question for
things (not "why", "when" or "how", but "how many"), not a hypothetical ("would", "likely", "might",
"could": a judgement from what its subject said, ``taste``'s job in ``core/links.py``), the word plural
in the question's head, before its first auxiliary verb ("what sports do ...", "how many children does ...";
not "what did I buy for the kids?"), after "kind of"/"type of", or after a possessive ("my job",
"Caroline's identity"), and not a modifier of the next word ("her clothing store", "a career path"). A
who-question about someone (with a pronoun: "who supports her?", "who did I go with?") asks for the
category of the people in one's life. Rules only, no model call. Measured on LoCoMo's development split
(docs/benchmarks.md, "Recall for answers spread over several moments"): multi-hop recall@10 0.494 → 0.622,
nothing lost elsewhere; the store's own words nearest a category word by MiniLM were measured too and are
not here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from functools import lru_cache
from itertools import zip_longest
from pathlib import Path

KINDS_PATH = Path(__file__).resolve().parent.parent / "data" / "kinds" / "kinds.json"
# The instance query's length at most: its cost is BM25 over every memory that holds one of its words (at
# 100k memories of a synthetic store where a third hold one: 51 ms for 60 words, 32 ms for 30; docs/benchmarks.md).
MAX_WORDS = 30

_WORD = re.compile(r"[a-z]+")
_POSSESSIVE = frozenset(["my", "your", "his", "her", "their", "our", "s"])  # "s": the word after "Caroline's"
_KIND_OF = frozenset(["kind", "kinds", "type", "types", "sort", "sorts"])
_NOT_THINGS = frozenset(["why", "when", "how"])  # a reason, a time, a manner
_THINGS = frozenset(["what", "which", "who", "whom", "whose", "where"])
_HYPOTHETICAL = frozenset(["would", "likely", "might", "could"])  # "would I enjoy sports?": taste's question
_COUNT = frozenset(["many", "much", "often"])  # "how many": things again
# "Who supports her?", "who did I go with?": a who-question about someone (a pronoun, a possessive pronoun) asks
# for a person in their life: the category of such people.
_WHO = frozenset(["who", "whom"])
_PERSONAL = frozenset(["i", "me", "my", "you", "your", "he", "him", "his", "she", "her", "hers", "we", "us", "our",
                       "they", "them", "their"])
PEOPLE = "people"
# A plural category word asks for its instances in the question's head, before its first auxiliary ("what sports
# do ...", "how many children does ..."), not after it ("what did I buy for the kids?": things, not kin); a
# possessive or "kind of" asks anywhere ("what do Melanie's kids like?").
_COPULA = frozenset(["is", "are", "was", "were", "am"])
_AUXILIARY = frozenset(["do", "does", "did", "has", "have", "had", "is", "are", "was", "were", "am", "can", "will",
                        "should", "shall"])


@lru_cache(maxsize=1)
def lexicon() -> dict[str, tuple[str, ...]]:
    """Category name (singular; a few of two words) → the words of its instances (``data/kinds/kinds.json``)."""
    data = json.loads(KINDS_PATH.read_text(encoding="utf-8"))
    out: dict[str, list[str]] = {}
    for kind in data["kinds"]:
        for name in kind["names"]:
            words = out.setdefault(name.lower(), [])
            words.extend(w.lower() for w in kind["instances"] if w.lower() not in words)
    return {name: tuple(words) for name, words in out.items()}


def singulars(word: str) -> tuple[str, ...]:
    """The word and the forms a plural English noun may come from: "activities" → activity, "dishes" → dish."""
    forms = [word]
    if word.endswith("ies") and len(word) > 4:
        forms.append(word[:-3] + "y")
    if word.endswith("es") and len(word) > 3:
        forms.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        forms.append(word[:-1])
    if word == "children":
        forms.append("child")
    return tuple(forms)


def question_word(words: list[str]) -> str:
    """A question's first question word ("how many" for how with many, much or often), or "" when it has none."""
    for i, word in enumerate(words):
        if word in _NOT_THINGS or word in _THINGS:
            return "how many" if word == "how" and i + 1 < len(words) and words[i + 1] in _COUNT else word
    return ""


def asks_for_things(words: list[str]) -> bool:
    """Does a question (its lower-cased words) ask for things: what, which, who, how many, not why, when or
    how? Its first question word decides; a text without one does."""
    return question_word(words) not in _NOT_THINGS


def _head_end(words: list[str]) -> int | None:
    """Where a question's head ends: its first auxiliary verb after the question word ("What events *has*
    Caroline ...", "How many children *does* ...", "What are the activities Ola *does*"); None without a question
    word or an auxiliary."""
    start = next((i for i, w in enumerate(words) if w in _THINGS or w in _NOT_THINGS), None)
    if start is None:
        return None
    if start + 1 < len(words) and words[start + 1] in _COPULA:  # "what are the activities ...": the head follows
        start += 1
    return next((i for i in range(start + 1, len(words)) if words[i] in _AUXILIARY), None)


def categories(text: str, stop_words: Collection[str] = ()) -> list[str]:
    """The lexicon's categories whose instances ``text`` asks for, in the order it names them (see the module).
    ``stop_words`` (recall's): a category word followed by any other word is a modifier of it."""
    known = lexicon()
    words = _WORD.findall((text or "").lower().replace("\u2019", "'"))
    found: list[str] = []
    if not asks_for_things(words) or _HYPOTHETICAL & set(words):
        return found
    if question_word(words) in _WHO and _PERSONAL & set(words) and PEOPLE in known:
        found.append(PEOPLE)
    head = _head_end(words)
    for i, word in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if f"{word} {nxt}" in known:  # "relationship status"
            name, after = f"{word} {nxt}", words[i + 2] if i + 2 < len(words) else ""
        else:
            name = next((form for form in singulars(word) if form in known), "")
            after = nxt
        if not name or name in found:
            continue
        before = words[i - 1] if i else ""
        plural = name != word and " " not in name and (head is None or i < head)
        asked = plural or before in _POSSESSIVE or (before == "of" and i > 1 and words[i - 2] in _KIND_OF)
        if asked and (not after or after in stop_words):
            found.append(name)
    return found


def instance_words(text: str, stop_words: Collection[str] = ()) -> list[str]:
    """The words of the instances of the categories ``text`` asks for, leaving out the words it already has
    (the first query looks for those), at most ``MAX_WORDS`` taken from each category in turn; empty when it
    asks for no category."""
    known = lexicon()
    own = set(_WORD.findall((text or "").lower()))
    lists = [[w for w in known[name] if w not in own] for name in categories(text, stop_words)]
    words: list[str] = []
    for row in zip_longest(*lists):  # in turn from each category, the most common instances first
        words.extend(w for w in row if w is not None and w not in words)
    return words[:MAX_WORDS]
