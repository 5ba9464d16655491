"""The portable archive's strict checks: what every member of an archive must be before anything of
it is written (docs/formats.md). The manifest (format, version, a sha256 for every member), each memory
(types, times in order, roles, ids, links, text and keyword sizes, an image named by its content), the
version links (no loop; every successor known), every image member decodes as an image and is used by
a memory, the personality (types and ranges) and the state. ``adapters/archive_read.py`` reads an
archive through them; each problem is one PersonaError line ending "nothing imported".
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import cast

from personavlm_cli.core.errors import PersonaError
from personavlm_cli.core.memory import MAX_YEAR, MIN_YEAR, TRAITS, TYPES, Memory, MemoryType, from_iso

FORMAT = "personavlm-archive"
VERSION = 1

MAX_TEXT_CHARS = 256 * 1024     # one memory's text, in characters
MAX_KEYWORDS_CHARS = 4096

IMAGE_MEMBER = re.compile(r"images/([0-9a-f]{64})\.([a-z0-9]{1,5})")
_IMAGE_PATH = re.compile(r"([0-9a-f]{2})/([0-9a-f]{64})\.([a-z0-9]{1,5})")
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_SHA = re.compile(r"[0-9a-f]{64}")
_ROLES = ("user", "assistant")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def strict_json(raw: bytes | str):
    """json.loads without NaN, Infinity or numbers that overflow to them; deep nesting is a ValueError."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _check_manifest(manifest, file: Path) -> dict:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PersonaError(f"{file} is not a personavlm archive")
    version = manifest.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PersonaError(f"archive {file} has an invalid format version ({_shown(version)}): "
                           f"expected a whole number such as {VERSION}")
    if version > VERSION:
        raise PersonaError(f"archive {file} has format version {version if version < 10**6 else 'too new'}; "
                           "upgrade personavlm")
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed or not all(
            isinstance(k, str) and isinstance(v, str) and _SHA.fullmatch(v) for k, v in listed.items()):
        raise PersonaError(f"archive {file} has a malformed manifest ('files' must map each member to its sha256)")
    return listed


def _check_image(file: Path, name: str, blob: bytes) -> None:
    """An image member must decode as an image of a supported format, under the attachment limits."""
    from personavlm_cli.adapters import images as img
    from personavlm_cli.core.errors import ImageError

    ext = cast(re.Match[str], IMAGE_MEMBER.fullmatch(name)).group(2)  # only image members come here
    if ext not in set(img.EXTENSIONS.values()):
        raise PersonaError(f"archive {file}: {name} is not an image file name (.{ext}); nothing imported")
    try:
        im = img._open(blob, name)
        try:
            img._decode_first_frame(im, name)
        finally:
            im.close()
    except ImageError as exc:
        raise PersonaError(f"archive {file}: {exc}; nothing imported") from None


def _shown(value) -> str:
    text = repr(value) if not isinstance(value, str) else "'" + value + "'"
    text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_memory_line(line: str, n: int) -> Memory:
    """One line of memories.jsonl, checked as the record file will need it; raises PersonaError."""
    try:
        raw = strict_json(line)
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        m = Memory.from_dict(raw)
        _check_memory(m)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise PersonaError(f"the archive's memory on line {n} is invalid ({_short(exc)}); nothing imported") from None
    return m


def _time(value: str, key: str):
    when = from_iso(value)
    if not MIN_YEAR <= when.year <= MAX_YEAR:
        raise ValueError(f"{key} is out of range (years {MIN_YEAR}-{MAX_YEAR})")
    when.timestamp()
    return when


