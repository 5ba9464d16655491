"""The evolving personality and a profile the user owns, with the real model and store."""

from __future__ import annotations

import json
import math

from personavlm_cli.core import personality as pem
from personavlm_cli.core.prompts import Context, GenericProfile, PersonaVLMProfile
from tests.conftest import assert_one_line_error
from tests.test_chat_e2e import make_picture

DOZEN = [
    "I am so excited, I just got back from a wild party with twenty friends!",
    "Honestly I worry about everything, my exam is tomorrow and I can't sleep.",
    "I made a detailed plan for the week, every hour is scheduled.",
    "Let's try something totally new, maybe painting with coffee?",
    "Ugh, people are so annoying, I don't care what they think.",
    "I'd rather stay home alone with a book tonight.",
    "Can you help me organise my closet by colour and season?",
    "I love meeting strangers and hearing their stories!",
    "I feel calm today, nothing bothers me.",
    "Thank you so much, you are always so kind to me.",
    "What's the capital of Peru?",
    "I keep changing my plans at the last minute, it's fun.",
]


def test_a_dozen_turns_leave_a_personality_history_of_evidence_only(cli, run):
    # Short answers: this test is about the update stage, not about what the model says.
    r = cli("chat", "--at", "2026-11-20 09:00", input="\n".join(DOZEN) + "\n", timeout=900,
            env={"PERSONAVLM_MODEL_MAX_TOKENS": "48"})
    assert r.code == 0, r.err
    # Quitting never waits for learning: what is left runs with `memory update` (or the next chat).
    assert "left to learn" in r.err or run("memory", "list", "--pending", "--json").json() == []
    u = cli("memory", "update", timeout=900)
    assert u.code == 0, u.err
    assert run("memory", "list", "--pending", "--json").json() == []
    history = run("profile", "history", "--json").json()
    # A row per message that said something about the user bearing on a trait; the question about
    # Peru and the request to organise a closet are not evidence.
    assert 0 < len(history) < len(DOZEN)
    texts = {t["id"]: t["text"] for t in run("memory", "list", "--all", "--json").json() if t["type"] == "turn"}
    assert not any("Peru" in texts[h["turn_id"]] or "closet" in texts[h["turn_id"]] for h in history)
    for m, h in enumerate(history):
        assert h["m"] == m and h["turn_id"].startswith("turn_") and h["evidence"]
        assert all(e["sentence"] in texts[h["turn_id"]] for e in h["evidence"])
        for t in pem.TRAITS:
            assert 1.0 <= h["after"][t] <= 5.0
            moved = sum(e["moved"] for e in h["evidence"] if e["trait"] == t)
            assert math.isclose(h["after"][t] - h["before"][t], moved, abs_tol=1e-3)
        if m:
            assert h["before"] == history[m - 1]["after"]
    shown = run("profile", "show", "--json").json()
    assert set(shown) == {"user", "core", "procedural", "big_five", "confidence"}
    assert shown["big_five"] == {t: round(history[-1]["after"][t], 4) for t in pem.TRAITS}
    table = run("profile", "history")
    assert table.code == 0 and "evidence" in table.out


def test_archive_round_trip_into_an_empty_home_is_identical_and_tampering_is_refused(cli, run, tmp_path):
    pic = make_picture(tmp_path / "kite.png", seed=7)
    cli("chat", "--at", "2026-11-20 09:00", "-a", str(pic), input="This is my kite\n/remember I fly kites on Sundays\n")
    cli("chat", "--at", "2026-11-22 09:00", "--no-update", input="/remember I switched from kites to drones\n")
    archive = tmp_path / "me.pvm"
    r = run("profile", "export", "--archive", str(archive))
    assert r.code == 0, r.err
    before = (run("memory", "list", "--all", "--json").json(), run("profile", "show", "--json").json(),
              run("profile", "history", "--json").json())
    assert any(m["type"] == "image" for m in before[0]) and any(m["superseded_by"] for m in before[0])

    other = {"PERSONAVLM_HOME": str(tmp_path / "new-home")}
    r = run("profile", "import", str(archive), env=other)
    assert r.code == 0, r.err
    after = (run("memory", "list", "--all", "--json", env=other).json(),
             run("profile", "show", "--json", env=other).json(),
             run("profile", "history", "--json", env=other).json())
    assert after == before
    sha = next(m["image_sha256"] for m in after[0] if m["type"] == "image")
    assert (tmp_path / "new-home" / "data" / "users" / "tester" / "images" / sha[:2] / f"{sha}.png").read_bytes() \
        == pic.read_bytes()

    # Under another user name in the same home.
    r = run("profile", "import", str(archive), "--user", "ada2")
    assert r.code == 0, r.err
    assert len(run("memory", "list", "--all", "--json", "--user", "ada2").json()) == len(before[0])

    data = bytearray(archive.read_bytes())
    data[len(data) // 3] ^= 0x01
    bad = tmp_path / "flipped.pvm"
    bad.write_bytes(bytes(data))
    third = {"PERSONAVLM_HOME": str(tmp_path / "third")}
    assert_one_line_error(run("profile", "import", str(bad), env=third), "archive")
    assert run("memory", "list", "--json", env=third).code != 0  # nothing was created


def _store_with(*facts: str) -> None:
    """The user's store with these semantic memories, written directly (no chat, no model)."""
    from personavlm_cli.adapters.records import RecordStore
    from personavlm_cli.core.config import Settings
    from personavlm_cli.core.store import new_memory
    from personavlm_cli.core.users import open_user_dir

    records = RecordStore(open_user_dir(Settings.load(), "tester"))
    records.insert([new_memory("semantic", fact, "2026-11-20T09:00:00+00:00") for fact in facts])
    records.close()


def test_profile_exports_as_json_yaml_and_a_readable_page(run, tmp_path):
    _store_with("I am allergic to peanuts")
    assert json.loads(run("profile", "export").out)["big_five"]["openness"] == 3.0
    assert "big_five:" in run("profile", "export", "--format", "yaml").out
    page = tmp_path / "me.md"
    assert run("profile", "export", "--format", "md", "-o", str(page)).code == 0
    text = page.read_text()
    assert text.startswith("# What personavlm knows about tester")
    assert "| openness | 3.00 | not enough evidence yet |" in text and "allergic to peanuts" in text
    assert_one_line_error(run("profile", "export", "--format", "pdf"), "format")


def test_reset_puts_a_trait_back_to_neutral_and_keeps_the_reset_in_history(run):
    _store_with("hello")
    assert run("profile", "reset", "openness").code == 0
    h = run("profile", "history", "--json").json()
    assert h[-1]["note"] == "reset openness" and h[-1]["after"]["openness"] == 3.0
    assert_one_line_error(run("profile", "reset", "grumpiness"), "unknown trait")


def test_generic_profile_speaks_in_words_and_persona_vlm_keeps_numbers():
    from datetime import datetime

    vector = {**pem.initial(), "neuroticism": 4.6, "extraversion": 1.4}
    ctx = Context(user="ada", now=datetime(2026, 11, 24, 12).astimezone(), message="hi", personality=vector)
    system = GenericProfile().answer_messages(ctx, [])[0]["content"]
    assert "reassuring and gentle" in system and "calm and concise" in system
    start = PersonaVLMProfile().start_prompt(ctx)
    assert "Neuroticism: 4.6" in start and "Extraversion: 1.4" in start
