"""The house rules the code keeps: names for exit statuses and memory types, and nothing left open."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

from personavlm_cli.core.errors import ExitStatus, PersonaError
from personavlm_cli.core.memory import TYPES, Memory, MemoryType
from tests.conftest import ROOT
from tests.kit import memory, real_store


def test_exit_statuses_are_the_numbers_a_shell_sees():
    assert [int(s) for s in ExitStatus] == [0, 1, 2, 130]
    assert PersonaError.exit_code is ExitStatus.ERROR


def _bare_exits(source: str) -> list[int]:
    """Lines where a command exits with a bare number: ``typer.Exit(1)``, ``sys.exit(130)``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("Exit", "exit") and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, int):
            found.append(node.lineno)
    return found


def test_no_command_exits_with_a_bare_number():
    bare = {str(p.relative_to(ROOT)): lines for p in sorted((ROOT / "personavlm_cli" / "cli").glob("*.py"))
            if (lines := _bare_exits(p.read_text(encoding="utf-8")))}
    assert not bare, f"exit with ExitStatus, not a number: {bare}"
    assert _bare_exits("raise typer.Exit(130)\nsys.exit(1)\nraise typer.Exit(ExitStatus.ERROR)\n") == [1, 2]


def test_memory_types_are_the_stored_strings():
    assert tuple(MemoryType) == TYPES and [str(t) for t in MemoryType] == [
        "core", "semantic", "episodic", "procedural", "image", "turn"]
    m = Memory(id="core_1", type=MemoryType.CORE, text="x", occurred_at="2026-01-01T00:00:00+00:00",
               created_at="2026-01-01T00:00:00+00:00")
    assert type(m.type) is str and m.type == "core" == MemoryType.CORE  # stored, exported as the plain string
    assert memory(type=MemoryType.TURN).id.startswith("turn_")


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir() or sys.platform != "linux",
                    reason="counts the process's open descriptors in /proc (Linux)")
def test_a_store_closed_leaves_no_database_or_index_file_open(tmp_path):
    """Opening, writing to (Chroma's database and index files) and closing a store many times in one
    process (the MCP server opens one per call; the test suite thousands) leaves the descriptors as they
    were: ``MemoryStore.close`` closes the vector index too."""
    def cycle(i: int) -> None:
        store = real_store(tmp_path / f"u{i}")
        store.add([memory(f"My cat number {i} is called Miso.")])
        assert store.vectors.call("count", "memories") == 1
        store.close()

    cycle(0)  # the first store loads what every store shares (the encoder, Chroma's modules)
    before = _open_descriptors()
    for i in range(1, 6):
        cycle(i)
    leaked = _open_descriptors() - before
    assert leaked <= 2, f"{leaked} descriptors left open by 5 stores opened and closed"
