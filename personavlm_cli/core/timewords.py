"""Time expressions in a message ("last Tuesday", "yesterday", "3 days ago", "in March") as a window.

The paper's model emits a time window with each retrieval; a small general model rarely does it
well. When the user's own words name a period, that period is a better window than none, so the
response stage uses it whenever the model gave no window of its own.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

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
