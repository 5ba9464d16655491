"""The command line: a thin layer that parses arguments, calls the core, and prints.

``main`` is the only place that exits the process (given an environment, it returns the status instead):
domain errors become one ``Error: ...`` line on stderr with a non-zero status, Ctrl-C exits 130, and an
unexpected exception prints one line too (the traceback only with PERSONAVLM_DEBUG=1, and never with
local variables). No credential is ever printed: every message goes through ``core.secrets.masked``.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from typer._click import Command, Context, HelpFormatter  # typer vendors Click since 0.26
from typer.core import TyperCommand, TyperGroup

from personavlm_cli.cli.terminal import Terminal


@dataclass(frozen=True)
class Entry:
    """A command (or group) of the root: where it lives, and the first paragraph of its help, which is what
    `personavlm --help` lists (tests/test_startup.py checks it against the command's own help)."""

    module: str
    attribute: str  # a function (a command) or a ``typer.Typer`` (a group)
    summary: str
    setup: Callable[[], None] | None = None  # registers what the group gets from other modules


def _memory_learning() -> None:
    from personavlm_cli.cli import memory, memory_learning

    if not any(c.name == "update" for c in memory.app.registered_commands):
        memory.app.command("update")(memory_learning.update)
        memory.app.command("verify")(memory_learning.verify)


def _eval_persona() -> None:
    from personavlm_cli.cli import eval_persona, evaluate

    if not any(c.name == "persona-mme" for c in evaluate.app.registered_commands):
        evaluate.app.command("persona-mme")(eval_persona.persona_mme)
        evaluate.app.command("personamem")(eval_persona.personamem)


_CLI = "personavlm_cli.cli."
# The root's commands, in the order `--help` lists them. A command's module is imported when that command
# runs or shows its own help; `personavlm --help` imports none of them (start-up stays light).
ENTRIES: dict[str, Entry] = {
    "chat": Entry(_CLI + "chat", "chat",
                  "Chat with your assistant: a REPL, or --once, or one message per line from stdin."),
    "logs": Entry(_CLI + "housekeeping", "logs", "The log of background work (learning, dropped statements, "
                  "errors): ids and counts, never memory text."),
    "doctor": Entry(_CLI + "housekeeping", "doctor", "Versions, llama.cpp build features, GPU offload, model, "
                    "CLIP weights, store location and size."),
    "mcp": Entry(_CLI + "mcp", "mcp", "Serve the user's memory to MCP clients (Model Context Protocol, over stdio)."),
    "bench": Entry(_CLI + "bench", "bench", "Measure start-up, recall, memory work before the first token, "
                   "forgetting, generation, CLIP, replay,\nupdates, and the first token of every message of a "
                   "session with learning on."),
    "memory": Entry(_CLI + "memory", "app", "See, search, explain, correct, forget, export and import memories.",
                    _memory_learning),
    "profile": Entry(_CLI + "profile", "app",
                     "Your profile: core facts, habits and goals, personality; export and import."),
    "users": Entry(_CLI + "housekeeping", "users_app", "The users on this machine."),
    "config": Entry(_CLI + "housekeeping", "config_app", "Show the configuration and where everything lives."),
    "store": Entry(_CLI + "store", "app",
                   "Where the memories live: this machine (embedded) or servers (PostgreSQL + Chroma)."),
    "model": Entry(_CLI + "models", "app", "Download, register, list and choose GGUF chat models."),
    "eval": Entry(_CLI + "evaluate", "app",
                  "Measure recall and answers on public benchmarks (LoCoMo, Persona-MME, PERSONAMEM).",
                  _eval_persona),
}


def load_command(name: str) -> Command:
    """The Click command of the root's ``name``, built from its module (imported now)."""
    entry = ENTRIES[name]
    if entry.setup is not None:
        entry.setup()
    target = getattr(importlib.import_module(entry.module), entry.attribute)
    if isinstance(target, typer.Typer):
        command: Command = typer.main.get_group(target)
    else:
        single = typer.Typer(add_completion=False, context_settings=app.info.context_settings)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class _LazyRoot(TyperGroup):
    """The root group: each command is built when it is run or its own help is shown; the root's help lists
    them from ``ENTRIES`` (their summaries), without importing a command's module."""

    _listing = False

    def list_commands(self, ctx: Context) -> list[str]:
        # A command registered the usual way (``app.command``) is listed too, after ENTRIES' (and imported
        # for every run: tests/test_startup.py says to move it into ENTRIES).
        return [*ENTRIES, *(name for name in self.commands if name not in ENTRIES)]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name not in ENTRIES:
            return self.commands.get(cmd_name)
        if self._listing:
            return TyperCommand(cmd_name, help=ENTRIES[cmd_name].summary)
        if cmd_name not in self.commands:
            self.commands[cmd_name] = load_command(cmd_name)
        return self.commands[cmd_name]

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    cls=_LazyRoot,
    name="personavlm",
    help="A personal assistant that runs on your machine and remembers you (PersonaVLM).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_flags_without_a_type() -> None:
    """Typer 0.29 prints ``<bool>`` after every flag in --help (``--json <bool>``, ``--help <bool>``), as if
    it took a value, and ``<list[str]>`` after a repeatable option. A flag shows no type; a repeatable
    option shows the type of one value (the help says it repeats)."""
    import re

    from typer.core import TyperArgument, TyperOption

    for cls in (TyperOption, TyperArgument):
        original = cls.display_type_rich
        if getattr(original, "_personavlm", False):
            continue

        def display_type_rich(self, ctx, _original=original):
            if getattr(self, "is_flag", False) or getattr(self, "count", False):
                return None
            shown = _original(self, ctx)
            return re.sub(r"^<list\[(.+)\]>$", r"<\1>", shown) if isinstance(shown, str) else shown

        marked: Any = display_type_rich  # a mark on the function, and typer's method replaced on purpose
        marked._personavlm = True
        patched: Any = cls
        patched.display_type_rich = marked


_show_flags_without_a_type()


def _version(value: bool) -> None:
    if value:
        import personavlm_cli

        sys.stdout.write(f"personavlm {personavlm_cli.__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", "-V", help="Print the version and exit.", callback=_version, is_eager=True)] = False) -> None:
    pass




