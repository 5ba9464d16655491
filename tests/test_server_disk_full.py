"""S14 of docs/reliability.md's server fault matrix: the PostgreSQL server's disk fills up.

Replayed against a real PostgreSQL 15 (started by this module, as tests/test_server_faults.py does) whose
user database lives in a **tablespace on a small tmpfs** mounted by the test: when the tmpfs is full,
every write that needs a new page fails inside the server with ENOSPC, which PostgreSQL reports as
SQLSTATE 53100 ``could not extend file …: No space left on device``, exactly what a full disk under a
real cluster gives (the same write(2) error, the same error path in the server). It is not simulated
with ``ulimit -f``: a file-size limit makes write(2) fail with EFBIG, which PostgreSQL reports as an
internal error (XX000), not as a full disk. The WAL stays on the (not full) data directory, as a
separate WAL volume would; ``mount -o remount,size=…`` gives the space back, as an admin freeing space.

Autovacuum is off in this cluster: a truncation of empty trailing pages would give space back behind the
test's back. Mounting needs CAP_SYS_ADMIN (root in this container has it); where the mount is refused the module is
skipped with that reason.
"""

from __future__ import annotations

import os
import pwd
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, assert_one_line_error, run_cli
from tests.test_server_faults import CHROMA, FAST, PG_BIN, Cluster, _psycopg_missing
from tests.test_servers import start_chroma

pytestmark = [
    pytest.mark.slow,  # real servers in child processes
    pytest.mark.skipif(PG_BIN is None, reason="no PostgreSQL binaries (initdb, pg_ctl) on this machine"),
    pytest.mark.skipif(_psycopg_missing(), reason="psycopg missing: pip install -e '.[dev]'"),
    pytest.mark.skipif(not CHROMA.exists(), reason=f"no chroma console script at {CHROMA}"),
]

SMALL = 40  # MiB of the tmpfs: the copy of template1 (about 8 MiB) and the user's schema fit, then it is filled


class SmallDisk:
    """A tmpfs of ``size`` MiB at ``path``, owned by the server's user; ``grow`` gives space back."""

    def __init__(self, path: Path, owner: str | None):
        self.path = path
        self.owner = owner

    def mount(self, size: int) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        opts = f"size={size}m,mode=0700"
        if self.owner:
            pw = pwd.getpwnam(self.owner)
            opts += f",uid={pw.pw_uid},gid={pw.pw_gid}"
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(self.path)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs to fill (needs CAP_SYS_ADMIN): {r.stderr.strip()}")

    def grow(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}m", str(self.path)], check=True, capture_output=True)

    def umount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture(scope="module")
def full_pg():
    """A cluster whose database ``personavlm_small`` lives on a small tmpfs; yields (cluster, url, disk)."""
    import shutil
    import tempfile

    import psycopg

    root = Path(tempfile.mkdtemp(prefix="personavlm-diskfull-"))
    pg = Cluster(root / "pg").start()
    disk = SmallDisk(root / "small", "postgres" if pg.as_postgres else None)
    try:
        disk.mount(SMALL)
        with psycopg.connect(pg.url, autocommit=True) as c:
            # No autovacuum: a truncation of empty trailing pages would give space back behind the test's
            # back (a write meant to meet the full disk could then succeed).
            c.execute("ALTER SYSTEM SET autovacuum = off")
            c.execute("SELECT pg_reload_conf()")
            c.execute(f"CREATE TABLESPACE small LOCATION '{disk.path}'")
            c.execute("CREATE DATABASE personavlm_small TABLESPACE small")
        yield pg, f"postgresql://personavlm@127.0.0.1:{pg.port}/personavlm_small", disk
    finally:
        pg.stop()
        disk.umount()
        shutil.rmtree(root, ignore_errors=True)


def bulky(text: str) -> str:
    """``text`` and 4 KiB of incompressible words: its row must go out of line (TOAST) into a table that
    holds no such row yet, so it needs a new page whatever room the pages written so far have left (a
    short row could land in a partition's existing page, and the full disk would go unnoticed)."""
    import secrets

    return text + " " + " ".join(secrets.token_hex(8) for _ in range(240))


