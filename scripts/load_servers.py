"""The server store under load (issue 26, item 6): several homes writing to one PostgreSQL + Chroma pair.

    PYTHONPATH=. .venv/bin/python scripts/load_servers.py [--chats 8] [--messages 6] [--pause 4] [--json OUT]

Starts a throw-away PostgreSQL and a Chroma server on loopback (as the slow tests do), then at once:

* ``--chats`` real ``personavlm chat --no-update`` processes (two homes per user, so two machines of
  the same user write at the same time), each fed ``--messages`` lines ``--pause`` seconds apart;
* a ``store migrate --to server`` of a third home with two users of its own;
* a ``memory forget --all --yes`` of one chatting user, from another home, half-way through;
* a timing writer: one turn (a user message and its answer, one transaction each, as a chat writes
  them) every 0.5 s through the same record store code, whose latencies give the p50/p99 write times.

Then it checks: every message of every user not erased is stored exactly once (lost 0, duplicated 0),
the erased user holds only messages sent after the erasure began and no answer whose message is gone,
every stored memory has its vector, the migrated users' memories are all there, no process hung.
Prints one JSON object (the figures in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _cli(args: list[str], env: dict, input: str = "", timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "personavlm_cli", *args], input=input, capture_output=True,
                          text=True, env={**os.environ, **env}, cwd=ROOT, timeout=timeout)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chats", type=int, default=8)
    ap.add_argument("--messages", type=int, default=6)
    ap.add_argument("--pause", type=float, default=4.0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)

    from tests.test_servers import start_chroma
    from tests.test_two_homes import Postgres

    root = Path(tempfile.mkdtemp(prefix="personavlm-load-"))
    pg = Postgres(root / "pg").start()
    chroma = start_chroma(root / "chroma")
    try:
        return _run(a, root, pg, chroma)
    finally:
        chroma.stop()
        pg.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def _run(a, root: Path, pg, chroma) -> dict:
    base = {"PERSONAVLM_STORE_KIND": "server", "PERSONAVLM_STORE_URL": chroma.url,
            "PERSONAVLM_STORE_DATABASE_URL": pg.url, "PERSONAVLM_MODEL_MAX_TOKENS": "8",
            "PERSONAVLM_MODEL_TEMPERATURE": "0", "PERSONAVLM_MEMORY_UPDATE": "false", "HF_HUB_OFFLINE": "1",
            "ANONYMIZED_TELEMETRY": "False", "PYTHONUNBUFFERED": "1"}
    users = [f"load{i}" for i in range((a.chats + 1) // 2)]
    erased_user = users[0]
    # The home to migrate: two users with embedded memories, made before the load starts.
    mover = {**base, "PERSONAVLM_STORE_KIND": "embedded", "PERSONAVLM_HOME": str(root / "mover")}
    moved = {}
    for name in ("movera", "moverb"):
        lines = "".join(f"/remember {name} fact number {k}\n" for k in range(20))
        r = _cli(["chat", "--no-update"], {**mover, "PERSONAVLM_USER": name}, input=lines)
        assert r.returncode == 0, r.stderr
        moved[name] = 20

    sent: dict[str, list[tuple[float, str]]] = {u: [] for u in users}
    chats = []
    started = time.monotonic()
    for i in range(a.chats):
        user = users[i % len(users)]
        env = {**os.environ, **base, "PERSONAVLM_USER": user, "PERSONAVLM_HOME": str(root / f"home{i}")}
        proc = subprocess.Popen([sys.executable, "-m", "personavlm_cli", "chat", "--no-update"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        chats.append((i, user, proc))

    def feed(i: int, user: str, proc) -> None:
        for k in range(a.messages):
            text = f"Chat {i} message {k}: the number of the day is {i * 100 + k}."
            sent[user].append((time.monotonic(), text))
            proc.stdin.write(text + "\n")
            proc.stdin.flush()
            time.sleep(a.pause)
        proc.stdin.close()

    feeders = [threading.Thread(target=feed, args=c) for c in chats]
    for t in feeders:
        t.start()

    # The timing writer: a turn every 0.5 s through PgRecordStore, as a chat writes one.
    from personavlm_cli.adapters.pg_records import PgRecordStore
    from personavlm_cli.core.memory import Memory

    latencies: list[float] = []
    stop = threading.Event()

    def writer() -> None:
        store = PgRecordStore(pg.url, "loadtimer")
        n = 0
        while not stop.is_set():
            for role in ("user", "assistant"):
                m = Memory(id=f"turn_t{n}_{role[0]}", type="turn", text=f"timed {role} turn {n}", role=role,
                           session_id="t", occurred_at="2026-11-20T10:00:00+00:00",
                           created_at="2026-11-20T10:00:00+00:00")
                t0 = time.perf_counter()
                with store.transaction():
                    store.insert([m])
                latencies.append(time.perf_counter() - t0)
            n += 1
            time.sleep(0.5)
        store.close()

    timer = threading.Thread(target=writer)
    timer.start()

    # Half-way: the migration of the third home, and a forget --all of one chatting user from a new home.
    time.sleep(a.messages * a.pause / 2)
    migrate = subprocess.Popen([sys.executable, "-m", "personavlm_cli", "store", "migrate", "--to", "server", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **mover, "PERSONAVLM_USER": "movera"}, cwd=ROOT)
    forget = _cli(["memory", "forget", "--all", "--yes"],
                  {**base, "PERSONAVLM_USER": erased_user, "PERSONAVLM_HOME": str(root / "eraser")})
    forget_done = time.monotonic()
    m_out, m_err = migrate.communicate(timeout=900)

    codes = {}
    for t in feeders:
        t.join()
    for i, _user, proc in chats:
        proc.stdin = None  # closed by its feeder: only the output is left to read
        _out, err = proc.communicate(timeout=900)
        codes[i] = (proc.returncode, err.strip().splitlines()[-3:])
    stop.set()
    timer.join()
    elapsed = time.monotonic() - started

    # What is stored, read back from the servers.
    report = {"chats": a.chats, "users": len(users), "messages_sent": sum(len(v) for v in sent.values()),
              "chat_exit_codes": sorted({c for c, _ in codes.values()}), "forget_all_exit": forget.returncode,
              "migrate_exit": migrate.returncode, "forget_all_said": forget.stderr.strip().splitlines()[-1:],
              "seconds": round(elapsed, 1)}
    stored_total = lost = duplicated = orphans = 0
    for user in users:
        r = _cli(["memory", "list", "--all", "--json"],
                 {**base, "PERSONAVLM_USER": user, "PERSONAVLM_HOME": str(root / "reader")})
        assert r.returncode == 0, r.stderr
        listing = json.loads(r.stdout)
        said = [m["text"] for m in listing if m["type"] == "turn" and m["role"] == "user"]
        ids = {m["id"] for m in listing}
        orphans += sum(1 for m in listing if m["type"] == "turn" and m["role"] == "assistant"
                       and not set(m.get("source_ids") or []) <= ids)
        duplicated += len(said) - len(set(said))
        stored_total += len(said)
        expected = [t for at, t in sent[user]] if user != erased_user else [t for at, t in sent[user] if at > forget_done]
        # (for the erased user, the messages sent after the erasure ended must be there; those sent while
        # it ran may or may not have been erased: both are correct; none may be there twice)
        lost += len([t for t in expected if t not in said])
        if user == erased_user:
            report["erased_user_kept"] = len(said)
    from tests.test_servers import collections

    collections_ok = 0
    vectors = collections(type("S", (), {"url": chroma_url_of(base)})())
    for user in users:
        r = _cli(["memory", "list", "--all", "--json"],
                 {**base, "PERSONAVLM_USER": user, "PERSONAVLM_HOME": str(root / "reader")})
        listing = {m["id"] for m in json.loads(r.stdout)}
        got = vectors.get(f"u-{user}-memories", set())
        collections_ok += listing <= got
    migrated = {}
    for name, _n in moved.items():
        r = _cli(["memory", "list", "--all", "--json"], {**mover, "PERSONAVLM_STORE_KIND": "server",
                                                        "PERSONAVLM_USER": name})
        migrated[name] = len(json.loads(r.stdout)) if r.returncode == 0 else r.stderr.strip()
    ms = sorted(x * 1000 for x in latencies)
    report.update({
        "messages_written": stored_total, "lost": lost, "duplicated": duplicated,
        "answers_without_their_message": orphans, "users_with_every_vector": f"{collections_ok}/{len(users)}",
        "migrated_memories": migrated, "timed_writes": len(ms),
        "write_latency_ms": {"p50": round(statistics.median(ms), 1), "p99": round(ms[int(0.99 * (len(ms) - 1))], 1),
                             "max": round(ms[-1], 1)},
        "chat_errors": {i: e for i, (c, e) in codes.items() if c != 0},
    })
    print(json.dumps(report, indent=2))
    if a.json:
        a.json.write_text(json.dumps(report, indent=2))
    return report


def chroma_url_of(env: dict) -> str:
    return env["PERSONAVLM_STORE_URL"]


if __name__ == "__main__":
    main()
