"""Memories: the records the assistant keeps about its user, and the clock they are stamped with.

Types (paper §2, plus the raw timeline): ``turn`` (every user and assistant message),
``image`` (every attached image), ``semantic`` (lasting facts and preferences), ``episodic``
(topic summaries over a session's turns), ``procedural`` (habits and goals) and ``core`` (the
profile). Every memory carries its provenance (``source_ids``), when it happened
(``occurred_at``) and when it was recorded (``created_at``); a superseded memory keeps its text
and says when it stopped being true (``valid_to``) and what replaced it (``superseded_by``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum, unique
from typing import Any

from personavlm_cli.core.errors import PersonaError


@unique
class MemoryType(StrEnum):
    """A memory's type (the paper's §2 names, plus the raw timeline). A ``StrEnum``: each member is the very
    string stored in the records, so a stored ``"core"`` and ``MemoryType.CORE`` are equal."""

    CORE = "core"  # the profile: one current version, its facts in ``meta["facts"]``
    SEMANTIC = "semantic"  # lasting facts and preferences
    EPISODIC = "episodic"  # topic summaries over a session's turns
    PROCEDURAL = "procedural"  # habits and goals
    IMAGE = "image"  # every attached image
    TURN = "turn"  # every user and assistant message


TYPES = tuple(MemoryType)
TRAITS = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")  # the Big Five
_PREFIX = {MemoryType.CORE: "core", MemoryType.SEMANTIC: "sem", MemoryType.EPISODIC: "epi",
           MemoryType.PROCEDURAL: "proc", MemoryType.IMAGE: "img", MemoryType.TURN: "turn"}


def new_id(kind: str) -> str:
    return f"{_PREFIX[MemoryType(kind)]}_{secrets.token_hex(5)}"


def type_of_id(memory_id: str) -> MemoryType | None:
    prefix = memory_id.split("_", 1)[0]
    for kind, p in _PREFIX.items():
        if p == prefix:
            return kind
    return None


# --- time -------------------------------------------------------------------------------------

TIME_FORMAT = "%Y-%m-%d %H:%M"


# The product's clock: whoever runs a command in-process (cli.terminal.Terminal.activate, the tests) may set
# another for its context, a function that returns an aware datetime.
CLOCK: ContextVar[Callable[[], datetime] | None] = ContextVar("personavlm_clock", default=None)


def now() -> datetime:
    clock = CLOCK.get()
    return (clock() if clock is not None else datetime.now().astimezone()).replace(microsecond=0)


# Times the clock arithmetic (session gaps, time windows, timestamps) can use on every platform.
MIN_YEAR, MAX_YEAR = 1900, 9998


def parse_time(text: str, what: str = "time") -> datetime:
    """Parse the user's "YYYY-MM-DD HH:MM" (or a date, or ISO 8601) as local time, between the years
    1900 and 9998; anything else is one PersonaError line."""
    raw = text.strip()
    shown = raw.encode("unicode_escape").decode("ascii")[:60]
    value = None
    for fmt in (TIME_FORMAT, "%Y-%m-%d"):
        try:
            value = datetime.strptime(raw, fmt)
            break
        except ValueError:
            pass
    if value is None:
        try:
            value = datetime.fromisoformat(raw)
        except ValueError:
            raise PersonaError(f"invalid {what} '{shown}': use YYYY-MM-DD HH:MM") from None
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise PersonaError(f"invalid {what} '{shown}': the year must be between {MIN_YEAR} and {MAX_YEAR}")
    try:
        value = value if value.tzinfo else value.astimezone()
        value.timestamp()
    except (ValueError, OverflowError, OSError):
        raise PersonaError(f"invalid {what} '{shown}': out of range") from None
    return value


def iso(value: datetime) -> str:
    return value.isoformat(timespec="seconds")


def from_iso(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.astimezone()


def prompt_time(value: datetime) -> str:
    """The paper's surface form: "YYYY-MM-DD HH:MM (Weekday)"."""
    return f"{value.strftime(TIME_FORMAT)} ({value.strftime('%A')})"



# --- records ----------------------------------------------------------------------------------


@dataclass
class Memory:
    id: str
    type: str
    text: str
    occurred_at: str
    created_at: str
    source_ids: list[str] = field(default_factory=list)
    role: str | None = None  # "user" or "assistant" for turns
    session_id: str | None = None
    keywords: str = ""
    image_sha256: str | None = None
    occurred_end: str | None = None  # episodes span their source turns
    valid_to: str | None = None
    superseded_by: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Stored, exported and compared as the plain string: a MemoryType given here is kept as its value.
        if type(self.type) is not str:
            self.type = str(self.type)

    @property
    def current(self) -> bool:
        return self.superseded_by is None and self.valid_to is None

    @property
    def occurred(self) -> datetime:
        return from_iso(self.occurred_at)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Memory:
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in data.items() if k in names})

    def index_text(self) -> str:
        """What the lexical and dense indexes see: the text plus its keywords."""
        if self.keywords and self.keywords not in self.text:
            return f"{self.text}\n{self.keywords}"
        return self.text