def fill(url: str) -> None:
    """Fill the tablespace: uncompressed rows until the server says the disk is full (1 MiB, then 8 KiB,
    then 100-byte rows, so that no page of the filler is left with room)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS public.filler(x text)")
        c.execute("ALTER TABLE public.filler ALTER x SET STORAGE EXTERNAL")
        for size in (1 << 20, 8000, 100):
            for _ in range(100000):
                try:
                    c.execute("INSERT INTO public.filler SELECT string_agg(md5(random()::text), '') FROM "
                              "generate_series(1, %s)", (size // 32,))
                except psycopg.errors.DiskFull:
                    break
            else:
                raise AssertionError("the small disk never filled up")


def free(url: str, disk: SmallDisk) -> None:
    """Space comes back: the disk grows (as when an admin frees space or resizes the volume)."""
    disk.grow(SMALL * 4)


class Chat:
    """``personavlm chat`` in a child process fed one line at a time; stdout and stderr read as they come."""

    def __init__(self, env: dict):
        full = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **env}
        self.proc = subprocess.Popen([sys.executable, "-m", "personavlm_cli", "chat", "--no-update"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=full, cwd=ROOT, bufsize=1)
        self.out: queue.Queue = queue.Queue()
        self.err: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.out.put), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.err.append), daemon=True).start()

    @staticmethod
    def _read(stream, put) -> None:
        for text in stream:
            put(text)

    def send(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def say(self, text: str, wait: float = 240) -> str:
        self.send(text)
        return self.out.get(timeout=wait)

    def wait_err(self, needle: str, wait: float = 240) -> str:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            for line in list(self.err):
                if needle in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {needle!r} on stderr: {''.join(self.err)}")

    def close(self, timeout: float = 300) -> tuple[int, str]:
        self.proc.stdin.close()
        self.proc.wait(timeout)
        time.sleep(0.2)
        return self.proc.returncode, "".join(self.err)


def _listing(env) -> list[dict]:
    r = run_cli("memory", "list", "--all", "--json", env=env)
    assert r.code == 0, r.err
    return r.json()


def test_a_full_disk_on_the_postgresql_server_is_one_line_and_nothing_is_lost(tmp_path, full_pg):
    pg, url, disk = full_pg
    chroma = start_chroma(tmp_path / "chroma")
    env = {**FAST, "PERSONAVLM_STORE_KIND": "server", "PERSONAVLM_STORE_URL": chroma.url,
           "PERSONAVLM_STORE_DATABASE_URL": url, "PERSONAVLM_USER": "disk-full", "PERSONAVLM_HOME": str(tmp_path / "home")}
    chat = None
    try:
        r = run_cli("chat", "--once", "Zero: my boat is called Saltire.", env=env)  # the schema, before the fill
        assert r.code == 0, r.err
        chat = Chat(env)
        assert chat.say("One: before the disk fills.").strip()
        fill(url)
        # The open chat: the message's line says the server cannot write, in one line; the chat goes on.
        chat.send(bulky("Two: typed while the disk is full."))
        line = chat.wait_err("line 2")
        assert line.startswith("Error: line 2 not stored: no space left on the record database server"), line
        assert "nothing was lost" in line
        # A command started now on another machine (another home): one line, exit 1, nothing written.
        other = {**env, "PERSONAVLM_HOME": str(tmp_path / "home2")}
        r = run_cli("chat", "--once", bulky("Three: a one-shot while the disk is full."), env=other)
        assert_one_line_error(r, "no space left on the record database server", "nothing was lost")
        r = run_cli("chat", "--no-update", env=other, input="/remember " + bulky("I keep my spare key under the blue pot") + "\n")
        # (a slash command's error is its line; the scripted chat goes on: see cli/chat.py)
        assert_one_line_error(type(r)(1, r.out, r.err), "Error: no space left on the record database server")
        zero = next(m for m in _listing(env) if m["text"].startswith("Zero"))
        r = run_cli("memory", "forget", zero["id"], "--yes", env=other)
        assert r.code == 1 and "Traceback" not in r.err, r.err  # (what it would erase is listed first)
        last = " ".join(r.err.split()).rpartition("Error: ")[2]
        kept = ["Zero: my boat is called Saltire."]
        if zero["id"] in {m["id"] for m in _listing(env)}:  # the erasure failed whole (it needs new rows): said so
            assert last.startswith("no space left on the record database server"), r.err
        else:  # its rows fitted pages with room left: the erasure stands, its rewrite waits, and it says so
            assert last.startswith("the memories are erased, but the record database server"), r.err
            kept = []
        # Reading still works while the disk is full.
        said = [m["text"] for m in _listing(env) if m["type"] == "turn" and m["role"] == "user"]
        assert said == [*kept, "One: before the disk fills."], said
        # Space comes back: the same chat goes on, the next line is stored with its answer.
        free(url, disk)
        assert chat.say("Four: after space came back.").strip()
        code, err = chat.close()
        assert code == 1, err  # a scripted chat with a line not stored exits 1
        assert "Traceback" not in err, err
        assert len([ln for ln in err.splitlines() if "not stored" in ln]) == 1, err
    finally:
        if chat is not None and chat.proc.poll() is None:
            chat.proc.kill()
        chroma.stop()
    listing = _listing(env)
    said = [m["text"] for m in listing if m["type"] == "turn" and m["role"] == "user"]
    assert said == [*kept, "One: before the disk fills.", "Four: after space came back."]
    answers = [m for m in listing if m["type"] == "turn" and m["role"] == "assistant"]
    ids = {m["id"] for m in listing}
    assert len(answers) == len(said) and all(set(a["source_ids"]) <= ids for a in answers)  # nothing half-written
    assert not any("spare key" in m["text"] for m in listing)


def empty(url: str) -> None:
    """Space comes back another way: the filler is dropped (its files are emptied at the commit; a DROP, unlike
    a TRUNCATE, needs no new catalog row, so it runs on a full disk)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS public.filler")
        c.execute("CHECKPOINT")


