"""Test isolation: every test gets its own PERSONAVLM_HOME, and nothing may reach a hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("PERSONAVLM_HOME", str(home))
    monkeypatch.setenv("PERSONAVLM_USER", "tester")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ANONYMIZED_TELEMETRY", "False")
    for var in list(os.environ):
        if var.startswith("PERSONAVLM_") and var not in ("PERSONAVLM_HOME", "PERSONAVLM_USER"):
            monkeypatch.delenv(var)
    return home


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def run_cli(*args: str, input: str | None = None, env: dict | None = None, timeout: float = 300) -> Result:
    """Run the real `personavlm` in a child process, as a user would (stdin is not a terminal)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "personavlm_cli", *args], input=input if input is not None else "",
                          capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli():
    return run_cli


def assert_one_line_error(result: Result, *needles: str) -> None:
    """Bad input: a non-zero exit, one clear line on stderr, never a traceback."""
    assert result.code != 0, result
    assert "Traceback" not in result.err, result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {result.err!r}"
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
