"""docs/architecture.md, claim by claim, where a claim can be read off the source (with ``ast``: nothing is
imported). The layering rule and the circles are tests/test_layers.py; what ``--help`` loads in a real
process is tests/test_startup.py; the ports' members and signatures are tests/test_ports.py."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from tests.test_layers import imports_of

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "personavlm_cli"
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")

# "never load llama.cpp, Chroma, onnxruntime, psycopg, torch, `mcp` or `huggingface_hub`" (and open_clip, torch's).
HEAVY = frozenset({"llama_cpp", "chromadb", "onnxruntime", "psycopg", "torch", "open_clip", "mcp", "huggingface_hub"})
# What core reads its own files with, inside the functions that read them (core/config.py: config.yaml and the
# platform's directories; core/models.py: models.yaml). Everything else of core is the standard library.
CORE_FILE_READERS = {"yaml": {"core/config.py", "core/models.py"}, "platformdirs": {"core/config.py"}}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _imported(node: ast.AST) -> list[tuple[str, int]]:
    """(module, relative level) of an import statement; [] for any other node."""
    if isinstance(node, ast.Import):
        return [(alias.name, 0) for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return [(node.module or "", node.level)]
    return []


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def module_level_imports(tree: ast.Module) -> list[tuple[str, int]]:
    """The imports that run when the module is imported: its statements, class bodies and the branches of its
    ``if``/``try``/``with``, never a function's body (nor an ``if TYPE_CHECKING:`` block)."""
    found: list[tuple[str, int]] = []

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or _type_checking(node):
                continue
            found.extend((name, node.lineno) for name, _level in _imported(node))
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    visit(inner)

    visit(tree.body)
    return found