def test_an_erasure_whose_rewrite_finds_the_disk_full_says_so_and_the_rewrite_runs_when_space_is_back(full_pg):
    from personavlm_cli.adapters.pg_records import PgRecordStore
    from personavlm_cli.core.errors import DiskFullError
    from personavlm_cli.core.memory import Memory

    pg, url, _disk = full_pg
    empty(url)
    store = PgRecordStore(url, "disk-compact")
    try:
        with store.transaction():  # live rows in every partition: a rewrite needs room for their copy
            store.insert([Memory(id=f"sem_{i}", type="semantic", text=f"fact {i} " + "lorem ipsum " * 150,
                                 occurred_at="2026-01-01T10:00:00+00:00", created_at="2026-01-01T10:00:00+00:00")
                          for i in range(400)])
        store.compact()
        with store.transaction():  # the erasure commits while there is room
            store.delete(["sem_7"])
        fill(url)
        with pytest.raises(DiskFullError) as caught:
            store.compact()  # VACUUM FULL of the partition that held it: no room for the copy
        said = str(caught.value)
        assert "\n" not in said and said.startswith("the memories are erased, but the record database server")
        assert "the next command does it once space is freed" in said
        assert store.get("sem_7") is None and store.count() == 399  # the erasure stands; nothing else moved
        assert store.get_meta("compact_pending") and store.get_meta("compact_parts")
    finally:
        store.close()
    again = PgRecordStore(url, "disk-compact")  # a command opens while the disk is still full: it works
    try:
        assert again.count() == 399 and again.get_meta("compact_pending")
    finally:
        again.close()
    empty(url)
    done = PgRecordStore(url, "disk-compact")  # space is back: the open finishes the rewrite
    try:
        assert not done.get_meta("compact_pending") and done.get_meta("compact_parts") is None
        assert done.count() == 399
    finally:
        done.close()