def main(argv: list[str] | None = None, environment: Terminal | None = None) -> int:
    """Run one command: ``argv`` (default: the process's arguments) in ``environment``.

    Without an environment this is the program: it runs in the process's own terminal and exits with
    the status. With one (``cli.terminal.Terminal``, e.g. ``terminal.captured(input)``) the command runs
    in-process in that terminal (its streams, tty-ness, environment variables and clock) and the exit
    status is returned: what the tests do, without a child process."""
    if environment is None:
        sys.exit(_run(argv))
    umask = os.umask(0o077)  # the run sets the private umask; the caller gets its own back
    os.umask(umask)
    try:
        with environment.activate():
            return _run(argv)
    finally:
        os.umask(umask)


_COMMAND = None


def _command():
    """The Click command of ``app``, built once (about 80 ms): every command is registered at import."""
    global _COMMAND
    if _COMMAND is None:
        _COMMAND = typer.main.get_command(app)
    return _COMMAND


def _run(argv: list[str] | None) -> int:
    from personavlm_cli.cli.common import err, line
    from personavlm_cli.cli.env import private_umask
    from personavlm_cli.core.errors import ExitStatus, PersonaError

    private_umask()
    import sqlite3

    from typer._click.exceptions import ClickException  # typer vendors Click since 0.26
    from typer.exceptions import Abort, Exit

    from personavlm_cli.core.secrets import masked

    def error(message: str) -> None:  # messages quote user input and stored text: never markup; no secret
        err.print(line(("Error:", "red"), " ", masked(message)), soft_wrap=True)

    command = _command()
    try:
        result = command.main(args=argv, prog_name="personavlm", standalone_mode=False)
        code = result if isinstance(result, int) else ExitStatus.OK
    except PersonaError as exc:
        error(str(exc))
        code = exc.exit_code
    except (KeyboardInterrupt, Abort):
        sys.stderr.write("\n")
        code = ExitStatus.INTERRUPTED
    except Exit as exc:
        code = exc.exit_code
    except ClickException as exc:
        exc.message = masked(exc.message)  # a usage error may quote an option's value
        exc.show()
        code = exc.exit_code
    except sqlite3.DatabaseError as exc:
        from personavlm_cli.core.errors import disk_full, is_disk_full

        if is_disk_full(exc):  # a full disk is not a damaged store: nothing was lost
            error(str(disk_full("the memory store")))
        else:
            error(f"the memory store is damaged ({exc}); restore it from an export")
        code = ExitStatus.ERROR

    except BrokenPipeError:
        code = ExitStatus.OK
    except Exception as exc:
        from personavlm_cli.core.errors import disk_full, is_disk_full

        if is_disk_full(exc):  # wherever it came from: one line, and nothing was lost
            error(str(disk_full(getattr(exc, "filename", None) or "the disk")))
            code = ExitStatus.ERROR
        elif os.environ.get("PERSONAVLM_DEBUG"):
            import traceback

            # The traceback, never with local variables, and with every credential masked.
            sys.stderr.write(masked("".join(traceback.format_exception(exc))))
            code = ExitStatus.ERROR
        else:
            first = (str(exc).splitlines() or [""])[0][:300]
            error(f"unexpected {type(exc).__name__}: {first} (run with PERSONAVLM_DEBUG=1 for details)")
            code = ExitStatus.ERROR
    sys.stdout.flush()
    return int(code)