def _check_memory(m: Memory) -> None:
    for key in ("id", "type", "text", "occurred_at", "created_at"):
        if not isinstance(getattr(m, key), str):
            raise ValueError(f"{key} must be a string")
    if m.type not in TYPES:
        raise ValueError(f"unknown type {_shown(m.type)}")
    if not _ID.fullmatch(m.id):
        raise ValueError("bad id")
    if len(m.text) > MAX_TEXT_CHARS:
        raise ValueError(f"its text is {len(m.text)} characters, over the limit of {MAX_TEXT_CHARS}")
    start = _time(m.occurred_at, "occurred_at")
    _time(m.created_at, "created_at")
    if m.occurred_end is not None:
        if not isinstance(m.occurred_end, str):
            raise ValueError("occurred_end must be a string")
        if _time(m.occurred_end, "occurred_end") < start:
            raise ValueError("occurred_end is before occurred_at")
    if m.valid_to is not None:
        if not isinstance(m.valid_to, str):
            raise ValueError("valid_to must be a string")
        _time(m.valid_to, "valid_to")
    if not isinstance(m.source_ids, list) or not all(isinstance(x, str) and _ID.fullmatch(x) for x in m.source_ids):
        raise ValueError("source_ids must be a list of ids")
    if not isinstance(m.meta, dict) or not isinstance(m.keywords, str):
        raise ValueError("meta must be an object and keywords a string")
    if len(m.keywords) > MAX_KEYWORDS_CHARS:
        raise ValueError(f"its keywords are over the limit of {MAX_KEYWORDS_CHARS} characters")
    for key in ("role", "session_id", "image_sha256", "superseded_by"):
        if getattr(m, key) is not None and not isinstance(getattr(m, key), str):
            raise ValueError(f"{key} must be a string")
    if m.role is not None and m.role not in _ROLES:
        raise ValueError(f"role {_shown(m.role)} is not user or assistant")
    if m.type == MemoryType.TURN and m.role is None:
        raise ValueError("a turn must have the role user or assistant")
    if m.session_id is not None and len(m.session_id) > 256:
        raise ValueError("session_id is too long")
    if m.superseded_by is not None and not _ID.fullmatch(m.superseded_by):
        raise ValueError("superseded_by is not an id")
    if m.superseded_by == m.id:
        raise ValueError("it supersedes itself")
    if m.image_sha256 is not None and not _SHA.fullmatch(m.image_sha256):
        raise ValueError("image_sha256 is not a sha256")
    path = m.meta.get("path")
    if path is not None:
        # An image memory names its file by content; anything else could point outside the store.
        found = _IMAGE_PATH.fullmatch(str(path))
        if not found or found.group(2) != m.image_sha256 or found.group(1) != (m.image_sha256 or "")[:2]:
            raise ValueError(f"image path {str(path)[:80]!r} is not the content address of the image")


def _check_links(memories: list[Memory], known: set[str] | None) -> None:
    """Version links: no loop among the archive's memories; with ``known`` (the store's ids) given,
    every ``superseded_by`` names a memory of the archive or of the store."""
    successor = {m.id: m.superseded_by for m in memories if m.superseded_by is not None}
    ids = {m.id for m in memories}
    if known is not None:
        for m in memories:
            if m.superseded_by is not None and m.superseded_by not in ids and m.superseded_by not in known:
                raise PersonaError(f"the archive's memory {m.id} is superseded by {m.superseded_by}, which is "
                                   "neither in the archive nor in the store; nothing imported")
    done: set[str] = set()
    for first in successor:
        path: set[str] = set()
        at = first
        while at in successor and at not in done:
            if at in path:
                raise PersonaError(f"the archive's versions of memory {at} form a loop (superseded_by leads "
                                   "back to itself); nothing imported")
            path.add(at)
            at = successor[at]
        done |= path


def _check_images_used(file: Path, memories: list[Memory], data: dict) -> None:
    used = {Path(str(m.meta["path"])).name for m in memories if m.meta.get("path")}
    for name in data:
        if name.startswith("images/") and name[len("images/"):] not in used:
            raise PersonaError(f"archive {file} has an image member no memory uses ({name}); nothing imported")


def _is_number(v, low: float, high: float) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high)


