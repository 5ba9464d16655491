"""Remembering with the real embedded model and store: memory types, supersede, erasure, crash recovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, assert_one_line_error
from tests.test_chat_e2e import make_picture


def user_dir(home: Path) -> Path:
    return home / "data" / "users" / "tester"


def grep_bytes(root: Path, word: bytes) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and word.lower() in path.read_bytes().lower():
            hits.append(path)
    return hits


def test_two_sessions_build_semantic_episodic_and_core_memories(cli, run, tmp_path):
    pic = make_picture(tmp_path / "rex.png")
    first = ("Hi, I am Ada and I work as a nurse in Lisbon.\n"
             "/remember My dog is called Rex\n"
             f"/attach {pic}\n"
             "This is Rex at the beach\n")
    r = cli("chat", "--at", "2026-11-10 09:00", input=first)
    assert r.code == 0, r.err
    r = cli("chat", "--at", "2026-11-12 18:30", input="I am training for a marathon in April.\n")
    assert r.code == 0, r.err
    # Quitting left the model's part pending; `memory update` finishes it (as the next chat would).
    assert cli("memory", "update").code == 0

    everything = run("memory", "list", "--all", "--json").json()
    by_type = {}
    for m in everything:
        by_type.setdefault(m["type"], []).append(m)
    turns = {m["id"]: m for m in by_type["turn"]}
    assert len({t["session_id"] for t in turns.values()}) == 2

    assert any(m["text"] == "My dog is called Rex" for m in by_type["semantic"])
    assert by_type["episodic"], "each finished session is consolidated into episodes"
    for episode in by_type["episodic"]:
        assert episode["source_ids"] and all(s in turns for s in episode["source_ids"])
        assert episode["occurred_at"] <= episode["occurred_end"]
    assert by_type["core"], "a core profile is learnt from what the user said (work as a nurse, dog Rex)"
    assert any("nurse" in m["text"] for m in by_type["core"])
    image = by_type["image"][0]
    assert turns[image["source_ids"][0]]["text"] == "This is Rex at the beach"

    # Every memory explains itself.
    episode = by_type["episodic"][0]
    shown = run("memory", "show", episode["id"])
    assert shown.code == 0 and "Comes from" in shown.out
    assert turns[episode["source_ids"][0]]["id"] in shown.out
    assert run("memory", "show", by_type["core"][-1]["id"]).code == 0
    assert_one_line_error(run("memory", "show", "sem_doesnotexist"), "no memory")
    # Nothing left pending after `memory update`.
    assert run("memory", "list", "--pending", "--json").json() == []


def test_a_contradiction_supersedes_the_older_memory(cli, run):
    assert cli("chat", "--at", "2026-11-01 10:00", "--no-update", input="/remember I love Sprite\n").code == 0
    assert cli("chat", "--at", "2026-11-03 10:00", "--no-update",
               input="/remember I switched from Sprite to Coke\n").code == 0
    current = [m for m in run("memory", "list", "--type", "semantic", "--json").json()]
    everything = [m for m in run("memory", "list", "--type", "semantic", "--all", "--json").json()]
    assert [m["text"] for m in current] == ["I switched from Sprite to Coke"]
    old = next(m for m in everything if m["text"] == "I love Sprite")
    assert old["superseded_by"] == current[0]["id"] and old["valid_to"].startswith("2026-11-03")
    shown = run("memory", "show", old["id"])
    assert "superseded" in shown.out and current[0]["id"] in shown.out
    # A near-duplicate is merged, not added.
    assert cli("chat", "--at", "2026-11-04 10:00", "--no-update",
               input="/remember I switched from Sprite to Coke.\n").code == 0
    assert len(run("memory", "list", "--type", "semantic", "--json").json()) == 1


def test_forget_erases_every_byte_of_the_memory_and_logs_it(cli, run, isolated_home):
    word = b"Quetzalcoatlus"
    r = cli("chat", "--at", "2026-11-01 10:00", "--no-update",
            input=f"/remember My favourite animal is the {word.decode()}\n/remember I like tea\n")
    assert r.code == 0, r.err
    mem = next(m for m in run("memory", "list", "--json").json() if word.decode() in m["text"])
    assert grep_bytes(user_dir(isolated_home), word), "the word is stored before forgetting"
    r = run("memory", "forget", mem["id"], "--yes")
    assert r.code == 0, r.err
    assert grep_bytes(user_dir(isolated_home), word) == []
    left = run("memory", "list", "--json").json()
    assert [m["text"] for m in left] == ["I like tea"]
    import sqlite3

    db = sqlite3.connect(user_dir(isolated_home) / "personavlm.db")
    log = db.execute("SELECT operation, ids FROM audit").fetchall()
    assert ("forget-id", f'["{mem["id"]}"]') in log
    # Search no longer finds it either (its vector is gone).
    found = run("memory", "search", "favourite animal", "--json").json()
    assert mem["id"] not in [m["id"] for m in found]


def test_forget_a_turn_takes_its_images_and_derived_memories_along(cli, run, tmp_path, isolated_home):
    pic = make_picture(tmp_path / "cat.png", seed=3)
    r = cli("chat", "--at", "2026-11-01 10:00", "-a", str(pic), input="Look at my cat Zorblax\n")
    assert r.code == 0, r.err
    turn = next(m for m in run("memory", "list", "--json").json() if m["text"] == "Look at my cat Zorblax")
    r = run("memory", "forget", turn["id"], "--yes")
    assert r.code == 0, r.err
    assert grep_bytes(user_dir(isolated_home), b"Zorblax") == []
    assert list((user_dir(isolated_home) / "images").rglob("*.png")) == []
    assert [m for m in run("memory", "list", "--all", "--json").json() if m["type"] != "core"] == []


def test_edit_corrects_a_memory_keeps_its_history_and_can_erase_the_old_text(cli, run, isolated_home):
    r = cli("chat", "--at", "2026-11-01 10:00", "--no-update",
            input="Good morning\n/remember My sister Ottilie lives in Lyon\n/remember I like tea\n")
    assert r.code == 0, r.err
    listing = run("memory", "list", "--type", "semantic", "--json").json()
    first = next(m["id"] for m in listing if "Ottilie" in m["text"])

    r = run("memory", "edit", first, "My sister Ottilie lives in Marseille")
    assert r.code == 0, r.err
    second = r.out.strip()
    assert second != first and "kept as history" in r.err
    current = {m["text"] for m in run("memory", "list", "--type", "semantic", "--json").json()}
    assert current == {"My sister Ottilie lives in Marseille", "I like tea"}
    old = next(m for m in run("memory", "list", "--all", "--json").json() if m["id"] == first)
    assert old["superseded_by"] == second and old["valid_to"]
    shown = run("memory", "show", second)
    assert "Versions" in shown.out and first in shown.out and "edited by the user" in shown.out
    hits = run("memory", "search", "Where does Ottilie live", "--json").json()
    assert hits[0]["id"] == second and first not in [h["id"] for h in hits], "search reads the corrected text"

    # What cannot be edited is one line and changes nothing.
    turn = next(m for m in run("memory", "list", "--type", "turn", "--json").json())
    assert_one_line_error(run("memory", "edit", turn["id"], "something else"), "cannot be edited", "forget")
    assert_one_line_error(run("memory", "edit", first, "Lyon again"), "older version", second)
    assert_one_line_error(run("memory", "edit", "sem_0000000000", "x"), "no memory")
    assert_one_line_error(run("memory", "edit", second, " \x01 "), "empty")
    same = run("memory", "edit", second, "My sister Ottilie lives in Marseille")
    assert same.code == 0 and same.out.strip() == second and "nothing changed" in same.err

    # Text from stdin, and the wrong version erased for real: the line of versions skips it.
    r = run("memory", "edit", second, "-", "--erase-old", "--json", input="My sister Ottilie lives in Nice\n")
    assert r.code == 0, r.err
    third = r.json()
    assert third["text"] == "My sister Ottilie lives in Nice" and third["superseded_by"] is None
    assert grep_bytes(user_dir(isolated_home), b"Marseille") == [], "the erased version leaves no byte behind"
    everything = {m["id"]: m for m in run("memory", "list", "--all", "--json").json()}
    assert second not in everything
    assert everything[first]["superseded_by"] == third["id"], "the first version now leads to the third"
    assert [m["text"] for m in run("memory", "list", "--type", "semantic", "--json").json()
            if "Ottilie" in m["text"]] == ["My sister Ottilie lives in Nice"]
    import sqlite3

    log = sqlite3.connect(user_dir(isolated_home) / "personavlm.db").execute(
        "SELECT operation, ids FROM audit").fetchall()
    assert ("edit", f'["{first}", "{second}"]') in log and ("edit-erase-old", f'["{second}"]') in log


def test_kill_during_the_update_stage_resumes_without_duplicates(isolated_home):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "personavlm_cli", "chat", "--at", "2026-11-05 10:00"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=ROOT, text=True)
    proc.stdin.write("I am a violinist and I practise every morning.\nMy sister Lena lives in Porto.\n")
    proc.stdin.flush()
    db = user_dir(isolated_home) / "personavlm.db"
    import sqlite3

    # Wait until both answers are stored and the update queue has work, then kill -9.
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(0.3)
        if not db.exists():
            continue
        con = sqlite3.connect(db, timeout=5)
        try:
            answers = con.execute("SELECT COUNT(*) FROM memories WHERE role='assistant'").fetchone()[0]
            jobs = con.execute("SELECT COUNT(*) FROM jobs WHERE kind IN ('turn','session')").fetchone()[0]
        except sqlite3.OperationalError:
            answers = jobs = 0
        finally:
            con.close()
        if answers == 2 and jobs:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert answers == 2 and jobs, "the chat stored both answers and queued its updates"

    from tests.conftest import run_cli, run_in_process

    pending = run_in_process("memory", "list", "--pending", "--json").json()
    assert pending, "queued work survived the kill"
    # A new start resumes the pending work.
    r = run_cli("chat", "--at", "2026-11-05 10:20", "--once", "Good morning")
    assert r.code == 0, r.err
    listing = run_in_process("memory", "list", "--all", "--json").json()
    users = [m["text"] for m in listing if m.get("role") == "user"]
    assert users == ["I am a violinist and I practise every morning.", "My sister Lena lives in Porto.",
                     "Good morning"]
    ids = [m["id"] for m in listing]
    assert len(ids) == len(set(ids))
    semantic_sources = [tuple(m["source_ids"]) for m in listing if m["type"] == "semantic"]
    assert len(semantic_sources) == len(set(semantic_sources)), "no memory was extracted twice"
    con = sqlite3.connect(db)
    turns_in_history = [r[0] for r in con.execute("SELECT turn_id FROM personality WHERE turn_id IS NOT NULL")]
    assert len(turns_in_history) == len(set(turns_in_history)), "no personality update was applied twice"


def test_export_then_import_into_an_empty_home_gives_the_same_memories(cli, run, tmp_path):
    pic = make_picture(tmp_path / "p.png", seed=5)
    cli("chat", "--at", "2026-11-01 10:00", "--no-update", "-a", str(pic),
        input="Here is my bike\n/remember I ride to work\n")
    before = run("memory", "list", "--all", "--json").json()
    archive = tmp_path / "ada.pvm"
    assert run("memory", "export", str(archive)).code == 0
    other = {"PERSONAVLM_HOME": str(tmp_path / "elsewhere")}
    r = run("memory", "import", str(archive), env=other)
    assert r.code == 0, r.err
    after = run("memory", "list", "--all", "--json", env=other).json()
    assert after == before
    found = run("memory", "search", "bike", "--json", env=other).json()
    assert found, "imported memories are searchable (vectors rebuilt)"
    # A flipped byte is refused, and nothing is imported.
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.pvm"
    bad.write_bytes(bytes(data))
    third = {"PERSONAVLM_HOME": str(tmp_path / "third")}
    assert_one_line_error(run("memory", "import", str(bad), env=third), "archive")
