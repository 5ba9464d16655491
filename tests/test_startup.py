"""Start-up stays light: `personavlm --help` and the listings import no heavy library and, for the root's
help, no command's module (cli/__init__.py builds each command when it runs; ``ENTRIES`` holds what the
root's help lists). The fast tests read the imports with ``ast``; the slow one asks a child process
(``python -X importtime``) what it really imported.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "personavlm_cli"

# Never for --help or a listing: the model runtime, the vector engine, the encoders, the HTTP client, the
# Markdown renderer of answers, the chat REPL and its line editor, the MCP and hub SDKs, PostgreSQL. (An
# adapter's module may load, as `model list` reads GGUF headers: its heavy library is imported when used.)
HEAVY = ("llama_cpp", "chromadb", "torch", "open_clip", "numpy", "onnxruntime", "tokenizers", "httpx", "psycopg",
         "mcp", "huggingface_hub", "PIL", "jsonschema", "prompt_toolkit", "plotext", "markdown_it", "rich.markdown",
         "personavlm_cli.cli.chat", "personavlm_cli.cli.repl")
# Typer renders every --help with typer.rich_utils, which imports rich.markdown (and markdown_it) at its top:
# a minimal Typer app's --help imports them too, so --help is held to the rest of the list.
TYPER_HELP = ("markdown_it", "rich.markdown")
COMMAND_MODULES = {f"personavlm_cli.cli.{p.stem}" for p in (PACKAGE / "cli").glob("*.py")} - {
    "personavlm_cli.cli.__init__", "personavlm_cli.cli.common", "personavlm_cli.cli.env",
    "personavlm_cli.cli.terminal", "personavlm_cli.cli.text"}


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split("."))
    for candidate in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(nodes: list[ast.stmt], package: str) -> set[str]:
    """What these statements import when they run: module-level statements, ``if``/``try``/``with``
    blocks included; not what a ``def`` or ``class`` body imports (that runs only when called)."""
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if _module_file(f"{base}.{a.name}"))
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                continue
            children = [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
            for handler in getattr(node, "handlers", []):
                children.extend(handler.body)
            found |= _imports(children, package)
    return found


def startup_imports(entry: str = "personavlm_cli.cli", run_functions: tuple[str, ...] = ("main", "_run")) -> set[str]:
    """Every module `personavlm --help` imports, as far as the source says: the module-level imports of
    ``entry`` and of the package modules they reach (and of each package above them), plus the imports
    inside ``entry``'s functions that every command runs (``main``, ``_run``). Third-party modules are
    named, not followed."""
    tree = ast.parse((PACKAGE / "cli" / "__init__.py").read_text(encoding="utf-8"))
    first = _imports(tree.body, entry)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in run_functions:
            first |= {m for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))
                      for m in _imports([n], entry)}
    seen: set[str] = {entry}
    todo = sorted(first)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c imports a and a.b first
            prefix = ".".join(parts[:i])
            if prefix in seen:
                continue
            seen.add(prefix)
            path = _module_file(prefix) if prefix.startswith("personavlm_cli") else None
            if path is not None:
                package = prefix if path.name == "__init__.py" else prefix.rpartition(".")[0]
                todo.extend(_imports(ast.parse(path.read_text(encoding="utf-8")).body, package))
    return seen


def _heavy(modules: set[str], allowed: tuple[str, ...] = ()) -> list[str]:
    return sorted(m for m in modules for h in HEAVY
                  if h not in allowed and (m == h or m.startswith(h + ".")))


def test_help_imports_no_heavy_library_and_no_command_module():
    modules = startup_imports()
    assert "typer" in modules and "personavlm_cli.cli.terminal" in modules  # the reader follows imports
    assert not _heavy(modules, TYPER_HELP), _heavy(modules, TYPER_HELP)
    assert not sorted(modules & COMMAND_MODULES), sorted(modules & COMMAND_MODULES)


def test_the_import_reader_finds_a_heavy_import_planted_at_module_level(monkeypatch, tmp_path):
    """The reader itself: an import of a heavy library at a module's top (or in ``try``) is found; one
    inside a function is not, since it runs only when called."""
    source = "import typer\ntry:\n    import numpy\nexcept ImportError:\n    pass\ndef f():\n    import torch\n"
    found = _imports(ast.parse(source).body, "personavlm_cli.cli")
    assert {"typer", "numpy"} <= found and "torch" not in found
    assert _heavy({"numpy", "rich.markdown", "typer"}, TYPER_HELP) == ["numpy"]


def test_the_roots_help_lists_each_command_with_its_own_summary():
    """``ENTRIES`` (what `personavlm --help` lists without importing a command) says what each command's
    own help says first, and names every command there is."""
    from personavlm_cli.cli import ENTRIES, load_command

    for name, entry in ENTRIES.items():
        command = load_command(name)
        own = inspect.cleandoc(command.short_help or command.help or "").split("\n\n")[0]
        assert entry.summary == own, f"{name}: ENTRIES says {entry.summary!r}, the command says {own!r}"
    registered = {p.stem for p in (PACKAGE / "cli").glob("*.py")}
    assert {ENTRIES[n].module.rpartition(".")[2] for n in ENTRIES} <= registered


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["--help"], ["memory", "list"], ["model", "list"], ["users", "list"],
                                  ["config", "show"], ["profile", "show"]])
def test_help_and_listings_import_nothing_heavy_in_a_real_process(argv, isolated_home):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "personavlm_cli", *argv], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert len(imported) > 50, proc.stderr[-2000:]
    allowed = TYPER_HELP if argv == ["--help"] else ()
    assert not _heavy(imported, allowed), _heavy(imported, allowed)
    if argv == ["--help"]:
        assert not sorted(imported & COMMAND_MODULES), sorted(imported & COMMAND_MODULES)


def test_a_command_registered_the_usual_way_is_still_listed_and_found():
    """A branch that adds ``app.command(...)`` beside ``ENTRIES`` (a merge) loses nothing: the command is
    listed after the others and runs; test_help_imports_no_heavy_library_and_no_command_module then says to
    move it into ``ENTRIES``."""
    import typer
    from typer._click import Context

    from personavlm_cli.cli import ENTRIES, _LazyRoot

    app = typer.Typer(cls=_LazyRoot)
    app.callback()(lambda: None)
    app.command("hello")(lambda: None)
    root = typer.main.get_command(app)
    ctx = Context(root)
    assert root.list_commands(ctx) == [*ENTRIES, "hello"]
    assert root.get_command(ctx, "hello").name == "hello" and root.get_command(ctx, "nosuch") is None
