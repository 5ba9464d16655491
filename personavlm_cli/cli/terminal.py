"""The terminal a command runs in: its three streams, whether each is a terminal, the environment
variables, the clock, and the two consoles built on them (httpie's ``Environment`` is the model).

``Terminal()`` is the process's own terminal: its streams are whatever ``sys.stdin``/``sys.stdout``/
``sys.stderr`` are when used, and its consoles are the ones the program always had. A caller that runs
a command in-process (the tests) builds one with its own streams, and ``main(argv, environment=...)``
activates it for the run: ``active()`` answers it (a ``contextvars.ContextVar``, so ``cli.common.out``
and ``err`` print to its consoles), ``sys.stdin``/``stdout``/``stderr`` are its streams for the run
(commands and Typer's prompts still read and write those), and its clock, when it has one, is
``core.memory.now()`` for the run. Nothing here imports the rest of the program.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from datetime import datetime
from typing import IO, Any


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class Terminal:
    """Streams, tty-ness, environment variables and clock of one run of the program.

    A stream left out (``None``) is the process's (``sys.stdout`` at the time of use); a tty flag left
    out is asked of the stream. ``environ`` defaults to ``os.environ``; ``clock`` (a function returning an
    aware ``datetime``) defaults to the product's clock, ``core.memory.now``."""

    def __init__(self, *, stdin: IO[str] | None = None, stdout: IO[str] | None = None,
                 stderr: IO[str] | None = None, stdin_isatty: bool | None = None,
                 stdout_isatty: bool | None = None, stderr_isatty: bool | None = None,
                 environ: Mapping[str, str] | None = None, clock: Callable[[], datetime] | None = None):
        self._stdin, self._stdout, self._stderr = stdin, stdout, stderr
        self._tty = {"stdin": stdin_isatty, "stdout": stdout_isatty, "stderr": stderr_isatty}
        self._environ = environ
        self.clock = clock
        self._out = self._err = None

    # -- streams -------------------------------------------------------------------------------

    @property
    def stdin(self) -> IO[str]:
        return self._stdin if self._stdin is not None else sys.stdin

    @property
    def stdout(self) -> IO[str]:
        return self._stdout if self._stdout is not None else sys.stdout

    @property
    def stderr(self) -> IO[str]:
        return self._stderr if self._stderr is not None else sys.stderr

    @property
    def owns_streams(self) -> bool:
        return any(s is not None for s in (self._stdin, self._stdout, self._stderr))

    def _is_tty(self, name: str) -> bool:
        flag = self._tty[name]
        return _isatty(getattr(self, name)) if flag is None else flag

    @property
    def stdin_isatty(self) -> bool:
        return self._is_tty("stdin")

    @property
    def stdout_isatty(self) -> bool:
        return self._is_tty("stdout")

    @property
    def stderr_isatty(self) -> bool:
        return self._is_tty("stderr")

    @property
    def environ(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    def now(self) -> datetime:
        if self.clock is not None:
            return self.clock().replace(microsecond=0)
        from personavlm_cli.core.memory import now

        return now()

    # -- the consoles --------------------------------------------------------------------------

    @property
    def out(self):
        """The console of results (stdout): long lines are not wrapped."""
        if self._out is None:
            self._out = self._console(self._stdout, stderr=False, isatty=self._tty["stdout"], soft_wrap=False)
        return self._out

    @property
    def err(self):
        """The console of messages, progress and errors (stderr)."""
        if self._err is None:
            self._err = self._console(self._stderr, stderr=True, isatty=self._tty["stderr"])
        return self._err

    def _console(self, file: IO[str] | None, *, stderr: bool, isatty: bool | None, **kwargs: Any):
        from personavlm_cli.cli.text import console  # the one recipe of a console (sanitising hook)

        if file is not None:
            kwargs["file"] = file  # else Rich follows sys.stdout / sys.stderr, as it always did
        if isatty:
            kwargs["force_terminal"] = True  # else Rich asks the stream (and FORCE_COLOR), as it always did
        if self._environ is not None:
            kwargs["_environ"] = self._environ  # COLUMNS, NO_COLOR, TERM... of this run
        return console(stderr=stderr, **kwargs)

    # -- a run ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def activate(self) -> Iterator[Terminal]:
        """Make this the active terminal for the block: the consoles, ``sys``'s streams (when this
        terminal has its own) and the product's clock (when it has one)."""
        token = _ACTIVE.set(self)
        saved = sys.stdin, sys.stdout, sys.stderr
        if self._stdin is not None:
            sys.stdin = self._stdin
        if self._stdout is not None:
            sys.stdout = self._stdout
        if self._stderr is not None:
            sys.stderr = self._stderr
        clock_token = None
        if self.clock is not None:
            from personavlm_cli.core import memory

            clock = getattr(memory, "CLOCK", None)
            if clock is not None:
                clock_token = clock.set(self.clock)
        try:
            yield self
        finally:
            for stream in (self._stdout, self._stderr):
                with contextlib.suppress(Exception):
                    if stream is not None:
                        stream.flush()
            sys.stdin, sys.stdout, sys.stderr = saved
            if clock_token is not None:
                from personavlm_cli.core import memory

                memory.CLOCK.reset(clock_token)
            _ACTIVE.reset(token)


def captured(input: str | bytes = "", *, environ: Mapping[str, str] | None = None,
             clock: Callable[[], datetime] | None = None) -> Terminal:
    """A terminal that is none: stdin reads ``input``, stdout and stderr are kept in memory (UTF-8, as
    through a pipe: stdout strict, stderr with backslash escapes), nothing is a tty. Read what was
    written with ``text(terminal.stdout)``."""
    data = input.encode("utf-8", "surrogateescape") if isinstance(input, str) else input
    stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="strict")
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)
    stderr = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace", write_through=True)
    return Terminal(stdin=stdin, stdout=stdout, stderr=stderr, stdin_isatty=False, stdout_isatty=False,
                    stderr_isatty=False, environ=environ, clock=clock)


def text(stream: IO[str]) -> str:
    """What was written to a ``captured`` stream, decoded as a pipe reader would."""
    stream.flush()
    raw = stream.buffer.getvalue()  # type: ignore[attr-defined]
    return raw.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")  # as text=True reads a pipe


_PROCESS = Terminal()
_ACTIVE: ContextVar[Terminal] = ContextVar("personavlm_terminal", default=_PROCESS)


def active() -> Terminal:
    """The terminal of the command running in this context (the process's own, outside a run)."""
    return _ACTIVE.get()


class ConsoleProxy:
    """Stands for the active terminal's console of one kind (``out`` or ``err``): every attribute is
    the active console's, so ``from personavlm_cli.cli.common import out`` keeps working everywhere."""

    __slots__ = ("_kind",)

    def __init__(self, kind: str):
        object.__setattr__(self, "_kind", kind)

    def _target(self):
        return getattr(_ACTIVE.get(), self._kind)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target(), name, value)

    def __enter__(self):
        return self._target().__enter__()

    def __exit__(self, *exc: Any):
        return self._target().__exit__(*exc)

    def __repr__(self) -> str:
        return f"<{self._kind} console of the active terminal: {self._target()!r}>"
