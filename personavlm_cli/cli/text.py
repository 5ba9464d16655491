"""Text from a user, a model or an archive, shown safely: never parsed as markup, and no control
character that could act on the terminal (``cli.common`` explains the rules and re-exports these).

The recipe of every console is here too (``console``: its render hook runs every rendered piece through
``clean``), so that ``cli.terminal`` can build its consoles without importing the rest of the CLI.
Nothing here imports the program: only the standard library and Rich.
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console, ConsoleOptions, RenderHook, RenderResult
from rich.segment import Segment
from rich.text import Text

# Characters that would act on a terminal, or reorder or hide text, instead of being shown: C0 controls
# but tab and newline, DEL, C1 controls (0x9b is a one-byte CSI on some terminals), the bidi marks,
# embeddings, overrides and isolates, the line and paragraph separators, and lone surrogates (which
# cannot even be written as UTF-8). Zero-width joiners are kept: emoji need them.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def _visible(match: re.Match) -> str:
    c = ord(match.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def clean(text: Any) -> str:
    """``text`` as a string with every terminal control character shown as an escape (``\\x1b``);
    tab and newline are kept (a Windows ``\\r\\n`` is a newline)."""
    s = text if isinstance(text, str) else str(text)
    if "\r\n" in s:
        s = s.replace("\r\n", "\n")
    return _CONTROL.sub(_visible, s)


def one_line(text: Any) -> str:
    """``clean(text)`` on one line: runs of whitespace, newlines included, become one space."""
    return " ".join(clean("" if text is None else text).split())


def safe(text: Any, style: str | None = None, *, single_line: bool = False) -> Text:
    """Stored or model-made text as a Rich ``Text``: shown literally (``[/b]`` stays ``[/b]``), never
    parsed as markup, with control characters visible. The one way to show such text."""
    s = "" if text is None else text
    return Text(one_line(s) if single_line else clean(s), style=style or "")


def line(*parts: Any) -> Text:
    """One line from literal parts: a ``str`` (or anything else) is shown as it is, a ``(text, style)``
    pair is shown in that style. Nothing is parsed as markup."""
    result = Text()
    for part in parts:
        if isinstance(part, Text):
            result.append_text(part)
        elif isinstance(part, tuple):
            text, style = part
            result.append(clean("" if text is None else text), style=style)
        else:
            result.append(clean("" if part is None else part))
    return result


class _Sanitized:
    """A renderable whose rendered text goes through ``clean`` (styles and cursor controls untouched)."""

    def __init__(self, renderable: Any):
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for segment in console.render(self.renderable, options):
            text = segment.text
            if segment.control or not _CONTROL.search(text):
                yield segment
            else:
                yield Segment(clean(text), segment.style)


class _SanitizeHook(RenderHook):
    def process_renderables(self, renderables: list) -> list:
        from rich.control import Control

        return [r if isinstance(r, Control) else _Sanitized(r) for r in renderables]


def console(**kwargs: Any) -> Console:
    """A Rich console that shows text literally: no highlighting, no emoji codes, control characters made
    visible in whatever it renders."""
    console = Console(highlight=False, emoji=False, **kwargs)  # ":smile:" in a memory stays as typed
    if not console.is_terminal:
        # Into a pipe or a file, a sentence stays one line (Rich would break it at 80 columns): what a
        # script greps or a reader's pager wraps is the text as written. Tables keep their layout.
        console.soft_wrap = True
    console.push_render_hook(_SanitizeHook())
    return console
