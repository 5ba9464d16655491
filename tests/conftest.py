"""Test isolation: every test gets its own PERSONAVLM_HOME, and nothing may reach a hub.

Two layers (``pytest -m "not slow"`` is the fast one):

- ``run`` (and ``run_in_process``) runs a command in this process, in a captured terminal
  (``personavlm_cli.cli.terminal``): no child process, no model. Same ``Result`` as ``run_cli``.
- ``cli`` (and ``run_cli``) runs the real ``python -m personavlm_cli`` in a child process, as a user would.

A test is ``slow`` when it is marked so, uses a slow fixture (``tests.kit.slow_fixture``, the ``cli`` fixture,
the servers'), or its code (or a helper of its module that it calls) uses what starts a child process or loads
the real model (``run_cli``, ``subprocess``, ``pexpect``, llama.cpp): ``tests/kit/layers.py``. The others are
``fast``. In the fast layer, starting the program or a server in a child process, or loading llama.cpp, fails
the test with a line that says it should be marked slow.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from tests.kit import real_store
from tests.kit.layers import is_slow

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


def run_in_process(*args: str, input: str | None = None, env: dict | None = None, timeout: float | None = None,
                   at: datetime | None = None) -> Result:
    """Run `personavlm` in this process, as ``run_cli`` does in a child: stdin reads ``input`` and is not a
    terminal, stdout and stderr are captured (nor are they terminals), ``env`` is applied (with COLUMNS=200)
    for the run and restored after. ``at`` pins the product's clock (``core.memory.now``) for the run.
    ``timeout`` is accepted for the same signature and not enforced (pytest-timeout is)."""
    from personavlm_cli.cli import main, terminal

    applied = {"COLUMNS": "200", **(env or {})}
    saved = {k: os.environ.get(k) for k in applied}
    os.environ.update(applied)
    logger = logging.getLogger("personavlm")
    handlers = list(logger.handlers)
    stores = set(_vector_stores())
    term = terminal.captured(input if input is not None else "", clock=(lambda: at) if at else None)
    try:
        try:
            code = main(list(args), environment=term)
        except SystemExit as exc:  # a command that exits by itself
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for handler in logger.handlers[:]:  # the user's log file of this run: closed, as at a process's end
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        _forget_vector_stores(keep=stores)
        gc.collect(1)  # what the run left unreachable (a record file's connection) is closed, as at a process's end
    return Result(code, terminal.text(term.stdout), terminal.text(term.stderr))


def _chroma_shared():
    module = sys.modules.get("chromadb.api.shared_system_client")
    return module.SharedSystemClient if module is not None else None


def _vector_stores() -> dict:
    shared = _chroma_shared()
    return shared._identifier_to_system if shared is not None else {}


def _forget_vector_stores(keep: set) -> None:
    """Chroma keeps one open system per store path in the process: stop those the run opened, as a
    process end would, so that the next run (in this process or a child) reads the store from disk."""
    shared = _chroma_shared()
    if shared is None:
        return
    for identifier in [i for i in shared._identifier_to_system if i not in keep]:
        system = shared._identifier_to_system.pop(identifier)
        shared._identifier_to_refcount.pop(identifier, None)
        try:
            system.stop()
        except Exception:  # a system that will not stop is dropped all the same
            pass


@pytest.fixture(autouse=True, scope="module")
def _vector_stores_end_with_their_module():
    """What a module's tests opened of Chroma and left open (an index built by hand and never closed) is
    stopped at the module's end, as a process's end would: the suite's process never piles up open
    database and index files. The program closes its own (``MemoryStore.close``; tests/test_house.py)."""
    before = set(_vector_stores())
    yield
    _forget_vector_stores(keep=before)


@pytest.fixture
def store(tmp_path):
    """A store with the real parts in the test's folder (tests.kit.real_store), closed after the test."""
    s = real_store(tmp_path)
    yield s
    s.close()


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def run():
    return run_in_process


def assert_one_line_error(result: Result, *needles: str) -> None:
    """Bad input: a non-zero exit, one clear line on stderr, never a traceback."""
    assert result.code != 0, result
    assert "Traceback" not in result.err, result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {result.err!r}"
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]


# -- the two layers -------------------------------------------------------------------------------

def pytest_collection_modifyitems(config, items):
    for item in items:
        if is_slow(item):
            item.add_marker(pytest.mark.slow)
        else:
            item.add_marker(pytest.mark.fast)


def _forbidden(what: str):
    def refuse(*args, **kwargs):
        pytest.fail(f"{what} in a test not marked slow: mark it @pytest.mark.slow (or use `run`, in-process)",
                    pytrace=False)
    return refuse


@pytest.fixture(autouse=True)
def _fast_layer_stays_fast(request, monkeypatch):
    """A test of the fast layer may not start the program or a server in a child process, nor load llama.cpp."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    real_init = subprocess.Popen.__init__

    def guarded_init(self, args, *rest, **kwargs):
        argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        shown = " ".join(map(str, argv))
        if argv and (str(argv[0]) == sys.executable or "personavlm" in shown or "chroma" in shown
                     or "llama" in shown):
            _forbidden(f"a child process ({shown[:80]})")()
        real_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded_init)
    runtime = sys.modules.get("personavlm_cli.adapters.llama_runtime")
    if runtime is None:
        import personavlm_cli.adapters.llama_runtime as runtime
    monkeypatch.setattr(runtime, "bindings", _forbidden("loading the real model (llama.cpp)"))
    yield
