"""Writing an answer as it streams (``AnswerWriter``): the chat's output side, as ``cli/repl.py`` is its
input side.

``AnswerWriter`` streams the answer's text as it comes and never redraws more than the line the cursor
is on, so nothing is duplicated or lost: in a terminal a finished line that fits on one row is restyled
once (light Markdown: headings, bullets, **bold**, `code`, code blocks); every other line stays exactly
as streamed.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(.*)$")
_QUOTE = re.compile(r"^>\s?(.*)$")
_RULE = re.compile(r"^\s*(?:-\s*){3,}$|^\s*(?:\*\s*){3,}$|^\s*(?:_\s*){3,}$")
_INLINE = re.compile(r"(`[^`]+`)|(\*\*[^*]+\*\*|__[^_]+__)|(\*[^*\s][^*]*\*)")
_SAFE_CHARS = re.compile(r"^[\x20-\x7e\u00a0-\u024f\u2010-\u2027\u2030-\u205e]*$")  # one cell each


class AnswerWriter:
    """Streams an answer to ``stream``; in a terminal, wraps at word boundaries and restyles each
    finished line once.

    Every piece is shown as soon as it comes. A word that would cross the right edge is moved to the
    next row: the part of it already shown (always on the cursor's row) is erased and written again
    there. A finished line is restyled only when it fits on one row and holds only characters whose
    width is certain, by going back to its start (``\\r``) and clearing that row: nothing is ever
    redrawn on another row, so nothing can be duplicated or lost. Plain mode writes the text exactly
    as it comes.
    """

    _TOKENS = re.compile(r"\n|[ \t]+|[^\s]+|\s")

    def __init__(self, stream=None, styled: bool = False, width: int | None = None):
        self.stream = stream or sys.stdout
        self.styled = styled
        self._width = width
        self.line = ""        # the logical line being written (up to the next newline)
        self.col = 0          # the cursor's column on the screen
        self.word = ""        # the word being written, and where it started
        self.word_col = 0
        self.word_shown = 0   # how many of its characters are on the screen
        self.wrapped = False  # the current line takes more than one row
        self.in_code = False
        self.started = False
        self.ended = False
        self.text = ""
        self._console: Any = None  # a rich Console, made on first use

    def width(self) -> int:
        if self._width:
            return self._width
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 80  # a pty nobody sized says 0
        except (OSError, ValueError, AttributeError):
            return 80

    def write(self, piece: str) -> None:
        from personavlm_cli.cli.common import clean

        self.started = True
        # Model-made text is data: terminal control characters in it are made visible, never obeyed.
        piece = "\n".join(clean(part) for part in piece.split("\n"))
        self.text += piece
        if not self.styled:
            self.stream.write(piece)
            self.stream.flush()
            return
        width = self.width()
        for tok in self._TOKENS.findall(piece.replace("\r", "")):
            if tok == "\n":
                self._end_word(width)
                self._finish_line(width)
                self.stream.write("\n")
                self.col, self.wrapped = 0, False
            elif tok.isspace():
                self._end_word(width)
                self.line += tok
                if self.col + len(tok) >= width:  # spaces at the edge: the next word starts a row
                    self.col = width
                else:
                    self.stream.write(tok)
                    self.col += len(tok)
            else:
                self._word_piece(tok, width)
        self.stream.flush()

    def _word_piece(self, frag: str, width: int) -> None:
        from rich.cells import cell_len

        if not self.word:
            self.word_col, self.word_shown = self.col, 0
        self.word += frag
        w = cell_len(self.word)
        if self.word_col + w <= width - 1:
            pass  # fits on this row, with the last column to spare
        elif self.word_col > 0 and w <= width - 1:  # would cross the edge: start the word on a new row
            shown = cell_len(self.word[:self.word_shown])
            if shown:
                self.stream.write(f"\x1b[{shown}D\x1b[K")
            self.stream.write("\n")
            self.word_col, self.word_shown, self.wrapped = 0, 0, True
        else:
            self.wrapped = True  # longer than a row: the terminal wraps it
        self.stream.write(self.word[self.word_shown:])
        self.word_shown = len(self.word)

    def _end_word(self, width: int) -> None:
        if not self.word:
            return
        from rich.cells import cell_len

        self.line += self.word
        self.col = self.word_col + cell_len(self.word)
        if self.col >= width:
            self.col = self.col % width
        self.word = ""

    def end(self, interrupted: bool = False) -> None:
        """The answer is over: restyle the last line (unless it was cut off) and end it."""
        if self.styled:
            width = self.width()
            self._end_word(width)
            if self.line and not interrupted:
                self._finish_line(width)
        self.line, self.col, self.wrapped, self.in_code = "", 0, False, False
        self.ended = True
        self.stream.write("\n")
        self.stream.flush()

    def _finish_line(self, width: int) -> None:
        line, self.line = self.line, ""
        styled = self.render(line)
        if styled is None or self.wrapped:
            return
        from rich.cells import cell_len

        if "\t" in line or not _SAFE_CHARS.match(line) or cell_len(line) + 1 >= width:
            return
        self.stream.write("\r\x1b[2K" + styled)

    def render(self, line: str) -> str | None:
        """The line with light Markdown styling as ANSI text, or None when it needs none."""
        from rich.text import Text

        stripped = line.strip()
        if stripped.startswith("```"):
            self.in_code = not self.in_code
            return self._ansi(Text(line, style="dim"))
        if self.in_code:
            return self._ansi(Text(line, style="cyan")) if line else None
        if _RULE.match(line) and len(stripped) >= 3:
            return self._ansi(Text("─" * min(len(line), 40), style="dim"))
        m = _HEADING.match(line)
        if m:
            return self._ansi(self._inline(m.group(2), "bold underline" if len(m.group(1)) == 1 else "bold"))
        m = _BULLET.match(line)
        if m:
            text = Text(m.group(1) + "• ")
            text.append_text(self._inline(m.group(2)))
            return self._ansi(text)
        m = _QUOTE.match(line)
        if m:
            text = Text("▌ ", style="dim")
            text.append_text(self._inline(m.group(1), "italic"))
            return self._ansi(text)
        if not _INLINE.search(line):
            return None
        return self._ansi(self._inline(line))

    @staticmethod
    def _inline(text: str, base: str = ""):
        from rich.text import Text

        out = Text(style=base)
        last = 0
        for m in _INLINE.finditer(text):
            out.append(text[last:m.start()])
            token = m.group(0)
            if m.group(1):
                out.append(token[1:-1], style="cyan")
            elif m.group(2):
                out.append(token[2:-2], style="bold")
            else:
                out.append(token[1:-1], style="italic")
            last = m.end()
        out.append(text[last:])
        return out

    def _ansi(self, text) -> str:
        import io

        from rich.console import Console

        if self._console is None:
            self._console = Console(file=io.StringIO(), force_terminal=True, color_system="standard",
                                    width=10_000, highlight=False, emoji=False, markup=False)
        buf = self._console.file
        buf.seek(0)
        buf.truncate()
        self._console.print(text, end="", soft_wrap=True)
        return buf.getvalue()
