"""Documentation that must stay true to the code."""

from pathlib import Path

from personavlm_cli.core.config import KEYS, env_var

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_configuration_doc_is_generated_from_the_code():
    import runpy

    render = runpy.run_path(str(DOCS.parent / "scripts" / "gen_config_doc.py"))["render"]
    assert (DOCS / "configuration.md").read_text() == render(), "run scripts/gen_config_doc.py"
    for name in KEYS:
        assert f"| `{name}` | `{env_var(name)}` |" in render(), name


def test_every_module_named_in_the_architecture_exists():
    import re

    root = DOCS.parent / "personavlm_cli"
    text = (DOCS / "architecture.md").read_text()
    for ref in re.findall(r"`((?:cli|core|adapters)/[a-z_/]+\.py)`", text):
        assert (root / ref).exists(), ref


def test_every_test_named_in_the_docs_exists():
    """docs/reliability.md (and the others) name the test that proves each row (its path under tests/, e.g.
    ``forgetting/test_forget_text.py::...``): it must exist."""
    import re

    tests = DOCS.parent / "tests"
    named = set()
    for doc in DOCS.glob("*.md"):
        named |= set(re.findall(r"`((?:[a-z_]+/)*test_[a-z_]+\.py)::(test_[A-Za-z0-9_]+)", doc.read_text()))
    assert len(named) > 30, "the reliability matrix names its tests"
    for module, name in sorted(named):
        module = module.removeprefix("tests/")
        source = (tests / module).read_text() if (tests / module).exists() else ""
        assert re.search(rf"^def {name}\(", source, re.M), f"{module}::{name} is named in docs/ but does not exist"
