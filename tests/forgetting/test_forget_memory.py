"""Forgetting a memory by id (`memory forget ID`): what it said about the user is taken back, a version chain
is relinked around it, it is refused without confirmation when not interactive, and the REPL's input history
is scrubbed of it. Forgetting by text: tests/forgetting/test_forget_text.py (a server store:
test_forget_text_server.py); the evaluation of forgetting lives: test_forget_eval.py."""

from __future__ import annotations

from tests.conftest import assert_one_line_error
from tests.test_personality import _chat


def test_forgetting_a_message_takes_back_what_it_said_about_the_user(run):
    ids = _chat(["I love big parties and meeting new people.", "I worry about everything all the time."])
    assert run("profile", "show", "--json").json()["big_five"]["neuroticism"] > 3
    r = run("memory", "forget", ids[1], "--yes")
    assert r.code == 0, r.err
    shown = run("profile", "show", "--json").json()
    assert shown["big_five"]["neuroticism"] == 3.0 and shown["confidence"]["neuroticism"] == 0
    assert shown["big_five"]["extraversion"] > 3  # the other message's evidence stays
    assert run("profile", "why", "neuroticism", "--json").json()["evidence"] == []
    history = run("profile", "history", "--json").json()
    assert history[-1]["note"].startswith("forgotten") and history[-1]["before"] == history[-2]["after"]
    assert "worry" not in run("profile", "history", "--no-chart").out


def test_forgetting_a_middle_version_links_the_older_to_the_newer(cli, run):
    for day, text in (("01", "I love Sprite"), ("03", "I switched from Sprite to Coke"),
                      ("05", "I switched from Coke to water")):
        assert cli("chat", "--at", f"2026-11-{day} 10:00", "--no-update", input=f"/remember {text}\n").code == 0
    chain = sorted(run("memory", "list", "--type", "semantic", "--all", "--json").json(), key=lambda m: m["created_at"])
    assert [m["text"] for m in chain if not m["superseded_by"]] == ["I switched from Coke to water"], chain
    by_text = {m["text"]: m for m in chain}
    middle = by_text["I switched from Sprite to Coke"]["id"]
    assert run("memory", "forget", middle, "--yes").code == 0
    after = {m["text"]: m for m in run("memory", "list", "--type", "semantic", "--all", "--json").json()}
    assert set(after) == {"I love Sprite", "I switched from Coke to water"}
    assert after["I love Sprite"]["superseded_by"] == by_text["I switched from Coke to water"]["id"]
    assert after["I love Sprite"]["valid_to"], "the oldest version does not come back as current"
    assert [m["text"] for m in run("memory", "list", "--type", "semantic", "--json").json()] == [
        "I switched from Coke to water"]


def test_forget_refuses_without_confirmation_when_not_interactive(cli, run):
    cli("chat", "--no-update", input="/remember I like tea\n")
    assert_one_line_error(run("memory", "forget", "--query", "tea"), "--yes")
    assert len(run("memory", "list", "--json").json()) == 1


def test_forgetting_scrubs_the_repl_input_history(tmp_path):
    from personavlm_cli.core.forgetting import scrub_input_history

    history = tmp_path / "input_history"
    history.write_text("\n# 2026-01-01 10:00\n+hello there\n\n# 2026-01-02 10:00\n+/remember my code is Quetzal9\n"
                       "\n# 2026-01-03 10:00\n+bye\n")
    scrub_input_history(history, ["my code is Quetzal9"])
    assert b"Quetzal9" not in history.read_bytes()
    assert "+hello there" in history.read_text() and "+bye" in history.read_text()
