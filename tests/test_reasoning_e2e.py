"""Multi-step recall with the real embedded model: by keyword, by time window, explained by /why."""

from __future__ import annotations

from datetime import datetime

from personavlm_cli.core.dates import window


def test_recall_by_time_window_and_by_keyword_is_shown_by_why(cli, run):
    assert cli("chat", "--at", "2026-11-17 10:00", "--no-update",
               input="I planted red tulips in the garden this morning.\n").code == 0
    assert cli("chat", "--at", "2026-11-19 15:00", "--no-update",
               input="/remember My dog is called Rex\n").code == 0
    listing = run("memory", "list", "--json").json()
    tulips = next(m["id"] for m in listing if "tulips" in m["text"] and m.get("role") == "user")
    rex = next(m["id"] for m in listing if m["type"] == "semantic")

    r = cli("chat", "--at", "2026-11-24 12:00", "--force-retrieve", "--no-update",
            input="What did I tell you last Tuesday?\n/why\nWhat is my dog called?\n/why\n")
    assert r.code == 0, r.err
    first_why, second_why = r.out.split("step 1:")[1], r.out.split("step 1:")[2]
    assert "retrieve (forced)" in first_why
    assert "2026-11-17 00:00" in first_why, "the window named by 'last Tuesday' filters the recall"
    assert tulips in first_why
    assert rex not in first_why, "a memory outside the window is not recalled"
    assert rex in second_why, "the older fact is found by its words"
    # Every answer is non-empty and stored with its reasoning.
    answers = [m for m in run("memory", "list", "--json").json() if m.get("role") == "assistant"]
    assert len(answers) == 3 and all(a["text"].strip() for a in answers)
    shown = run("memory", "show", answers[-1]["id"], "--json").json()
    assert shown["meta"]["reasoning"]["steps"][0]["action"] == "retrieve"
    assert rex in shown["meta"]["reasoning"]["used"]


def test_time_words_name_the_period_they_mean():
    now = datetime(2026, 11, 24, 12, 0).astimezone()  # a Tuesday
    start, end = window("what did I say last Tuesday?", now)
    assert (start.day, end.day) == (17, 17)
    start, end = window("anything from yesterday", now)
    assert (start.day, end.day, end.hour) == (23, 23, 23)
    start, end = window("back in March", now)
    assert (start.month, end.month, start.year) == (3, 3, 2026)
    start, end = window("in December", now)
    assert start.year == 2025
    assert window("tell me a joke", now) is None
