"""The terminal a command runs in (``personavlm_cli.cli.terminal``) and the program's real entry point.

In-process (fast): ``main(argv, environment=...)`` runs a command in a given terminal (its streams,
tty-ness, environment variables and clock) and returns the exit status; the process's own terminal is
left as it was. In a child process (slow, a few): ``python -m personavlm_cli`` is what users run, and it
gives the same output as the in-process runner the fast tests rely on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from personavlm_cli.cli import common, main, terminal
from tests.conftest import ROOT, assert_one_line_error, run_cli, run_in_process


def test_main_with_an_environment_returns_the_status_and_writes_only_to_its_streams(capsys):
    term = terminal.captured()
    before = sys.stdin, sys.stdout, sys.stderr
    assert main(["config", "path", "--json"], environment=term) == 0
    assert '"config_file"' in terminal.text(term.stdout) and terminal.text(term.stderr) == ""
    term = terminal.captured()
    assert main(["memory", "show", "sem_0000000000"], environment=term) == 1
    assert terminal.text(term.stdout) == ""
    assert terminal.text(term.stderr).startswith("Error: ")
    term = terminal.captured()
    assert main(["no-such-command"], environment=term) == 2
    assert "No such command" in terminal.text(term.stderr)
    assert (sys.stdin, sys.stdout, sys.stderr) == before, "the process's streams are its own again"
    assert capsys.readouterr() == ("", ""), "nothing reached the process's own streams"
    assert terminal.active() is not term


def test_the_consoles_and_env_are_the_active_terminals_and_only_inside_the_run():
    from personavlm_cli.cli.common import make_env

    process = terminal.active()
    term = terminal.captured()
    with term.activate():
        assert terminal.active() is term and make_env(None).terminal is term
        common.out.print("to the results")
        common.err.print("to the messages")
        common.print_json({"a": 1})
        assert not common.out.is_terminal and not term.stdin_isatty
    assert terminal.active() is process and make_env(None).terminal is process
    assert terminal.text(term.stdout) == 'to the results\n{\n  "a": 1\n}\n'
    assert terminal.text(term.stderr) == "to the messages\n"


def test_stdin_of_the_terminal_is_what_the_command_reads(isolated_home):
    from personavlm_cli.adapters.records import RecordStore
    from personavlm_cli.core.config import Settings
    from personavlm_cli.core.store import new_memory
    from personavlm_cli.core.users import open_user_dir

    records = RecordStore(open_user_dir(Settings.load(), "tester"))
    m = new_memory("semantic", "I like tea", "2026-11-01T10:00:00+00:00")
    records.insert([m])
    records.close()
    # `memory edit ID -` reads the new text from stdin; a forget without --yes refuses a stdin that is no terminal.
    r = run_in_process("memory", "edit", m.id, "-", "--json", input="I like green tea\n")
    assert r.code == 0, r.err
    texts = [x["text"] for x in run_in_process("memory", "list", "--json").json()]
    assert texts == ["I like green tea"]
    assert_one_line_error(run_in_process("memory", "forget", "--all"), "--yes")


def test_the_clock_of_the_terminal_is_the_products_clock_for_the_run_only():
    from personavlm_cli.core.memory import now

    pinned = datetime(2031, 5, 6, 7, 8, 9, 123, tzinfo=UTC)
    term = terminal.captured(clock=lambda: pinned)
    with term.activate():
        assert now() == pinned.replace(microsecond=0) == term.now()
    assert now().year != 2031
    assert terminal.captured().now().year != 2031


def test_an_export_stamps_the_pinned_time(tmp_path, isolated_home):
    import json
    import zipfile

    from personavlm_cli.adapters.records import RecordStore
    from personavlm_cli.core.config import Settings
    from personavlm_cli.core.users import open_user_dir

    RecordStore(open_user_dir(Settings.load(), "tester")).close()
    at = datetime(2030, 1, 2, 3, 4, 5).astimezone()
    archive = tmp_path / "a.pvm"
    r = run_in_process("memory", "export", str(archive), at=at)
    assert r.code == 0, r.err
    with zipfile.ZipFile(archive) as z:
        manifest = json.loads(z.read("manifest.json"))
    assert datetime.fromisoformat(manifest["created_at"]) == at


def test_run_in_process_applies_and_restores_variables_and_the_umask(monkeypatch):
    monkeypatch.delenv("PERSONAVLM_USER")
    monkeypatch.setenv("COLUMNS", "73")
    umask = os.umask(0o022)
    try:
        r = run_in_process("config", "show", "--json", env={"PERSONAVLM_USER": "zoe"})
        row = next(x for x in r.json() if x["key"] == "user")
        assert row["value"] == "zoe" and row["origin"] == "env"
        assert os.umask(0o022) == 0o022, "the caller's umask is back (the run set 0o077)"
    finally:
        os.umask(umask)
    assert "PERSONAVLM_USER" not in os.environ and os.environ["COLUMNS"] == "73"


def test_the_real_entry_point_prints_help_and_gives_the_same_output_as_in_process():
    """`python -m personavlm_cli` is the program; the in-process runner the fast layer uses says the same."""
    for args in (("--help",), ("config", "show", "--json"), ("memory", "list", "--user", "../x"), ("nope",)):
        child, here = run_cli(*args), run_in_process(*args)
        assert (child.code, child.out, child.err) == (here.code, here.out, here.err), args
    helped = run_cli("--help")
    assert helped.code == 0 and "memory" in helped.out and "chat" in helped.out


def test_the_real_entry_point_exits_with_one_line_and_no_traceback():
    r = run_cli("memory", "show", "sem_0000000000")
    assert_one_line_error(r, "unknown user")
    assert r.code == 1
    r = run_cli("memory", "list", env={"PERSONAVLM_MODEL_CONTEXT": "lots"})
    assert_one_line_error(r, "PERSONAVLM_MODEL_CONTEXT")
    proc = subprocess.run([sys.executable, "-m", "personavlm_cli", "--version"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("personavlm ") and proc.stderr == ""


@pytest.mark.parametrize("argv", [["--help"], ["memory", "--help"]])
def test_help_in_process_is_the_programs_help(argv):
    r = run_in_process(*argv)
    assert r.code == 0 and r.out.lstrip().startswith("Usage: personavlm") and r.err == ""
