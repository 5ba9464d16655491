"""A life that changes, chatted with the real embedded model and the real store (issue 24 items 1-2):
the model's own answers name the old value too, and must not outrank the user's newer statement."""

from __future__ import annotations


def test_a_move_told_in_a_real_chat_wins_recall_and_why_says_the_old_home_is_past(cli):
    r = cli("chat", "--at", "2026-01-10 09:00",
            input="hello, I'm Marta Kowalska, 38.\nI live in Gdansk near the old port.\n"
                  "What's my brother's name?\nTell me something nice about Gdansk.\n")
    assert r.code == 0, r.err
    r = cli("chat", "--at", "2026-03-20 19:00", input="Big news: we relocated to Wroclaw in March!\n")
    assert r.code == 0, r.err
    r = cli("chat", "--at", "2026-03-25 08:00", "--no-update", input="Where do I live these days?\n/why\n")
    assert r.code == 0, r.err
    why = r.out.split("step 1:")[1]
    assert "Wroclaw" in why, "the newer statement is in the answer's prompt"
    if "Gdansk near the old port" in why:
        assert "treated as past, until 20 March 2026" in why, why

    found = cli("memory", "search", "where do I live", "--json").json()
    users = [i for i, m in enumerate(found) if m["type"] != "turn" or m.get("role") == "user"]
    newest = next(i for i in users if "Wroclaw" in found[i]["text"])
    old = [i for i in users if "Gdansk near the old port" in found[i]["text"]]
    assert old and newest < old[0]
    assert found[old[0]]["signals"]["past"]["until"] == "2026-03-20", found[old[0]]
    # The model's own replies (whatever they say of Gdansk) come below the user's newer statement.
    assert all(i > newest for i, m in enumerate(found) if m["type"] == "turn" and m.get("role") == "assistant")

    profile = cli("memory", "list", "--type", "core", "--json").json()[-1]["text"]
    assert "location: Wroclaw" in profile and "name: Marta Kowalska" in profile and "age: 38" in profile
    learnt = " ".join(m["text"] for m in cli("memory", "list", "--json").json()
                      if m["type"] in ("semantic", "procedural", "episodic"))
    assert "brother" not in learnt and "something nice" not in learnt
    assert cli("memory", "verify").code == 0
