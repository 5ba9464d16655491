"""Options shared by every command, the consoles, and small output helpers.

Showing text that came from a user, a model or an archive (memory text, profile values, model
metadata, paths, error messages) goes through these helpers, never straight into a Rich markup
string:

- ``safe(text)``: a Rich ``Text`` of ``text`` exactly as stored, never parsed as markup, with terminal
  control characters made visible (``\\x1b``, ``\\x9b``, ``\\u202e``) instead of acting on the terminal.
- ``line(*parts)``: one line built from literal parts: a ``str`` is shown as it is (through ``safe``),
  a ``(text, style)`` pair is styled; nothing is markup.
- ``one_line(text)``: ``clean`` plus whitespace collapsed, for table cells and one-line listings.
- ``listing_table(*columns)``: the one table layout of listings (``Text`` cells, one line per row).
- ``escape_markup(text)``: only where a markup string cannot be avoided (it must end the string).

As a second line of defence the two consoles (``out``, ``err``: the active terminal's, ``cli.terminal``)
run every rendered piece through ``clean`` as well, so a control character that reaches them by another
road still cannot act on the terminal; and ``print_json`` escapes the characters JSON would otherwise
leave raw (C1 controls, bidi overrides).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.text import Text

from personavlm_cli.cli.env import Env

if TYPE_CHECKING:
    from rich.console import Console
from personavlm_cli.cli.terminal import ConsoleProxy, active

# The safe-text helpers live in cli/text.py (cli/terminal.py builds its consoles with them); named here too.
from personavlm_cli.cli.text import clean as clean
from personavlm_cli.cli.text import line as line
from personavlm_cli.cli.text import one_line as one_line
from personavlm_cli.cli.text import safe as safe


def listing_table(*columns: str, styles: dict[str, str] | None = None, wrap: bool = False):
    """The table of every listing. By default one line per row: the last column is cut with … where the
    terminal ends (never wrapped as well), the others are never cut (`memory show ID` has a whole text).
    With ``wrap`` the last column wraps at word boundaries instead, and nothing is cut.
    Cells may be ``str`` (shown literally, like ``safe``) or ``Text``; nothing is markup."""
    from rich.table import Table

    class Listing(Table):
        def add_row(self, *cells: Any, **kwargs: Any) -> None:
            texts = [c.copy() if isinstance(c, Text) else safe(c) for c in cells]
            for t in texts[:-1]:
                t.no_wrap, t.overflow = True, "ellipsis"
            if texts:
                texts[-1].no_wrap, texts[-1].overflow = (False, "fold") if wrap else (True, "ellipsis")
            super().add_row(*texts, **kwargs)

    table = Listing(box=None, pad_edge=False)
    styles = {"id": "cyan", "when": "dim", **(styles or {})}
    for col in columns:
        last = col == columns[-1]
        # Only the last column may give up width when the terminal is narrow.
        table.add_column(col, style=styles.get(col), no_wrap=not last, min_width=12 if last else None)
    return table


# The consoles of the active terminal (``cli.terminal``): the process's own, or the one an in-process run
# (``main(argv, environment=...)``, the tests) activated. Import them by name as before.
# Typed as the consoles they stand for: every attribute is the active console's.
out = cast("Console", ConsoleProxy("out"))
err = cast("Console", ConsoleProxy("err"))

UserOpt = Annotated[str | None, typer.Option(
    "--user", "-u", help="Whose memories to use (default: config 'user', else your login name).",
    show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def make_env(user: str | None, **overrides: Any) -> Env:
    return Env(overrides={k: v for k, v in overrides.items() if v is not None}, user_flag=user)


# JSON leaves C1 controls, bidi overrides and separators raw when ensure_ascii is off: escape them
# (\\u009b is the same string to a JSON reader, and inert on a terminal).
_JSON_RAW = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def json_text(data: Any) -> str:
    """``data`` as indented JSON that is safe to print on a terminal (and the same data to a reader)."""
    text = json.dumps(data, ensure_ascii=False, indent=2)
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def print_json(data: Any) -> None:
    text = json_text(data) + "\n"
    stdout = active().stdout
    try:
        stdout.write(text)
    except UnicodeEncodeError:  # lone surrogates, or a terminal that is not UTF-8
        stdout.write(json.dumps(data, ensure_ascii=True, indent=2) + "\n")
    stdout.flush()


def print_rows(rows) -> None:
    """Rows for a pipe (stdout is not a terminal): one per line, cells separated by tabs, each cell whole
    (never cut at a width) and on one line: its whitespace, tabs and newlines included, becomes single
    spaces, and control characters are shown as escapes, as everywhere (``one_line``)."""
    stdout = active().stdout
    for row in rows:
        stdout.write("\t".join(one_line(cell) for cell in row) + "\n")
    stdout.flush()


def count(n: int, noun: str) -> str:
    """``1 memory``, ``3 memories``."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"


# What Rich's markup parser treats specially: a tag-like ``[...]`` and the backslashes before a ``[``.
_MARKUP_BRACKET = re.compile(r"(\\*)(\[(?:[a-z#/@][^[]*?\])?)")


def escape_markup(text: Any) -> str:
    """``text`` (control characters made visible) escaped so that Rich's markup parser gives it back
    exactly, when it ENDS a markup string or is followed by plain text: ``f"[dim]{m.id}[/dim] {escape_markup(x)}"``.
    A tag-like ``[b]`` gets a backslash (and the backslashes before it are doubled), a lone ``[`` after
    backslashes gets one more (Rich turns ``\\[`` into ``[``). Unlike rich.markup.escape, no backslash is
    added at the very end. Prefer ``line(...)`` and ``safe(...)``: they need no escaping at all."""

    def sub(m: re.Match) -> str:
        slashes, bracket = m.group(1), m.group(2)
        if len(bracket) > 1:
            return f"{slashes}{slashes}\\{bracket}"
        return f"{slashes}\\{bracket}" if slashes else bracket

    return _MARKUP_BRACKET.sub(sub, clean(text))


def short(text: Any, width: int = 70) -> str:
    """``text`` on one line (control characters visible), cut to ``width`` with …. Plain text: give it to
    ``line``/``safe``, or through ``escape_markup`` into a markup string."""
    s = one_line(text)
    return s if len(s) <= width else s[: width - 1] + "…"


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def log_file(env) -> Path:
    """The user's log of background work (updates, dropped statements): ids and counts, never text."""
    return Path(env.user_dir()) / "personavlm.log"


class _MaskingFormatter(logging.Formatter):
    """Log lines (and the tracebacks they carry) with every credential masked (``core.secrets``)."""

    def format(self, record: logging.LogRecord) -> str:
        from personavlm_cli.core.secrets import masked

        return masked(super().format(record))


def log_to_file(env) -> None:
    """Send personavlm's log (warnings from the update thread and the like) to the user's log file,
    not onto the terminal: `personavlm logs` shows it, `/stats` and `doctor` summarise it."""
    import logging
    from logging.handlers import RotatingFileHandler

    logger = logging.getLogger("personavlm")
    path = log_file(env)
    if any(getattr(h, "baseFilename", None) == str(path) for h in logger.handlers):
        return
    handler = RotatingFileHandler(path, maxBytes=1_000_000, backupCount=1, encoding="utf-8", delay=True)
    handler.setFormatter(_MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
