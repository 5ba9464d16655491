"""Does the Big Five reading mean something? (`personavlm eval personality`)

Scripted writers (``data/personality/heldout.json``, ``tuning.json``, or a file of the same form, or the
form of ``shared/data/personality/dev.json``): for each trait a writer high on it and one low on it,
neutral writers (questions, requests, recipes, code, small talk), and negation pairs. Each writer's
messages are read from a neutral start, by one of two methods:

- ``evidence`` (what the chat uses): the sentences about the user that bear on a trait
  (``core/trait_evidence.py``), added up with shrinkage toward the middle (``core/personality.py``);
- ``paper``: the paper's method, the chat model's 1-5 rating of each message and the momentum update
  (``personality.evolve``), here with whatever model the user has (the embedded one by default).

Figures, each per trait and overall:

- **separation**: every writer's messages are cut into windows of five; each high window is paired
  with each low window, each read from a neutral start. ``in order``: share of pairs with the high
  window above the low one; ``by 0.5``: above by at least 0.5 on the 1-5 scale; AUC (ties count half).
- **neutral drift**: the largest distance from 3 of any trait after a neutral writer's messages, and
  the largest confidence; ``greetings moved``: greetings that changed any trait.
- **off-target drift**: after all of a trait writer's messages, the mean and largest distance from 3
  of the four other traits.
- **negation**: a pair is right when the plain sentence moves its trait and the negated one does not
  move it the same way; ``reversed`` when the negated one moves it the other way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product
from pathlib import Path

from personavlm_cli.core import personality as pem
from personavlm_cli.core.errors import PersonaError
from personavlm_cli.core.memory import TRAITS

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "personality"
NAMED = {"heldout": DATA_DIR / "heldout.json", "heldout2": DATA_DIR / "heldout2.json",
         "development": DATA_DIR / "development.json", "tuning": DATA_DIR / "tuning.json"}
WINDOW = 5
GREETINGS = ("hi", "Hello!", "hey there", "Good morning!", "Hi, how are you?", "thanks", "ok", "bye!",
             "Good night", "Hello again, nice to see you.")
METHODS = ("evidence", "paper")


@dataclass
class Writer:
    name: str
    trait: str | None
    side: str  # high, low or neutral
    messages: list[str]


@dataclass
class NegationPair:
    trait: str
    plain: str
    negated: str


def resolve(data: str | Path) -> Path:
    return NAMED.get(str(data), Path(data))


def load(data: str | Path) -> tuple[list[Writer], list[NegationPair]]:
    """Writers and negation pairs from a file of either form; a bad file is one clear error."""
    path = resolve(data)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersonaError(f"cannot read writers from {path}: {' '.join(str(exc).split())[:160]}") from None
    try:
        if "writers" in raw:
            writers = [Writer(w["name"], w.get("trait"), w["side"], [str(m) for m in w["messages"]])
                       for w in raw["writers"]]
            pairs = [NegationPair(p["trait"], p["plain"], p["negated"]) for p in raw.get("negation", [])]
        else:  # shared/data/personality/dev.json: "trait+"/"trait-" lists, "neutral", "negation" sentences
            writers, pairs = [], []
            for key, messages in raw.items():
                if key[:-1] in TRAITS and key[-1] in "+-":
                    writers.append(Writer(key, key[:-1], "high" if key[-1] == "+" else "low", list(messages)))
                elif key == "neutral":
                    writers.append(Writer("neutral", None, "neutral", list(messages)))
            for sentence in raw.get("negation", []):
                from personavlm_cli.core.trait_evidence import positive_form

                pairs.append(NegationPair("", positive_form(sentence, antonyms=False)[0], sentence))
    except (KeyError, TypeError, AttributeError) as exc:
        raise PersonaError(f"{path} is not a file of writers (missing {exc})") from None
    bad = [w.name for w in writers if w.side not in ("high", "low", "neutral")
           or (w.side != "neutral" and w.trait not in TRAITS) or not w.messages]
    if bad:
        raise PersonaError(f"{path}: writers with no messages, or no trait and side: {', '.join(bad[:5])}")
    return writers, pairs


class EvidenceMethod:
    """What the chat uses: evidence sentences, shrinkage, confidence."""

    name = "evidence"

    def __init__(self, encoder):
        from personavlm_cli.core.trait_evidence import EvidenceReader

        self.reader = EvidenceReader(encoder)

    def rate(self, message: str) -> list[dict]:
        return [e.as_dict() for e in self.reader.read(message)]

    def reading(self, rated: list[list[dict]]) -> tuple[dict, dict | None]:
        totals = pem.empty_totals()
        for items in rated:
            totals = pem.add_evidence(totals, items)
        return pem.vector_of(totals), pem.confidences(totals)

    def moved(self, rated: list[dict]) -> dict[str, float]:
        return {t: s for t, (s, _w) in pem.message_evidence(rated).items() if s}


class PaperMethod:
    """The paper's: the model rates each message 1-5 per trait, the momentum update follows."""

    name = "paper"

    def __init__(self, model):
        self.model = model

    def rate(self, message: str) -> dict:
        from personavlm_cli.core.update_stage import PERSONALITY_SCHEMA

        try:
            return self.model.complete_json(pem.rating_messages(message), PERSONALITY_SCHEMA, max_tokens=80,
                                            retries=1) or {}
        except PersonaError:
            return {}

    def reading(self, rated: list[dict]) -> tuple[dict, dict | None]:
        vector = pem.initial()
        for m, inferred in enumerate(rated):
            vector, _lam, _skipped = pem.evolve(vector, inferred, m)
        return vector, None

    def moved(self, rated: dict) -> dict[str, float]:
        return {t: v - 3 for t, v in rated.items() if v != 3}


