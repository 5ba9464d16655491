"""The forgetting category of `eval facts` (issue 24, item 7; evals/forgetting.py): lives replayed through
the chat turn, the query forgotten as `memory forget --query` does, zero literal occurrences left and the
unrelated profile kept. The development lives (shared/data/lived) and held-out lives of our own, with a
scripted chat model (the real model's run is `personavlm eval facts ... --forget-lives`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personavlm_cli.evals import forgetting as ff
from tests.kit import neutral

LIVED = Path("/work/shared/data/lived/dev.json")
if not LIVED.exists():
    LIVED = Path(__file__).resolve().parents[3] / "shared" / "data" / "lived" / "dev.json"

SETTINGS = {"model.prompt_profile": "generic", "chat.session_gap_minutes": 60, "chat.recent_turns": 20,
            "chat.retrieval": "retrieve-first", "chat.model_search": True, "model.prompt_style": "compact"}

# Held out: written for this test, never used to tune forgetting.
OWN = [
    {"user": "oskar", "sessions": [
        {"at": "2026-01-10 18:00", "messages": [
            "My name is Oskar Lindqvist.", "I work as a welder in Malmö harbour.",
            "My daughter Saga started school in Lund this year.", "Our dog Bamse snores loudly."]},
        {"at": "2026-02-20 18:00", "messages": ["Saga loves her teacher in Lund.", "What should I cook tonight?"]}],
     "expect": {"profile": {"name": "Oskar Lindqvist", "occupation": "welder", "family": "Saga", "pets": "Bamse"},
                "forget": {"query": "Lund", "keep": ["name", "occupation", "family", "pets"]}}},
    {"user": "ama", "sessions": [
        {"at": "2026-03-01 07:30", "messages": [
            "I'm Ama Owusu and I live in Kumasi.", "I teach chemistry at a secondary school.",
            "My brother Kwame runs a bakery in Kumasi."]}],
     "expect": {"profile": {"name": "Ama Owusu", "location": "Kumasi", "family": "Kwame"},
                "forget": {"query": "kumasi", "keep": ["name", "family"]}}},
]


def _write(tmp_path: Path, lives) -> Path:
    path = tmp_path / "lives.json"
    path.write_text(json.dumps(lives), encoding="utf-8")
    return path


@pytest.mark.parametrize("which", ["dev", "own"])
def test_forgetting_leaves_zero_literal_occurrences_and_keeps_the_rest(tmp_path, which):
    lives = ff.load(LIVED if which == "dev" else _write(tmp_path, OWN))
    result = ff.run(lives, neutral(), SETTINGS, "rules", 48)
    assert result["lives"] == len(lives) >= 2
    for item in result["items"]:
        assert item["occurrences_left"] == 0, (item["files_holding"], item["rows_holding"])
        assert item["erased"] == item["listed"] > 0, item
        assert item["kept"] == item["held_before"], item
    assert result["zero_occurrences"] == 1.0 and result["listed_equals_erased"]


def test_a_life_file_without_anything_to_forget_is_one_line(tmp_path):
    from personavlm_cli.core.errors import PersonaError

    with pytest.raises(PersonaError, match="expect.forget"):
        ff.load(_write(tmp_path, [{"user": "x", "sessions": []}]))