def test_core_imports_only_the_standard_library():
    """``core/`` is "(standard library only)", at module level and inside functions alike, but for the two
    readers of its own files (``CORE_FILE_READERS``)."""
    stdlib = sys.stdlib_module_names
    wrong = []
    for path in _modules():
        rel = _rel(path)
        if not rel.startswith("core/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for name, level in _imported(node):
                top = name.split(".")[0]
                if level or top in stdlib or top == "personavlm_cli" or rel in CORE_FILE_READERS.get(top, ()):
                    continue
                wrong.append(f"{rel}:{node.lineno} imports {name}")
    assert wrong == [], "core/ is the standard library only (docs/architecture.md)"


def test_heavy_libraries_are_imported_only_inside_the_functions_that_use_them():
    wrong = [f"{_rel(path)}:{line} imports {name} when the module is imported"
             for path in _modules()
             for name, line in module_level_imports(ast.parse(path.read_text(encoding="utf-8")))
             if name.split(".")[0] in HEAVY]
    assert wrong == [], "docs/architecture.md: heavy libraries inside the functions that use them"


def test_the_import_readers_see_what_they_must(tmp_path):
    """The checkers themselves: a heavy import at module level, in a class body or a ``try`` is seen; one in a
    function or under ``if TYPE_CHECKING:`` is not."""
    source = ("import os\ntry:\n    import torch\nexcept ImportError:\n    pass\n"
              "class A:\n    import chromadb\n"
              "def f():\n    import llama_cpp\n"
              "if TYPE_CHECKING:\n    import onnxruntime\n")
    assert [name for name, _ in module_level_imports(ast.parse(source))] == ["os", "torch", "chromadb"]


def test_cli_text_imports_nothing_of_the_program_and_the_cli_modules_build_in_order():
    """``cli/text.py`` "imports nothing of the program"; inside ``cli/``, the order is ``cli/text.py`` <
    ``cli/terminal.py`` < ``cli/env.py`` < ``cli/common.py`` < the commands: none imports one after it."""
    assert imports_of(PACKAGE / "cli" / "text.py") == set()
    order = ["text", "terminal", "env", "common"]
    for i, name in enumerate(order):
        later = {f"personavlm_cli.cli.{after}" for after in order[i + 1:]}
        commands = {f"personavlm_cli.cli.{p.stem}" for p in (PACKAGE / "cli").glob("*.py")
                    if p.stem not in (*order, "__init__", "__main__")}
        found = imports_of(PACKAGE / "cli" / f"{name}.py") & (later | commands)
        assert found == set(), f"cli/{name}.py imports {sorted(found)}"


def test_every_evals_module_named_in_the_architecture_exists():
    """tests/test_docs.py checks the modules of cli, core and adapters; these are the evaluations'."""
    named = re.findall(r"`(evals/[a-z_/]+\.py)`", ARCHITECTURE)
    assert len(named) > 10
    for ref in named:
        assert (PACKAGE / ref).is_file(), ref


def defined_names(path: Path) -> dict[str, set[str]]:
    """What a module defines at its top level (functions, classes, assignments), each class with its members
    (methods, nested classes, class attributes and the attributes its methods set on ``self``)."""
    names: dict[str, set[str]] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names[node.name] = set()
        elif isinstance(node, ast.ClassDef):
            members: set[str] = set()
            for sub in ast.walk(node):
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    members.add(sub.name)
                elif isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name):
                    members.add(sub.target.id)
                elif isinstance(sub, ast.Assign):
                    members |= {t.id for t in sub.targets if isinstance(t, ast.Name)}
                elif (isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store)
                      and isinstance(sub.value, ast.Name) and sub.value.id == "self"):
                    members.add(sub.attr)
            names[node.name] = members - {node.name}
        elif isinstance(node, ast.Assign):
            names.update((t.id, set()) for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = set()
    return names


FILE_NAME = re.compile(r"\.(yaml|json|md|py|txt|gguf)$")


def owners_and_names(text: str) -> list[tuple[str, str]]:
    """Each ``module`` (``Name``, ...) pair of the text: a module and a code name in the parentheses after it
    (``Class``, ``Class.member``, ``function``; a file name such as ``config.yaml`` is not one)."""
    pairs = []
    for module, inside in re.findall(r"`((?:cli|core|adapters|evals)/[a-z_/]+\.py)` \(([^()]*)\)", text):
        for name in re.findall(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)`", inside):
            if not FILE_NAME.search(name):
                pairs.append((module, name))
    return pairs


def test_the_owners_named_in_the_architecture_define_what_it_says_they_do():
    """"Where to find": ``core/conversation.py`` (``Conversation.send`` → ``Turn``, ``finish``/``interrupt``,
    ``TurnStats``), ``cli/chat.py`` (``ChatSession``) ...: each name is defined there (a bare name at the
    top level or as a member of one of its classes)."""
    pairs = owners_and_names(ARCHITECTURE)
    assert ("core/conversation.py", "Conversation.send") in pairs and ("cli/chat.py", "ChatSession") in pairs
    missing = []
    for module, name in pairs:
        path = PACKAGE / module
        if not path.is_file():
            missing.append(f"{module} (no such module)")
            continue
        defined = defined_names(path)
        head, _, member = name.partition(".")
        found = (head in defined and (not member or member in defined[head])) or (
            not member and any(head in members for members in defined.values()))
        if not found:
            missing.append(f"{module}: {name}")
    assert missing == [], "named in docs/architecture.md but not defined there"


@pytest.mark.parametrize("text, found", [
    ("`core/x.py` (`Thing.run` → `Other`, `done`/`gone`)", [("core/x.py", "Thing.run"), ("core/x.py", "Other"),
                                                             ("core/x.py", "done"), ("core/x.py", "gone")]),
    ("`core/config.py` (the loader: `config.yaml` > default)", []),
    ("`cli/chat.py`, `cli/repl.py`", []),
])
def test_the_owner_reader_pairs_a_module_with_the_names_after_it(text, found):
    assert owners_and_names(text) == found
