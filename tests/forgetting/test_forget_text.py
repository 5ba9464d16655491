"""Forgetting by text is exact and complete (issue 24, item 4): `memory forget --query TEXT` and `/forget
TEXT` list every memory that will go, derived ones included, before asking; only the words given match
(never a meaning); every literal occurrence goes from the user's directory (records, lexical index,
free pages, write-ahead log, vectors, input history); everything unrelated stays, the rest of the
profile included, and a memory with several sources is recomputed from those that remain.

In-process, with the real store (SQLite, Chroma, the ONNX encoder) and a scripted chat model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.kit import neutral

pytestmark = pytest.mark.fast

WORD = "Ljubljana"


def user_dir(home: Path) -> Path:
    return home / "data" / "users" / "tester"


def holders(root: Path, word: str) -> list[str]:
    """Every file under ``root`` whose bytes hold ``word`` (ASCII case aside)."""
    needle = word.lower().encode()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and needle in p.read_bytes().lower())


@pytest.fixture
def scripted(monkeypatch):
    """Every command of the test gets this scripted model (replies in order, then "Fine, thanks.")."""
    from personavlm_cli.cli import env as env_module

    model = neutral(["Nice to meet you, Marta.", f"{WORD} is a lovely city!", "Family visits are precious.",
                           "Hiking is great.", "Tea it is."])
    monkeypatch.setattr(env_module.Env, "model", lambda self: model)
    return model


def _life(run, home: Path) -> None:
    lines = ["My name is Marta Silva.", f"I live in {WORD} and I work as a carpenter.",
             f"My sister Vesna visits me in {WORD.lower()} every summer.", "I love hiking in the mountains.",
             "I drink green tea every morning."]
    r = run("chat", "--at", "2026-04-01 10:00", input="\n".join(lines) + "\n")
    assert r.code == 0, r.err
    assert run("memory", "update").code == 0  # the session's episode, as the next chat would make it
    (user_dir(home) / "input_history").write_text(
        "\n# 2026-04-01 10:00\n+hello\n\n# 2026-04-01 10:01\n+/forget ljubljana\n\n# 2026-04-01 10:02\n+bye\n")


def test_forget_by_text_lists_everything_then_erases_every_occurrence_and_only_that(run, scripted, isolated_home):
    _life(run, isolated_home)
    before = run("memory", "list", "--all", "--json").json()
    assert holders(user_dir(isolated_home), WORD), "the word is on disk before forgetting"
    profile = run("profile", "show", "--json").json()["core"]
    assert profile.get("location") == WORD and profile.get("occupation") == "carpenter"

    r = run("memory", "forget", "--query", "LJUBLJANA", "--yes")
    assert r.code == 0, r.err
    # Listed before anything went: each memory that holds it with its text, what goes with it, the profile.
    listed = r.err
    holding = [m for m in before if WORD.lower() in json.dumps(m).lower() and m["type"] != "core"]
    assert holding and all(m["id"] in listed for m in holding)
    assert f"I live in {WORD} and I work as a carpenter." in listed
    assert f"{WORD} is a lovely city!" in listed, "the assistant's reply that says it"
    assert "Family visits are precious." in listed, "the reply to an erased message goes with it, listed as derived"
    assert "Core profile" in listed and f"location: {WORD}" in listed

    assert holders(user_dir(isolated_home), WORD) == [], "no byte of it is left in the user's directory"
    after = run("memory", "list", "--all", "--json").json()
    texts = [m["text"] for m in after]
    assert "My name is Marta Silva." in texts and "I love hiking in the mountains." in texts
    assert "I drink green tea every morning." in texts
    assert not any(WORD.lower() in json.dumps(m).lower() for m in after)
    # The rest of the profile stays, the sister included (said in an erased message, not holding the word).
    profile = run("profile", "show", "--json").json()["core"]
    assert "location" not in profile
    assert profile.get("name") == "Marta Silva" and profile.get("occupation") == "carpenter"
    assert "sister Vesna" in str(profile.get("family"))
    cores = [m for m in after if m["type"] == "core"]
    assert sum(1 for m in cores if m["valid_to"] is None) == 1, "one current profile"
    # Nothing finds it any more, by words or by meaning.
    assert run("memory", "search", WORD, "--json").json() == []
    history = (user_dir(isolated_home) / "input_history").read_text()
    assert "+hello" in history and "+bye" in history


def test_meaning_alone_never_erases_and_the_words_must_be_given(run, scripted, isolated_home):
    _life(run, isolated_home)
    before = {m["id"] for m in run("memory", "list", "--all", "--json").json()}
    for text in ("Slovenia", "capital of Slovenia", "woodworker", "jubl jana"):
        r = run("memory", "forget", "--query", text, "--yes")
        assert r.code == 0 and "Nothing matches" in r.err, (text, r.err)
    r = run("memory", "forget", "--query", "a", "--yes")
    assert r.code == 1 and "too short" in r.err and len(r.err.strip().splitlines()) == 1
    r = run("memory", "forget", WORD, "--yes")  # words where ids go: refused, with the way to say it
    assert r.code == 1 and len(r.err.strip().splitlines()) == 1, r.err
    assert f"no memory with id '{WORD}'" in r.err and f"--query '{WORD}'" in r.err
    assert {m["id"] for m in run("memory", "list", "--all", "--json").json()} == before


def test_slash_forget_lists_every_memory_with_its_text_before_asking(run, scripted, isolated_home):
    _life(run, isolated_home)
    before = {m["id"] for m in run("memory", "list", "--all", "--json").json()}
    r = run("chat", "--at", "2026-04-01 10:30", "--no-update", input=f"/forget {WORD}\n")
    assert r.code == 0, r.err
    assert f"I live in {WORD} and I work as a carpenter." in r.err and "Family visits are precious." in r.err
    assert "no terminal to ask" in r.err and "Nothing was forgotten." in r.err
    assert before <= {m["id"] for m in run("memory", "list", "--all", "--json").json()}


def test_a_memory_with_several_sources_is_recomputed_from_those_that_remain(store):
    from datetime import datetime

    from personavlm_cli.core import forgetting
    from personavlm_cli.core.store import new_memory

    at = datetime(2026, 4, 1, 10).astimezone()
    plain = new_memory("turn", "I collect stamps.", at, role="user", session_id="s1")
    named = new_memory("turn", "I collect stamps from Reykjavik.", at, role="user", session_id="s1")
    both = new_memory("semantic", "I collect stamps.", at, source_ids=[plain.id, named.id],
                      meta={"merged": [{"at": plain.occurred_at, "text": "I collect stamps from Reykjavik."}]})
    alone = new_memory("semantic", "I collect stamps now.", at, source_ids=[named.id])
    other = new_memory("semantic", "I play chess.", at)
    store.add([plain, named, both, alone, other])

    p = forgetting.plan_text(store, "reykjavik")
    assert {m.id for m in p.targets} == {named.id}
    assert {m.id for m in p.derived} == {alone.id}, "derived from the erased turn alone: it goes"
    assert {m.id for m in p.recomputed} == {both.id}
    forgetting.execute_text(store, p, "forget-query")
    kept = store.records.get(both.id)
    assert kept is not None and kept.source_ids == [plain.id] and "merged" not in kept.meta
    assert store.records.get(other.id) is not None and store.records.get(alone.id) is None
    assert not forgetting.matching(store, "Reykjavik")


def test_a_version_whose_successor_holds_the_text_stays_closed(store):
    from datetime import datetime, timedelta

    from personavlm_cli.core import forgetting
    from personavlm_cli.core.store import new_memory

    at = datetime(2026, 4, 1, 10).astimezone()
    old = new_memory("semantic", "I drive a red van.", at)
    new = new_memory("semantic", "I switched from the red van to a Vespa.", at + timedelta(days=3))
    store.add([old])
    store.supersede(old, new, at=new.occurred_at)
    p = forgetting.plan_text(store, "vespa")
    forgetting.execute_text(store, p, "forget-query")
    kept = store.records.get(old.id)
    assert kept is not None and kept.valid_to is not None and kept.superseded_by is None, \
        "the old truth is not current again"
