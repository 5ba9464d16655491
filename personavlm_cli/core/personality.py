"""The Big Five: the reading from evidence (what ``chat`` uses), and the paper's momentum-based
personality evolving mechanism (PEM, paper §4: ``evolve``, kept for ``eval personality --method paper``).

The reading from evidence: each sentence that bears on a trait (``core/trait_evidence.py``) adds its
direction (+1/-1) with its weight (0.5-1; one message gives a trait at most weight 1, and the chat model's
own rating, where the model is capable, ``MODEL_WEIGHT``). A trait's value is
``3 + 2 * sum(weight * direction) / (sum(weight) + PRIOR)``: shrunk toward the neutral middle, as if
``PRIOR`` units of neutral evidence came first, so one sentence moves a trait by at most 0.67 and five
consistent clear messages by about 1.4. Its confidence is ``sum(weight) / (sum(weight) + PRIOR)``; below
``CONFIDENCE_FLOOR`` (less than two clear sentences) the trait reads "not enough evidence yet" and the
assistant's tone does not follow it.

The paper's PEM, for comparison:

p <- lambda*p + (1-lambda)*p', with lambda = 0.7 - 0.2*cos(pi*min(m,50)/50): the profile moves
quickly over the first turns (lambda 0.5) and settles later (0.9 from turn 50 on).

Skip rule: we follow the reference code and skip each trait whose inferred value is neutral (3),
updating the others, rather than the paper's rule of skipping only when all five are neutral. A
small model answers "3" whenever a turn carries no signal for that trait; counting those as
evidence would pull every trait towards the middle on ordinary turns, which is drift, not
personality.
"""

from __future__ import annotations

import math
from typing import Any

from personavlm_cli.core.memory import TRAITS as TRAITS  # re-exported: callers read pem.TRAITS

# Per trait, the evidence summed so far: {"sum": weighted ratings, "weight": their weights}.
Totals = dict[str, dict[str, float]]

NEUTRAL = 3.0

# The paper's descriptors (Table 10), low and high end of each trait.
DESCRIPTORS = {
    "openness": ("practical, conventional, cautious", "creative, curious, abstract"),
    "conscientiousness": ("spontaneous, flexible, impulsive", "organised, disciplined, detail-oriented"),
    "extraversion": ("reserved, quiet, reflective", "outgoing, energetic, talkative"),
    "agreeableness": ("competitive, critical, direct", "cooperative, empathetic, kind"),
    "neuroticism": ("calm, resilient, stable", "anxious, worry-prone, stressed"),
}

# How to speak to someone at either end of each trait: what the generic prompt profile says.
STYLE = {
    "openness": ("keep to concrete, practical suggestions", "welcome new ideas and abstract angles"),
    "conscientiousness": ("keep it light and flexible", "be structured and precise"),
    "extraversion": ("be calm and concise", "be lively and conversational"),
    "agreeableness": ("be direct and to the point", "be warm and considerate"),
    "neuroticism": ("be matter-of-fact", "be reassuring and gentle"),
}


PRIOR = 2.0
CONFIDENCE_FLOOR = 0.5
MESSAGE_CAP = 1.0  # the most weight one message gives one trait: a long message is not many witnesses
# The chat model's own rating of a message (1-5), where the model is capable (core/capability.py): a
# quarter of a clear sentence. Zero-shot ratings of short messages by language models correlate at
# best about 0.2-0.4 with self-report, and we cannot measure the user's model here; four agreeing
# ratings count as much as one sentence that plainly says it. It is only asked about a message that
# already has a sentence about the user, so it cannot move a trait on a greeting or a question.
MODEL_WEIGHT = 0.25


def initial() -> dict[str, float]:
    return {t: NEUTRAL for t in TRAITS}


def rating_messages(text: str) -> list[dict[str, str]]:
    """The chat model's rating of one message (the paper's per-turn inference, reduced to the message)."""
    return [
        {"role": "system", "content": "You rate the user's momentary Big Five personality state from their "
         "message, on integers 1 (very low) to 5 (very high); 3 means no signal. Reply with JSON."},
        {"role": "user", "content": f"User message:\n{text}"},
    ]


def momentum(m: int) -> float:
    """lambda_m for the m-th update (m = turns already processed)."""
    return 0.7 - 0.2 * math.cos(math.pi * min(m, 50) / 50)