def _parse_personality_and_state(data: dict) -> tuple[dict, dict]:
    try:
        personality = strict_json(data.get("personality.json", b"{}"))
        state = strict_json(data.get("state.json", b"{}"))
        if not isinstance(personality, dict) or not isinstance(state, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise PersonaError(f"the archive's personality or state is invalid ({_short(exc)}); nothing imported") from None
    problem = _personality_problem(personality)
    if problem:
        raise PersonaError(f"the archive's personality is invalid ({problem}); nothing imported")
    consolidated = state.get("consolidated", {})
    if consolidated is None:
        consolidated = {}
    if not isinstance(consolidated, dict) or not all(
            isinstance(k, str) and len(k) <= 256 and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 53
            for k, v in consolidated.items()):
        raise PersonaError("the archive's state is invalid ('consolidated' must map sessions to turn counts); "
                           "nothing imported")
    return personality, {**state, "consolidated": consolidated}


def _personality_problem(personality: dict) -> str | None:
    """What is wrong with the personality block (types and ranges), or None."""

    def vector_problem(v, what: str) -> str | None:
        if not isinstance(v, dict) or set(v) != set(TRAITS):
            return f"{what} must give the five traits"
        bad = next((t for t in TRAITS if not _is_number(v[t], 1, 5)), None)
        return f"{what}: {bad} must be a number from 1 to 5" if bad else None

    state = personality.get("state")
    if state is not None and (problem := vector_problem(state, "the state")):
        return problem
    updates = personality.get("updates", 0)
    if updates is None:
        updates = 0
    if not isinstance(updates, int) or isinstance(updates, bool) or not 0 <= updates < 1 << 53:
        return "'updates' must be a count"
    history = personality.get("history", [])
    if history is None:
        history = []
    if not isinstance(history, list):
        return "'history' must be a list"
    for i, h in enumerate(history, 1):
        where = f"history entry {i}"
        if not isinstance(h, dict):
            return f"{where} is not an object"
        try:
            if not isinstance(h.get("at"), str):
                raise ValueError
            _time(h["at"], "at")
        except (ValueError, OverflowError):
            return f"{where}: 'at' is not a time"
        if h.get("turn_id") is not None and not (isinstance(h["turn_id"], str) and _ID.fullmatch(h["turn_id"])):
            return f"{where}: 'turn_id' is not an id"
        m = h.get("m")
        if not isinstance(m, int) or isinstance(m, bool) or not 0 <= m < 1 << 53:
            return f"{where}: 'm' must be a count"
        if h.get("lambda") is not None and not _is_number(h["lambda"], 0, 1):
            return f"{where}: 'lambda' must be a number from 0 to 1"
        inferred = h.get("inferred")
        if inferred is not None and not (isinstance(inferred, dict) and set(inferred) <= set(TRAITS)
                                         and all(_is_number(v, 1, 5) for v in inferred.values())):
            return f"{where}: 'inferred' must map traits to numbers from 1 to 5"
        for key in ("before", "after"):
            if problem := vector_problem(h.get(key), f"{where} '{key}'"):
                return problem
        if not isinstance(h.get("note", ""), str) or len(h.get("note", "")) > MAX_KEYWORDS_CHARS:
            return f"{where}: 'note' must be a short text"
    return _evidence_problem(personality.get("evidence"))


def _evidence_problem(evidence) -> str | None:
    """What is wrong with the evidence block (the totals and the sentences' spans), or None."""
    if evidence is None:
        return None
    if not isinstance(evidence, dict) or not isinstance(evidence.get("totals"), dict) \
            or not isinstance(evidence.get("items", []), list):
        return "'evidence' must hold 'totals' and a list of 'items'"
    for t, total in evidence["totals"].items():
        if t not in TRAITS or not isinstance(total, dict) or not _is_number(total.get("weight"), 0, 1e9) \
                or not _is_number(total.get("sum"), -1e9, 1e9):
            return f"evidence totals: '{_short(t)}' must be a trait with a weight and a sum"
    for i, e in enumerate(evidence.get("items", []), 1):
        where = f"evidence item {i}"
        if not isinstance(e, dict) or e.get("trait") not in TRAITS:
            return f"{where} must name a trait"
        start, end = e.get("start"), e.get("end")
        if not (isinstance(start, int) and isinstance(end, int) and not isinstance(start, bool)
                and not isinstance(end, bool) and 0 <= start <= end < 1 << 40):
            return f"{where}: 'start' and 'end' must be a span"
        if not all(_is_number(e.get(k), lo, hi) for k, lo, hi in (("direction", -1, 1), ("weight", 0, 1),
                                                                   ("moved", -4, 4))):
            return f"{where}: 'direction', 'weight' and 'moved' must be numbers in range"
        if e.get("turn_id") is not None and not (isinstance(e["turn_id"], str) and _ID.fullmatch(e["turn_id"])):
            return f"{where}: 'turn_id' is not an id"
        if not isinstance(e.get("marker", ""), str) or len(e.get("marker", "")) > MAX_KEYWORDS_CHARS \
                or not isinstance(e.get("at", ""), str):
            return f"{where}: 'marker' and 'at' must be short texts"
    return None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text[:120]

