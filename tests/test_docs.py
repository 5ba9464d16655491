"""Documentation that must stay true to the code."""

from pathlib import Path

from personavlm_cli.core.config import KEYS, env_var

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_configuration_key_is_documented_with_its_environment_variable():
    text = (DOCS / "configuration.md").read_text()
    for name in KEYS:
        assert f"| `{name}` | `{env_var(name)}` |" in text, name


def test_every_module_named_in_the_architecture_exists():
    import re

    root = DOCS.parent / "personavlm_cli"
    text = (DOCS / "architecture.md").read_text()
    for ref in re.findall(r"`((?:cli|core|adapters)/[a-z_]+\.py)`", text):
        assert (root / ref).exists(), ref
