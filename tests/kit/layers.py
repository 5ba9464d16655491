"""The two layers of the suite, decided by what a test uses, never by reading its source as text.

A test is slow when it (1) is marked ``@pytest.mark.slow`` (itself, its class, its module, or a parameter), or
(2) uses a slow fixture, directly or through another fixture: one made with ``slow_fixture`` or named in
``SLOW_FIXTURES`` (fixtures of the server tests, which start servers), or (3) its code, or the code of a helper of
its module that it calls (any depth), names a thing that starts a child process or loads the real model
(``SLOW_NAMES``: read from the compiled code's names, so a word in a docstring or a comment counts for nothing).
Every other test is fast (and marked ``fast``). In the fast layer, starting the program or a server in a child
process, or loading llama.cpp, fails the test with a line that says to mark it slow (tests/conftest.py): a test
the rules miss cannot slip through.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

F = TypeVar("F", bound=Callable[..., Any])

# Names whose use means a child process or the real model.
SLOW_NAMES = frozenset({
    "run_cli",  # the real program in a child process (tests/conftest.py)
    "subprocess", "Popen", "pexpect", "multiprocessing",
    "bindings", "raw_llama", "load_llama", "llama_cpp", "Llama",  # the real model runtime (adapters/llama_runtime.py)
    "start_chroma", "start_model_server",  # the servers of tests/test_servers.py
})
# Fixtures that start a child process, a server or the real model, by name (those of files this kit does not
# own; a fixture of the kit's own files says it with ``slow_fixture``).
SLOW_FIXTURES = frozenset({"cli", "chroma", "chroma_server", "model_server", "postgres", "servers_dir"})
KIT_MODULES = frozenset({"tests.conftest", "conftest", "tests.kit", "tests.kit.layers"})


def slow_fixture(*args: Any, **kwargs: Any) -> Any:
    """``pytest.fixture`` for a fixture that starts a child process, a server or the real model: every test
    that uses it (directly or through another fixture) is slow."""
    def mark(function: F) -> F:
        function.__personavlm_slow__ = True  # type: ignore[attr-defined]
        return pytest.fixture(**kwargs)(function)

    if args and callable(args[0]) and not kwargs:
        return mark(args[0])
    return mark


def _marks(obj: object) -> set[str]:
    marks = getattr(obj, "pytestmark", [])
    return {m.name for m in (marks if isinstance(marks, list) else [marks])}


def _names(code: types.CodeType) -> set[str]:
    """Every global, attribute and variable name a code object (and the functions and lambdas inside it) uses."""
    found = set(code.co_names) | set(code.co_varnames) | set(code.co_freevars)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found |= _names(const)
    return found


def _slow_helpers(module: types.ModuleType) -> set[str]:
    """The names of the module's own functions and classes (not its tests) that use a slow name, directly or
    through another such helper. Cached on the module."""
    cached = getattr(module, "__slow_helpers__", None)
    if cached is not None:
        return cached
    codes: dict[str, set[str]] = {}
    for name, obj in vars(module).items():
        target = getattr(obj, "__wrapped__", obj)
        if name.startswith(("test_", "Test")) or getattr(target, "__module__", None) != module.__name__:
            continue
        if isinstance(target, types.FunctionType):
            codes[name] = _names(target.__code__)
        elif isinstance(target, type):
            codes[name] = set().union(*(_names(f.__code__) for f in vars(target).values()
                                        if isinstance(f, types.FunctionType)))
    slow = {n for n, used in codes.items() if used & SLOW_NAMES}
    while True:
        grown = {n for n, used in codes.items() if n not in slow and used & slow}
        if not grown:
            break
        slow |= grown
    module.__slow_helpers__ = slow  # type: ignore[attr-defined]
    return slow


def _slow_function(function: Any) -> bool:
    """Whether a test or fixture function names a slow thing, or a slow helper of its module."""
    code = getattr(function, "__code__", None)
    if not isinstance(code, types.CodeType):
        return False
    used = _names(code)
    module = sys.modules.get(getattr(function, "__module__", "") or "")
    return bool(used & SLOW_NAMES or (module is not None and used & _slow_helpers(module)))


def _uses_slow_fixture(item: pytest.Item) -> bool:
    """Whether a fixture the test uses (directly or through another) is slow: by ``slow_fixture``, by name in
    ``SLOW_FIXTURES``, or by what its own code uses."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for name, definitions in info.name2fixturedefs.items():
        if name in SLOW_FIXTURES:
            return True
        for definition in definitions:
            function = getattr(definition, "func", None)
            if getattr(function, "__personavlm_slow__", False):
                return True
            # The kit's own fixtures (the guard, the isolated home) are judged by name and marker only.
            if getattr(function, "__module__", "") not in KIT_MODULES and _slow_function(function):
                return True
    return False


def is_slow(item: pytest.Item) -> bool:
    function = getattr(item, "function", None)
    explicit = set().union(*(_marks(o) for o in (function, getattr(item, "cls", None), getattr(item, "module", None))))
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        explicit |= {m.name for m in callspec.marks}
    if "slow" in explicit or _uses_slow_fixture(item):
        return True
    return function is not None and _slow_function(function)
