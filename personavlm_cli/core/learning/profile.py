"""The core profile's schema: its fields, and a profile's values merged, named and shown.

Each field's value is cut out of one of the user's sentences by a pattern (``patterns.profile_of``)
and carries the id of the turn it came from; there are no free-form keys.
"""

from __future__ import annotations

FIELDS = ("name", "age", "occupation", "location", "hometown", "family", "pets", "languages")
"""The core profile's fields, in display order. ``family`` and ``pets`` hold "relation Name" items,
``languages`` a list; the others one value each (a newer one replaces the older)."""

LIST_FIELDS = ("family", "pets", "languages")


def people_of(facts: dict[str, str]) -> tuple[str, ...]:
    """The names in a profile's family and pets ("daughter Lena, cat Pepper" -> ("Lena", "Pepper"))."""
    return tuple(item.split()[-1] for name in ("family", "pets")
                 for item in filter(None, (facts.get(name) or "").split(", ")) if len(item.split()) > 1)


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
