"""Privacy: nothing leaves the machine, the user's files are the user's alone, errors show no data.

* A full chat with an image, the update stage, a search and an export run in this process while an
  audit hook watches every socket, URL and subprocess event (and refuses it): there are none, not
  even to loopback, with the test suite's own ANONYMIZED_TELEMETRY and HF_HUB_OFFLINE switches
  removed, so that the product's own settings are what is tested.
* The same flow as a real process under strace: no AF_INET/AF_INET6 socket is even created, which
  also covers native code the audit hook cannot see (llama.cpp, Chroma's Rust core, onnxruntime).
* Every directory of a user is 0700 and every file 0600, the export archive included.
* An unexpected error prints one line, never a traceback or local variables.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_in_process
from tests.imagegen import write_png

NETWORK_EVENTS = ("socket.", "urllib.", "http.client.", "ftplib.", "smtplib.", "poplib.", "imaplib.", "nntplib.",
                  "telnetlib.", "webbrowser.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                  "os.fork", "pty.spawn")

_recording: list | None = None


def _hook(event: str, args) -> None:
    if _recording is None or not event.startswith(NETWORK_EVENTS):
        return
    _recording.append((event, repr(args)[:200]))
    # Refuse it too: a leak must fail the test, not reach the network.
    raise PermissionError(f"blocked by the privacy test: {event}")


sys.addaudithook(_hook)  # hooks cannot be removed; it records only while a test has it on


def user_dir(home: Path, user: str = "tester") -> Path:
    return home / "data" / "users" / user


def assert_private(home: Path, user: str = "tester") -> list[str]:
    """Every directory 0700 and every file 0600 under the user's directory (and its parents)."""
    root = user_dir(home, user)
    bad = []
    for d in (home / "data", home / "data" / "users"):
        if stat.S_IMODE(d.stat().st_mode) != 0o700:
            bad.append(f"{d} {oct(stat.S_IMODE(d.stat().st_mode))}")
    seen = 0
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        seen += 1
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            if mode != 0o700:
                bad.append(f"{path} {oct(mode)}")
        elif stat.S_ISREG(st.st_mode):
            if mode != 0o600:
                bad.append(f"{path} {oct(mode)}")
        else:
            bad.append(f"{path} is not a plain file or directory")
    assert seen > 5, "the walk saw the store"
    assert bad == [], "not owner-only:\n" + "\n".join(bad)
    return bad


