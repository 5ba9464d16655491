"""Correcting a memory: the user's own wording replaces it as a new version.

The corrected text becomes the current version of the memory; the old one is kept as history, closed
at the moment of the edit and linked to its successor, as a contradiction learnt in conversation is
(``memory show`` lists both). When the old text was simply wrong and must not stay, the caller erases
it afterwards with ``forgetting`` (``memory edit --erase-old``): what was derived from it goes too.

Only what the assistant learnt can be corrected: semantic facts, episodes, habits and goals, the core
profile. Turns are the record of what was said and images are what was shown; those are forgotten,
not rewritten.
"""

from __future__ import annotations

import re
from datetime import datetime

from personavlm_cli.core.errors import NotFoundError, PersonaError
from personavlm_cli.core.learning import profile
from personavlm_cli.core.memory import Memory, MemoryType, iso, new_id, now
from personavlm_cli.core.ports import RecordStore
from personavlm_cli.core.store import MemoryStore

EDITABLE = (MemoryType.CORE, MemoryType.SEMANTIC, MemoryType.EPISODIC, MemoryType.PROCEDURAL)
MAX_CHARS = 4000


def editable(records: RecordStore, memory_id: str) -> Memory:
    """The memory, if it can be edited; else NotFoundError / PersonaError with one line."""
    old = records.get(memory_id)
    if old is None:
        raise NotFoundError(f"no memory with id '{memory_id}'")
    if old.type not in EDITABLE:
        what = "a turn is the record of what was said" if old.type == MemoryType.TURN else "an image memory is what was shown"
        raise PersonaError(f"'{memory_id}' cannot be edited: {what}; forget it instead "
                           f"(only {', '.join(EDITABLE)} memories are edited)")
    if not old.current:
        successor = f"superseded by {old.superseded_by}" if old.superseded_by else "closed"
        raise PersonaError(f"'{memory_id}' is an older version ({successor}): edit the current one")
    return old


def profile_fields(text: str) -> dict[str, str]:
    """``name: Dana Whitfield occupation: nurse`` (one line or several) as the profile's fields."""
    names = "|".join(profile.FIELDS)
    parts = re.split(rf"(?:^|\s|;|,)\b({names})\s*:\s*", text.strip(), flags=re.I)
    if parts[0].strip() or len(parts) < 3:
        raise PersonaError(f"write the profile as 'field: value' with these fields: {', '.join(profile.FIELDS)}")
    found = {}
    for key, value in zip(parts[1::2], parts[2::2]):
        value = value.strip().rstrip(";,").strip()
        if value:
            found[key.lower()] = value
    return {k: found[k] for k in profile.FIELDS if k in found}


def correct(store: MemoryStore, memory_id: str, text: str, at: datetime | None = None) -> Memory | None:
    """Make ``text`` the current version of memory ``memory_id``; the new memory, or None when the text
    is unchanged. Raises NotFoundError / PersonaError with one line for what cannot be edited."""
    old = editable(store.records, memory_id)
    text = " ".join("".join(ch if ch.isprintable() or ch in "\t\n" else " " for ch in text).split())
    if not text:
        raise PersonaError("empty text: nothing changed")
    if len(text) > MAX_CHARS:
        raise PersonaError(f"the new text has {len(text)} characters; a memory holds at most {MAX_CHARS}")
    facts = None
    if old.type == MemoryType.CORE:
        facts = profile_fields(text)
        text = profile.profile_text(facts)
    if text == old.text:
        return None
    when = iso(at or now())
    meta = {k: v for k, v in old.meta.items() if k not in ("merged", "reasoning", "origin", "reason")}
    meta.update(origin="edited by the user", edited_from=old.id)
    if facts is not None:  # what the user writes is what the profile shows
        before = old.meta.get("facts") or {}
        sources = old.meta.get("sources") or {}
        meta["facts"] = facts
        meta["sources"] = {k: sources[k] for k in facts if k in sources and before.get(k) == facts[k]}
    new = Memory(id=new_id(old.type), type=old.type, text=text, occurred_at=old.occurred_at, created_at=when,
                 source_ids=list(old.source_ids), session_id=old.session_id, keywords="",
                 occurred_end=old.occurred_end, meta=meta)
    store.supersede(old, new, at=when, operation="edit")
    return new
