"""The terminal side of `chat`: reading lines (writing answers as they stream is ``cli/answer.py``).

Reading (prompt_toolkit): line editing, a per-user input history (``chat.history``, file 0600),
bracketed paste, a `\"\"\"` line that opens a multi-line block the next `\"\"\"` closes, Tab completion
of slash commands and of image paths after ``/attach``, and a prompt that shows the user and the
staged attachments. Image paths typed or dropped into a message are recognised and attached.

``Spinner`` shows on stderr while the model loads or thinks.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def open_block(text: str) -> bool:
    """True while a `\"\"\"` block is open: Enter then adds a line instead of sending."""
    s = text.lstrip()
    if not s.startswith('"""'):
        return False
    rest = s[3:]
    return not rest.rstrip().endswith('"""')


def strip_block(text: str) -> str:
    """The message inside a `\"\"\"` ... `\"\"\"` block (the delimiters removed)."""
    s = text.strip()
    if not s.startswith('"""'):
        return text
    body = s[3:]
    if body.rstrip().endswith('"""'):
        body = body.rstrip()[:-3]
    return body.strip("\n").rstrip()


def prepare_history_file(path: Path) -> Path:
    """The input history holds what the user typed: owner-only (0600), created before it is used."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
    return path


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXT)


class LineReader:
    """One prompt_toolkit session for the whole chat."""

    def __init__(self, session, user: str, history_file: Path | None = None, styled: bool = True,
                 commands: dict[str, str] | None = None):
        from prompt_toolkit import PromptSession
        from prompt_toolkit.completion import Completer, Completion, PathCompleter
        from prompt_toolkit.document import Document
        from prompt_toolkit.filters import Condition
        from prompt_toolkit.history import FileHistory, InMemoryHistory
        from prompt_toolkit.key_binding import KeyBindings
        from prompt_toolkit.styles import Style

        from personavlm_cli.core.personality import TRAITS

        self.session = session
        self.user = user
        self.styled = styled
        history = InMemoryHistory()
        if history_file is not None:
            history = FileHistory(str(prepare_history_file(history_file)))
        commands = commands or {}
        names = sorted({k.split()[0] for k in commands} | {"/quit"})
        help_of = {k.split()[0]: v for k, v in commands.items()}
        paths = PathCompleter(expanduser=True, file_filter=lambda p: os.path.isdir(p) or _is_image_name(p))

        class SlashCompleter(Completer):
            def get_completions(self, document, complete_event):
                text = document.text_before_cursor
                if text.startswith("/attach "):
                    sub = Document(text[len("/attach "):].lstrip())
                    yield from paths.get_completions(sub, complete_event)
                elif text.startswith("/personality "):
                    word = text.split(" ")[-1]
                    if "=" not in word:
                        for t in TRAITS:
                            if t.startswith(word.lower()):
                                yield Completion(t + "=", start_position=-len(word))
                elif text.startswith("/") and " " not in text:
                    for c in names:
                        if c.startswith(text):
                            yield Completion(c, start_position=-len(text), display_meta=help_of.get(c, ""))

        kb = KeyBindings()
        in_block = Condition(lambda: open_block(self.prompt.default_buffer.text))

        @kb.add("enter", filter=in_block, eager=True)
        def _newline(event):
            event.current_buffer.newline(copy_margin=False)

        @kb.add("c-c", eager=True)
        def _interrupt(event):
            buf = event.current_buffer
            if buf.text:
                buf.reset()  # a first Ctrl-C clears what was typed, like a shell
            else:
                event.app.exit(exception=KeyboardInterrupt, style="class:aborting")

        output = None
        if not _isatty(sys.stdout) and _isatty(sys.stderr):
            from prompt_toolkit.output import create_output

            output = create_output(stdout=sys.stderr)  # answers go to the redirect, the prompt to the screen
        style = Style.from_dict({"user": "bold ansigreen", "attach": "ansicyan", "cont": "ansibrightblack"}
                                if styled else {})
        self.prompt = PromptSession(
            history=history, completer=SlashCompleter(), complete_while_typing=False, key_bindings=kb,
            enable_history_search=True, prompt_continuation=self._continuation, style=style,
            include_default_pygments_style=False, output=output, color_depth=None if styled else _mono())

    def label(self) -> list[tuple[str, str]]:
        staged = [p.name for p in self.session.staged]
        parts = [("class:user", self.user)]
        if staged:
            shown = ", ".join(staged[:2]) + (f" +{len(staged) - 2}" if len(staged) > 2 else "")
            parts.append(("class:attach", f" [{shown}]"))
        parts.append(("", "> "))
        return parts

    def _continuation(self, width, line_number, is_soft_wrap):
        return [("class:cont", "... ".rjust(width))]

    def read(self) -> str:
        """One message or command; multi-line blocks come back as one text."""
        text = self.prompt.prompt(self.label)
        if text.lstrip().startswith('"""'):
            return strip_block(text)
        return text


def _mono():
    from prompt_toolkit.output import ColorDepth

    return ColorDepth.MONOCHROME


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


_TOKEN = re.compile(r"""'([^']+)'|"([^"]+)"|((?:\\.|[^\s'"\\])+)""")


def pick_up_images(line: str) -> tuple[str, list[Path]]:
    """Image files named in a message (typed, or dropped: quoted, backslash-escaped or file://).

    Returns the message with each path replaced by the file's name, and the paths found. Words that
    only look like image names but are not existing files are left alone.
    """
    found: list[Path] = []
    pieces: list[str] = []
    last = 0
    for m in _TOKEN.finditer(line):
        raw = m.group(1) or m.group(2) or re.sub(r"\\(.)", r"\1", m.group(3))
        if raw.startswith("file://"):
            raw = unquote(urlparse(raw).path)
        if not _is_image_name(raw):
            continue
        path = Path(raw).expanduser()
        if not path.is_file():
            continue
        found.append(path)
        pieces.append(line[last:m.start()])
        pieces.append(path.name)
        last = m.end()
    pieces.append(line[last:])
    text = "".join(pieces)
    return (text if found else line), found


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


class Spinner:
    """A one-line spinner on stderr ("⠋ Thinking… 3 s"); cleared without a trace when it stops."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, text: str, enabled: bool = True, stream=None):
        self.text = text
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def start(self) -> Spinner:
        if self.enabled and self._thread is None:
            self._quiet_echo()
            self._t0 = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="spinner", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            elapsed = time.monotonic() - self._t0
            extra = f" {elapsed:.0f} s" if elapsed >= 2 else ""
            try:
                self.stream.write(f"\r\x1b[2K{self.FRAMES[i % len(self.FRAMES)]} {self.text}{extra}")
                self.stream.flush()
            except (OSError, ValueError):
                return
            i += 1
            self._stop.wait(0.1)

    def _quiet_echo(self) -> None:
        """While the spinner runs, what the user types is not echoed onto the spinner line: it waits in
        the terminal's buffer and appears at the next prompt."""
        self._saved_tty = None
        try:
            import termios

            fd = sys.stdin.fileno()
            if not os.isatty(fd):
                return
            attrs = termios.tcgetattr(fd)
            self._saved_tty = (fd, list(attrs))
            attrs[3] &= ~termios.ECHO
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        except (ImportError, OSError, ValueError, AttributeError):
            self._saved_tty = None

    def _restore_echo(self) -> None:
        saved = getattr(self, "_saved_tty", None)
        self._saved_tty = None
        if saved is None:
            return
        try:
            import termios

            termios.tcsetattr(saved[0], termios.TCSANOW, saved[1])
        except (ImportError, OSError, ValueError):
            pass

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._restore_echo()
        try:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> Spinner:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