@pytest.mark.slow  # the chat runs in this process with the real model
def test_a_full_chat_with_an_image_updates_search_and_export_make_no_network_call(
        tmp_path, isolated_home, monkeypatch, capsys):
    global _recording
    from personavlm_cli.cli import main

    # The product must switch these off itself.
    monkeypatch.delenv("ANONYMIZED_TELEMETRY", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    pic = write_png(tmp_path / "garden.png", seed=4)
    archive = tmp_path / "me.pvm"

    def run(*argv: str, stdin: str = "") -> int:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        try:
            main(list(argv))
        except SystemExit as exc:
            return exc.code or 0
        return 0

    umask = os.umask(0o022)
    os.umask(umask)
    _recording = []
    try:
        # A scripted chat: one message with an image, then the end of the session; `memory update`
        # runs the update stage's per-turn and per-session jobs that quitting left pending.
        code = run("chat", "--at", "2026-11-01 10:00", stdin=f"/attach {pic}\nThis is my garden, I grow tulips\n")
        chat_out = capsys.readouterr()
        assert code == 0, chat_out.err
        assert run("memory", "update") == 0  # what quitting left pending: the model's part of learning
        chat_out = capsys.readouterr()
        assert run("memory", "search", "garden tulips", "--json") == 0
        found = capsys.readouterr().out
        assert run("memory", "export", str(archive)) == 0
        capsys.readouterr()
        events = list(_recording)
        # The hook does see the network: a lookup of localhost is recorded and refused.
        with pytest.raises(PermissionError):
            socket.getaddrinfo("localhost", 80)
        assert _recording[len(events):] and _recording[len(events)][0] == "socket.getaddrinfo"
    finally:
        _recording = None
        os.umask(umask)  # main() set the process umask to 077
    assert events == [], f"network or subprocess activity: {events}"

    import json

    kinds = {m["type"] for m in json.loads(found)} if found.strip() else set()
    assert kinds, "the search found the chat"
    listing = run_in_process("memory", "list", "--all", "--json").json()
    assert {"turn", "image"} <= {m["type"] for m in listing}
    assert not run_in_process("memory", "list", "--pending", "--json").json(), "the update stage ran"
    assert_private(isolated_home)
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600, "the export is private too"


def _strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(["strace", "-f", "-e", "trace=socket", "-o", os.devnull, "true"], capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def traced_run(tmp_path_factory):
    """A chat with an image, a search and an export as real processes: under strace (every socket(2)
    of every thread, whichever language made it), with an umask of 000 (so owner-only modes are the
    program's own doing) and a HOME of its own (so any file written outside PERSONAVLM_HOME shows)."""
    root = tmp_path_factory.mktemp("traced")
    home, fake_home = root / "pvhome", root / "login-home"
    fake_home.mkdir()
    pic = write_png(root / "bike.png", seed=6)
    env = {k: v for k, v in os.environ.items()
           if k not in ("ANONYMIZED_TELEMETRY", "HF_HUB_OFFLINE") and not k.startswith("PERSONAVLM_")}
    env.update(PYTHONUNBUFFERED="1", COLUMNS="200", PERSONAVLM_HOME=str(home), PERSONAVLM_USER="tester",
               HOME=str(fake_home), XDG_CACHE_HOME=str(fake_home / ".cache"))
    traced = _strace_works()
    traces = []
    for i, args in enumerate([
        ("chat", "--at", "2026-11-02 09:00", "--once", "Here is my new bike", "-a", str(pic)),
        ("memory", "search", "bike"),
        ("memory", "export", str(root / "out.pvm")),
    ]):
        log = root / f"strace-{i}.txt"
        command = [sys.executable, "-m", "personavlm_cli", *args]
        if traced:
            command = ["strace", "-f", "-qq", "-s", "100", "-e", "trace=socket,connect,bind,sendto,sendmsg",
                       "-o", str(log), *command]
        proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
                              preexec_fn=lambda: os.umask(0))
        assert proc.returncode == 0, proc.stderr[-2000:]
        if traced:
            traces.append(log.read_text())
    return {"home": home, "fake_home": fake_home, "archive": root / "out.pvm", "traces": traces if traced else None}


def test_user_files_are_owner_only_under_any_umask(traced_run):
    home = traced_run["home"]
    assert list(user_dir(home).glob("images/*/*.png")), "the image was stored"
    assert_private(home)
    assert stat.S_IMODE(traced_run["archive"].stat().st_mode) == 0o600, "the export is private too"


def test_no_internet_socket_even_from_native_code_and_nothing_written_outside_the_home(traced_run):
    outside = sorted(str(p.relative_to(traced_run["fake_home"])) for p in traced_run["fake_home"].rglob("*"))
    if traced_run["traces"] is None:
        assert outside == [], f"files written outside PERSONAVLM_HOME: {outside}"
        pytest.skip("strace is not available here: sockets not traced")
    calls = [line for t in traced_run["traces"] for line in t.splitlines() if "AF_INET" in line]
    assert calls == [], "internet sockets:\n" + "\n".join(calls[:12])
    assert outside == [], f"files written outside PERSONAVLM_HOME: {outside}"


_CRASH = textwrap.dedent("""
    import sys
    from personavlm_cli.cli import memory

    def _open_records(env):
        secret_local = "hunter2-local-value"  # a local variable a traceback with locals would print
        raise RuntimeError("boom in the record file")

    memory._open_records = _open_records
    from personavlm_cli.cli import main
    main(["memory", "list"])
""")


def test_an_unexpected_error_prints_one_line_without_traceback_or_locals(isolated_home):
    env = {k: v for k, v in os.environ.items() if k != "PERSONAVLM_DEBUG"}
    proc = subprocess.run([sys.executable, "-c", _CRASH], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert lines == ["Error: unexpected RuntimeError: boom in the record file (run with PERSONAVLM_DEBUG=1 for "
                     "details)"], proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout


def test_debug_tracebacks_never_show_local_variables(isolated_home):
    env = {**os.environ, "PERSONAVLM_DEBUG": "1"}
    proc = subprocess.run([sys.executable, "-c", _CRASH], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)
    assert proc.returncode != 0
    assert "RuntimeError: boom in the record file" in proc.stderr, proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout


def test_error_messages_carry_no_memory_text(cli, run):
    """A refused operation names ids and paths, never what a memory says."""
    secret = "Zanzibar-password-9911"
    r = cli("chat", "--no-update", input=f"/remember my bank code is {secret}\n")
    assert r.code == 0, r.err
    for args in (("memory", "show", "sem_doesnotexist"), ("memory", "forget", "--query", "bank code"),
                 ("memory", "list", "--type", "nonsense"), ("memory", "import", "/nonexistent.pvm")):
        res = run(*args)
        assert res.code != 0
        assert secret not in res.err and secret not in res.out, args
