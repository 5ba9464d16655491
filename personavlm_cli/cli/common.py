"""Options shared by every command, the consoles, and small output helpers."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from personavlm_cli.cli.env import Env

out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False)

UserOpt = Annotated[Optional[str], typer.Option(
    "--user", "-u", help="Whose memories to use (default: config 'user', else your login name).",
    show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def make_env(user: str | None, **overrides: Any) -> Env:
    return Env(overrides={k: v for k, v in overrides.items() if v is not None}, user_flag=user)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    sys.stdout.flush()


def count(n: int, noun: str) -> str:
    """``1 memory``, ``3 memories``."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"


def short(text: str, width: int = 70) -> str:
    line = " ".join((text or "").split())
    return line if len(line) <= width else line[: width - 1] + "…"


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
