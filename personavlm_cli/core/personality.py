"""The Big Five and the momentum-based personality evolving mechanism (PEM, paper §4).

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

from personavlm_cli.core.memory import TRAITS

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


def initial() -> dict[str, float]:
    return {t: NEUTRAL for t in TRAITS}


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
