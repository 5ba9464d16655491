"""The command line: a thin layer that parses arguments, calls the core, and prints.

``main`` is the only place that exits the process: domain errors become one ``Error: ...`` line on
stderr with a non-zero status, Ctrl-C exits 130, and an unexpected exception prints one line too
(the traceback only with PERSONAVLM_DEBUG=1, and never with local variables).
"""

from __future__ import annotations

import os
import sys

import typer

from personavlm_cli.cli import chat as chat_cmd
from personavlm_cli.cli import bench as bench_cmd
from personavlm_cli.cli import eval_persona, evaluate, housekeeping, memory, models, profile

app = typer.Typer(
    name="personavlm",
    help="A personal assistant that runs on your machine and remembers you (PersonaVLM).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("chat")(chat_cmd.chat)
app.add_typer(memory.app, name="memory")
app.add_typer(profile.app, name="profile")
app.command("doctor")(housekeeping.doctor)
app.add_typer(housekeeping.users_app, name="users")
app.add_typer(housekeeping.config_app, name="config")


app.add_typer(models.app, name="model")
evaluate.app.command("persona-mme")(eval_persona.persona_mme)
evaluate.app.command("personamem")(eval_persona.personamem)
app.add_typer(evaluate.app, name="eval")
app.command("bench")(bench_cmd.bench)


def main(argv: list[str] | None = None) -> None:
    from rich.markup import escape

    from personavlm_cli.cli.common import err
    from personavlm_cli.cli.env import private_umask
    from personavlm_cli.core.errors import PersonaError

    private_umask()
    import sqlite3

    from typer._click.exceptions import ClickException  # typer vendors Click since 0.26
    from typer.exceptions import Abort, Exit

    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="personavlm", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except PersonaError as exc:
        err.print(f"[red]Error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        code = exc.exit_code
    except (KeyboardInterrupt, Abort):
        sys.stderr.write("\n")
        code = 130
    except Exit as exc:
        code = exc.exit_code
    except ClickException as exc:
        exc.show()
        code = exc.exit_code
    except sqlite3.DatabaseError as exc:
        err.print(f"[red]Error:[/red] the memory store is damaged ({escape(str(exc))}); restore it from an export",
                  highlight=False, soft_wrap=True)
        code = 1
    except BrokenPipeError:
        code = 0
    except Exception as exc:
        if os.environ.get("PERSONAVLM_DEBUG"):
            raise
        first = (str(exc).splitlines() or [""])[0][:300]
        err.print(f"[red]Error:[/red] unexpected {type(exc).__name__}: {escape(first)} "
                  "(run with PERSONAVLM_DEBUG=1 for details)", highlight=False, soft_wrap=True)
        code = 1
    sys.stdout.flush()
    sys.exit(code)