def run(writers: list[Writer], pairs: list[NegationPair], method, window: int = WINDOW,
        progress: Callable[[str], None] | None = None) -> dict:
    """Every figure of the module docstring for one method."""
    tick = progress or (lambda _what: None)
    rated: dict[str, list] = {}
    for w in writers:
        rated[w.name] = []
        for message in w.messages:
            rated[w.name].append(method.rate(message))
            tick(w.name)
    greetings = []
    for g in GREETINGS:
        greetings.append(method.moved(method.rate(g)))
        tick("greetings")
    negation = []
    for p in pairs:
        negation.append((method.moved(method.rate(p.plain)), method.moved(method.rate(p.negated))))
        tick("negation")
    return summarize(writers, pairs, method, rated, greetings, negation, window)


def _windows(results: list, window: int) -> list[list]:
    return [results[i:i + window] for i in range(0, len(results) - window + 1, window)]


def summarize(writers, pairs, method, rated, greetings, negation, window) -> dict:
    traits: dict[str, dict] = {}
    all_pairs = right = by_half = 0
    auc_sum = 0.0
    for trait in TRAITS:
        high = [w for w in writers if w.trait == trait and w.side == "high"]
        low = [w for w in writers if w.trait == trait and w.side == "low"]
        if not high or not low:
            continue
        hv = [method.reading(chunk)[0][trait] for w in high for chunk in _windows(rated[w.name], window)]
        lv = [method.reading(chunk)[0][trait] for w in low for chunk in _windows(rated[w.name], window)]
        n = len(hv) * len(lv)
        in_order = sum(h > lo for h, lo in product(hv, lv))
        half = sum(h - lo >= 0.5 for h, lo in product(hv, lv))
        ties = sum(h == lo for h, lo in product(hv, lv))
        full = {}
        for w in high + low:
            vector, conf = method.reading(rated[w.name])
            others = [abs(vector[t] - pem.NEUTRAL) for t in TRAITS if t != trait]
            full[w.name] = {"side": w.side, "messages": len(w.messages), "value": round(vector[trait], 3),
                            "confidence": None if conf is None else round(conf[trait], 3),
                            "off_target_mean": round(sum(others) / len(others), 3),
                            "off_target_max": round(max(others), 3),
                            "messages_with_evidence": sum(bool(method.moved(r).get(trait)) for r in rated[w.name])}
        traits[trait] = {"pairs": n, "in_order": _share(in_order, n), "by_half": _share(half, n),
                         "auc": _share(in_order + 0.5 * ties, n),
                         "high_mean": round(sum(hv) / len(hv), 3) if hv else None,
                         "low_mean": round(sum(lv) / len(lv), 3) if lv else None, "writers": full}
        all_pairs += n
        right += in_order
        by_half += half
        auc_sum += in_order + 0.5 * ties
    neutral = {}
    for w in writers:
        if w.side != "neutral":
            continue
        vector, conf = method.reading(rated[w.name])
        neutral[w.name] = {"messages": len(w.messages),
                           "max_drift": round(max(abs(vector[t] - pem.NEUTRAL) for t in TRAITS), 3),
                           "max_confidence": None if conf is None else round(max(conf.values()), 3),
                           "messages_moving": sum(bool(method.moved(r)) for r in rated[w.name])}
    off = [x for t in traits.values() for x in t["writers"].values()]
    neg_right = neg_reversed = plain_moved = 0
    for p, (plain, negated) in zip(pairs, negation):
        trait = p.trait or max(plain, key=lambda t: abs(plain[t]), default="")
        d_plain, d_neg = plain.get(trait, 0), negated.get(trait, 0)
        if d_plain:
            plain_moved += 1
            neg_right += d_neg == 0 or (d_neg > 0) != (d_plain > 0)
            neg_reversed += d_neg != 0 and (d_neg > 0) != (d_plain > 0)
    return {
        "method": method.name, "window": window,
        "overall": {"pairs": all_pairs, "in_order": _share(right, all_pairs), "by_half": _share(by_half, all_pairs),
                    "auc": _share(auc_sum, all_pairs),
                    "neutral_max_drift": max((v["max_drift"] for v in neutral.values()), default=None),
                    "neutral_max_confidence": max((v["max_confidence"] for v in neutral.values()
                                                   if v["max_confidence"] is not None), default=None),
                    "greetings": len(greetings), "greetings_moved": sum(bool(g) for g in greetings),
                    "off_target_mean": round(sum(x["off_target_mean"] for x in off) / len(off), 3) if off else None,
                    "off_target_max": max((x["off_target_max"] for x in off), default=None),
                    "negation_pairs": len(pairs), "negation_plain_moved": plain_moved,
                    "negation_right": neg_right, "negation_reversed": neg_reversed},
        "traits": traits, "neutral": neutral,
    }


def _share(k: float, n: int) -> float | None:
    return round(k / n, 3) if n else None


def done_when(result: dict) -> dict[str, bool]:
    """The issue's bar, on one result: pairs in order by 0.5, neutral writers still and unsure, greetings."""
    o = result["overall"]
    checks = {"pairs in order by 0.5 >= 90%": (o["by_half"] or 0) >= 0.9,
              "neutral within 0.2": o["neutral_max_drift"] is not None and o["neutral_max_drift"] <= 0.2,
              "a greeting changes nothing": o["greetings_moved"] == 0}
    if o["neutral_max_confidence"] is not None:
        checks["neutral with low confidence"] = o["neutral_max_confidence"] < pem.CONFIDENCE_FLOOR
    return checks
