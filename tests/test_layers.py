"""The layering rule (docs/architecture.md), checked on the source: every import of every module of
``personavlm_cli``, at module level and inside functions, read with ``ast`` (nothing is imported).

- ``core/`` imports only ``core`` (the method and its ports, ``core/ports.py``);
- ``adapters/`` imports only ``core.errors``, ``core.memory``, ``core.ports`` (domain types) and
  ``core.secrets`` (the secret policy) and
  other adapters, never ``cli`` or ``evals``;
- ``evals/`` may import ``core`` and ``adapters``, never ``cli``;
- ``cli/`` is the outer layer and the composition root: it may import anything;
- and no circle: no module of ``cli`` (or of ``core``) imports, through any chain of imports within its
  layer, itself again (none is left: a new circle is broken, never listed as an exception).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "personavlm_cli"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

ADAPTERS_MAY_USE_FROM_CORE = {f"{PACKAGE}.core.errors", f"{PACKAGE}.core.memory", f"{PACKAGE}.core.ports",
                              f"{PACKAGE}.core.secrets"}  # the secret policy: masking, standard library only

# Modules allowed to break the rule for now (none). test_pending_entries_still_break_the_rule fails
# for an entry that no longer breaks it, so the list cannot go stale.
PENDING: set[str] = set()


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str, root: Path) -> bool:
    rel = Path(*name.split("."))
    return (root.parent / rel.with_suffix(".py")).is_file() or (root.parent / rel / "__init__.py").is_file()


def imports_of(path: Path, root: Path = ROOT) -> set[str]:
    """The ``personavlm_cli`` modules ``path`` imports (``from pkg import mod`` names ``pkg.mod``;
    ``from mod import name`` names ``mod``), wherever the import statement stands, and the literal
    names given to ``importlib.import_module``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if alias.name != "*" and _is_module(sub, root) else module)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def breaks(module_path: str, imported: str) -> bool:
    """Whether the module at ``module_path`` (``core/store.py``) may not import ``imported``."""
    layer, target = module_path.split("/")[0], _layer(imported)
    if layer == "core":
        return target != "core"
    if layer == "adapters":
        return target in (None, "cli", "evals") or (target == "core" and imported not in ADAPTERS_MAY_USE_FROM_CORE)
    if layer == "evals":
        return target in (None, "cli")
    return False


def violations(root: Path = ROOT) -> dict[str, set[str]]:
    """Each module of the package that breaks the rule, with what it imports that it may not."""
    out: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        bad = {m for m in imports_of(path, root) if breaks(rel, m)}
        if bad:
            out[rel] = bad
    return out


def test_no_layer_imports_one_above_it():
    found = {rel: sorted(mods) for rel, mods in violations().items() if rel not in PENDING}
    assert not found, "imports that break the layering rule (docs/architecture.md): " + "; ".join(
        f"{rel} imports {', '.join(mods)}" for rel, mods in sorted(found.items()))


def test_pending_entries_still_break_the_rule():
    fixed = PENDING - set(violations())
    assert not fixed, f"these modules keep the rule now: remove them from PENDING in tests/test_layers.py: {sorted(fixed)}"


@pytest.mark.parametrize("source, module_path, imported", [
    ("from personavlm_cli.adapters.records import RecordStore", "core/x.py", "personavlm_cli.adapters.records"),
    ("def f():\n    from personavlm_cli.cli import env", "core/x.py", "personavlm_cli.cli.env"),
    ("import personavlm_cli.evals.facts", "core/x.py", "personavlm_cli.evals.facts"),
    ("from ..adapters import vectors", "core/x.py", "personavlm_cli.adapters.vectors"),
    ("from personavlm_cli.core.recall import Recall", "adapters/x.py", "personavlm_cli.core.recall"),
    ("from personavlm_cli.core import store", "adapters/x.py", "personavlm_cli.core.store"),
    ("from personavlm_cli.cli.common import err", "adapters/x.py", "personavlm_cli.cli.common"),
    ("import importlib\nimportlib.import_module('personavlm_cli.cli.env')", "evals/x.py", "personavlm_cli.cli.env"),
])
def test_the_checker_finds_each_kind_of_upward_import(tmp_path, source, module_path, imported):
    """The checker itself: an upward import at module level, inside a function, relative, and by
    ``importlib`` is found and refused; the imports each layer may make pass."""
    fake = tmp_path / PACKAGE
    for name in ("core", "adapters", "cli", "evals"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text("")
    for name in ("adapters/records.py", "adapters/vectors.py", "cli/env.py", "cli/common.py", "evals/facts.py",
                 "core/recall.py", "core/store.py", "core/errors.py"):
        (fake / name).write_text("")
    (fake / module_path).write_text(source + "\n")
    assert imported in imports_of(fake / module_path, fake)
    assert violations(fake) == {module_path: {imported}}
    # What each layer may import passes: core.errors everywhere, adapters from adapters and evals.
    (fake / module_path).write_text("from personavlm_cli.core.errors import PersonaError\n"
                                    "from personavlm_cli.adapters import vectors\n")
    allowed = {} if not module_path.startswith("core/") else {module_path: {"personavlm_cli.adapters.vectors"}}
    assert violations(fake) == allowed


# -- no import circles within a layer ---------------------------------------------------------------

def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports (module and function level)."""
    return {_module_name(path, root): imports_of(path, root) for path in sorted(root.rglob("*.py"))}


def cycles(graph: dict[str, set[str]], layer: str) -> list[frozenset[str]]:
    """The import circles among the modules of ``layer`` (``cli``, ``core``): each strongly connected set
    of two or more modules, or one module that imports itself (Tarjan's algorithm, iteratively)."""
    nodes = sorted(m for m in graph if _layer(m) == layer)
    edges = {m: sorted(t for t in graph[m] if t in graph and _layer(t) == layer) for m in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(edges[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.add(member)
                    if member == node:
                        break
                if len(members) > 1 or node in edges[node]:
                    found.append(frozenset(members))
    return found


@pytest.mark.parametrize("layer", ["cli", "core", "adapters", "evals"])
def test_no_import_circle_within_a_layer(layer):
    graph = import_graph()
    circles = list(cycles(graph, layer))
    assert not circles, f"import circles among the {layer} modules (break each; docs/architecture.md): " + "; ".join(
        " <-> ".join(sorted(c)) for c in circles)


def test_the_cycle_finder_sees_a_circle_through_function_level_imports(tmp_path):
    """The checker itself: a circle of three modules where one edge is an import inside a function is found;
    the same modules with that edge removed are not a circle."""
    fake = tmp_path / PACKAGE
    (fake / "cli").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "cli" / "__init__.py").write_text("")
    (fake / "cli" / "a.py").write_text("from personavlm_cli.cli import b\n")
    (fake / "cli" / "b.py").write_text("from personavlm_cli.cli.c import x\n")
    (fake / "cli" / "c.py").write_text("def f():\n    from personavlm_cli.cli.a import y\n")
    (fake / "cli" / "d.py").write_text("import personavlm_cli.cli.a\n")  # into the circle, not part of it
    assert cycles(import_graph(fake), "cli") == [frozenset({f"{PACKAGE}.cli.{m}" for m in "abc"})]
    (fake / "cli" / "c.py").write_text("def f():\n    pass\n")
    assert cycles(import_graph(fake), "cli") == []
