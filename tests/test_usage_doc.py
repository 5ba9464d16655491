"""docs/usage.md is the real --help of every command: regenerated here, it must equal the committed page."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import ROOT


def _gen():
    spec = importlib.util.spec_from_file_location("gen_usage", ROOT / "scripts" / "gen_usage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # gen_usage renders the help in a child process (a fixed, colourless terminal)
def test_usage_doc_matches_the_help_of_every_registered_command():
    gen = _gen()
    expected = gen.render()
    committed = (ROOT / "docs" / "usage.md").read_text(encoding="utf-8")
    assert committed == expected, "docs/usage.md is out of date: run `python scripts/gen_usage.py`"


def test_usage_doc_covers_every_command_the_program_registers():
    gen = _gen()
    listed = set(gen.commands_in((ROOT / "docs" / "usage.md").read_text(encoding="utf-8")))
    registered = {" ".join(("personavlm", *path)) for path in gen.commands()}
    assert registered == listed
    assert {"personavlm chat", "personavlm model pull"} <= registered
    text = (ROOT / "docs" / "usage.md").read_text(encoding="utf-8")
    assert "--install-completion" in text and "\x1b[" not in text