def evolve(current: dict[str, float], inferred: dict[str, int], m: int) -> tuple[dict[str, float], float, list[str]]:
    """One PEM step; returns (new vector, lambda, traits skipped as neutral)."""
    lam = momentum(m)
    out, skipped = dict(current), []
    for trait in TRAITS:
        value = inferred.get(trait, 3)
        if value == 3:
            skipped.append(trait)
            continue
        out[trait] = clamp(lam * current[trait] + (1.0 - lam) * float(value))
    return out, lam, skipped


def message_evidence(items: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """One message's evidence per trait: (sum of weight*direction, sum of weight), capped at
    ``MESSAGE_CAP`` weight per trait."""
    out: dict[str, tuple[float, float]] = {}
    for e in items:
        s, w = out.get(e["trait"], (0.0, 0.0))
        out[e["trait"]] = (s + e["weight"] * e["direction"], w + e["weight"])
    for t, (s, w) in out.items():
        if w > MESSAGE_CAP:
            out[t] = (s * MESSAGE_CAP / w, MESSAGE_CAP)
    return out


def empty_totals() -> dict[str, dict[str, float]]:
    return {t: {"sum": 0.0, "weight": 0.0} for t in TRAITS}


def add_evidence(totals: Totals, items: list[dict[str, Any]]) -> Totals:
    """Totals with one message's evidence added (a new dict)."""
    out = {t: dict(totals.get(t) or {"sum": 0.0, "weight": 0.0}) for t in TRAITS}
    for t, (s, w) in message_evidence(items).items():
        out[t]["sum"] += s
        out[t]["weight"] += w
    return out


def totals_of(items: list[dict[str, Any]]) -> Totals:
    """The totals of kept evidence, message by message (what ``add_evidence`` built, rebuilt)."""
    by_message: dict[Any, list[dict[str, Any]]] = {}
    for e in items:
        by_message.setdefault(e.get("turn_id"), []).append(e)
    totals = empty_totals()
    for message in by_message.values():
        totals = add_evidence(totals, message)
    return totals


def value_of(total: dict[str, float]) -> float:
    return clamp(NEUTRAL + 2.0 * total["sum"] / (total["weight"] + PRIOR))


def confidence_of(total: dict[str, float]) -> float:
    return total["weight"] / (total["weight"] + PRIOR)


def vector_of(totals: Totals) -> dict[str, float]:
    return {t: round(value_of(totals.get(t) or {"sum": 0.0, "weight": 0.0}), 6) for t in TRAITS}


def confidences(totals: Totals | None) -> dict[str, float]:
    totals = totals or {}
    return {t: round(confidence_of(totals.get(t) or {"sum": 0.0, "weight": 0.0}), 6) for t in TRAITS}


def for_tone(vector: dict[str, float], totals: Totals | None) -> dict[str, float]:
    """What the assistant's tone follows: each trait read with confidence, the others neutral."""
    conf = confidences(totals)
    return {t: float(vector[t]) if conf[t] >= CONFIDENCE_FLOOR else NEUTRAL for t in TRAITS}


def clamp(value: float) -> float:
    return min(5.0, max(1.0, float(value)))


def reading(trait: str, value: float) -> str:
    """A one-line reading of a trait value, from the paper's descriptors."""
    low, high = DESCRIPTORS[trait]
    if value >= 3.5:
        return f"leans {high.split(', ')[0]} ({high})"
    if value <= 2.5:
        return f"leans {low.split(', ')[0]} ({low})"
    return "balanced"


def style_guidance(vector: dict[str, float]) -> str:
    """The generic profile's rendering: how to speak to this user, in words."""
    parts = []
    for trait in TRAITS:
        value = vector[trait]
        low, high = STYLE[trait]
        if value >= 3.5:
            parts.append(high)
        elif value <= 2.5:
            parts.append(low)
    if not parts:
        return "No strong personality signal yet: be friendly, clear and balanced."
    return "Adapt your tone: " + "; ".join(parts) + "."


def numeric_block(vector: dict[str, float]) -> str:
    """The persona-vlm profile's rendering, as the released weights were trained on (e.g. "3.4")."""
    return "\n".join(f"{t.capitalize()}: {str(vector[t])[:3]}" for t in TRAITS)
