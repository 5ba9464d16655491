"""The date grammar, one place for it: time expressions in a message ("last Tuesday", "yesterday",
"3 days ago", "in March") as a recall window (``window``), and the dates a question names ("on October
13, 2023", "in June") that recall prefers (``query_dates``, ``date_match``).

The paper's model emits a time window with each retrieval; a small general model rarely does it
well. When the user's own words name a period, that period is a better window than none, so the
response stage uses it whenever the model gave no window of its own.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]
NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
           "eight": 8, "nine": 9, "ten": 10, "couple of": 2, "few": 3}

_NUM = r"(\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten|a couple of|a few)"


def _day(d: datetime) -> tuple[datetime, datetime]:
    start = d.replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1) - timedelta(seconds=1)


def _n(word: str) -> int:
    word = word.replace("a couple of", "couple of").replace("a few", "few")
    return int(word) if word.isdigit() else NUMBERS[word]


def window(text: str, now: datetime) -> tuple[datetime, datetime] | None:
    """The period a message refers to, or None. Periods end before ``now``."""
    t = text.lower()
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)

    m = re.search(r"\b(\d{4})-(\d{2})-(\d{2})\b", t)
    if m:
        try:
            return _day(now.replace(year=int(m[1]), month=int(m[2]), day=int(m[3])))
        except ValueError:
            pass
    if re.search(r"\byesterday\b|\blast night\b", t):
        return _day(today - timedelta(days=1))
    if re.search(r"\b(earlier )?today\b|\bthis morning\b", t):
        return today, now
    m = re.search(rf"\b{_NUM} (day|week|month)s? ago\b", t)
    if m:
        n = _n(m[1])
        days = {"day": 1, "week": 7, "month": 30}[m[2]] * n
        start, _ = _day(today - timedelta(days=days))
        slack = timedelta(days=0 if m[2] == "day" else (3 if m[2] == "week" else 10))
        return start - slack, min(now, start + timedelta(days=1) + slack)
    m = re.search(r"\b(last|on|this past) (" + "|".join(WEEKDAYS) + r")\b", t)
    if m:
        target = WEEKDAYS.index(m[2])
        back = (today.weekday() - target) % 7 or 7
        return _day(today - timedelta(days=back))
    if re.search(r"\blast week\b", t):
        start = today - timedelta(days=today.weekday() + 7)
        return start, start + timedelta(days=7) - timedelta(seconds=1)
    if re.search(r"\bthis week\b", t):
        return today - timedelta(days=today.weekday()), now
    if re.search(r"\blast month\b", t):
        first = today.replace(day=1)
        prev_end = first - timedelta(seconds=1)
        return prev_end.replace(day=1, hour=0, minute=0, second=0), prev_end
    m = re.search(r"\b(?:in|during|back in) (" + "|".join(MONTHS) + r")\b", t)
    if m:
        month = MONTHS.index(m[1]) + 1
        year = now.year if month <= now.month else now.year - 1
        start = today.replace(year=year, month=month, day=1)
        end = (start.replace(year=year + 1, month=1) if month == 12 else start.replace(month=month + 1))
        return start, min(now, end - timedelta(seconds=1))
    return None


_MONTH = (r"(jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?"
          r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")
_DATE_PATTERNS = (
    # 13 October, 2023 / 13 Oct 2023
    ("day", re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}\.?,?\s+(\d{{4}})\b", re.I), (3, 2, 1)),
    # October 13, 2023 / Oct 13th 2023
    ("day", re.compile(rf"\b{_MONTH}\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})\b", re.I), (3, 1, 2)),
    # October 13 / 13 October (any year)
    ("day", re.compile(rf"\b(?:on\s+)?{_MONTH}\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?!\s*[:.]?\d)", re.I), (None, 1, 2)),
    ("day", re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}\b", re.I), (None, 2, 1)),
    # 2023-10-13
    ("day", re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b"), (1, 2, 3)),
    # October 2023
    ("month", re.compile(rf"\b{_MONTH}\.?,?\s+(\d{{4}})\b", re.I), (2, 1, None)),
    # in October (any year)
    ("month", re.compile(rf"\b(?:in|during|since|last|this)\s+{_MONTH}\b", re.I), (None, 1, None)),
)


def query_dates(text: str) -> list[tuple[int | None, int, int | None]]:
    """The dates a query names, as (year or None, month, day or None): "on October 13, 2023",
    "in July 2023", "in June" (any year)."""
    found: list[tuple[int | None, int, int | None]] = []
    taken: list[tuple[int, int]] = []
    for _level, pattern, (yi, mi, di) in _DATE_PATTERNS:
        for m in pattern.finditer(text):
            if any(s < m.end() and m.start() < e for s, e in taken):
                continue  # already read as a more precise date
            month_text = m.group(mi)
            if month_text.isdigit():
                month = int(month_text)
            else:
                month = next(i for i, name in enumerate(MONTHS, start=1) if name.startswith(month_text.lower()[:3]))
            year = int(m.group(yi)) if yi else None
            day = int(m.group(di)) if di else None
            if not 1 <= month <= 12 or (day is not None and not 1 <= day <= 31):
                continue
            taken.append((m.start(), m.end()))
            found.append((year, month, day))
    return found


def date_match(occurred_at: str, dates: list[tuple[int | None, int, int | None]]) -> float:
    """1.0 when the memory happened on a named date (or in a named month), 0.5 within the week
    after a named day (people tell of things after they happen), else 0."""
    try:
        y, mo, d = int(occurred_at[:4]), int(occurred_at[5:7]), int(occurred_at[8:10])
    except ValueError:
        return 0.0
    best = 0.0
    for year, month, day in dates:
        if day is None:
            if mo == month and (year is None or y == year):
                return 1.0
            continue
        try:
            gap = (date(y, mo, d) - date(year or y, month, day)).days
        except ValueError:
            continue
        if gap == 0:
            return 1.0
        if 0 < gap <= 7:
            best = 0.5
    return best
