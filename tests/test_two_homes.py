"""A store that lives on servers: PostgreSQL (the system of record) and a Chroma server (vectors).

A real PostgreSQL (``initdb`` + ``postgres`` on a free loopback port, as the ``postgres`` user when
the tests run as root, since initdb refuses root) and a real ``chroma run`` are started once for the
module and stopped in teardown. The contract tests run the SAME behaviour checks against the SQLite
record store and the PostgreSQL one; the end-to-end tests run the real CLI in two PERSONAVLM_HOMEs
pointed at the same server pair with the same user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import uuid
from datetime import UTC
from pathlib import Path

import pytest

from personavlm_cli.core.memory import Memory
from tests.conftest import assert_one_line_error, run_cli
from tests.test_servers import CHROMA, _free_port, start_chroma

PG_BIN = next((Path(p) for p in ["/usr/local/bin", *sorted(map(str, Path("/usr/lib/postgresql").glob("*/bin")))]
               if (Path(p) / "initdb").exists() and (Path(p) / "pg_ctl").exists()), None)


def _psycopg_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("psycopg") is None


pytestmark = [
    pytest.mark.slow,  # every test here uses servers started in child processes (PostgreSQL, Chroma)
    pytest.mark.skipif(PG_BIN is None, reason="no PostgreSQL binaries (initdb, pg_ctl) on this machine"),
    pytest.mark.skipif(_psycopg_missing(), reason="psycopg missing: pip install -e '.[dev]'"),
]


class Postgres:
    """A throw-away PostgreSQL cluster on 127.0.0.1:<free port>, trust auth on loopback only."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.port = _free_port()
        self.as_postgres = os.geteuid() == 0
        self.url = f"postgresql://personavlm@127.0.0.1:{self.port}/personavlm"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(PG_BIN / argv[0]), *argv[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120, cwd="/")

    def start(self) -> Postgres:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.as_postgres:
            pw = pwd.getpwnam("postgres")
            for p in (self.root, *self.root.parents):  # postgres must reach its data directory
                if p == Path("/") or str(p) == "/tmp":
                    break
                os.chmod(p, os.stat(p).st_mode | 0o711)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "personavlm", "--auth=trust", "-E", "UTF8",
                  "--no-instructions")
        opts = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "pg.log"), "-o", opts, "-w", "-t", "60",
                  "start")
        import psycopg

        with psycopg.connect(f"postgresql://personavlm@127.0.0.1:{self.port}/postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE personavlm")
        return self

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)


@pytest.fixture(scope="module")
def servers_dir():
    """The servers' data, outside pytest's base temp: a concurrent pytest run prunes old base temps,
    and would delete a running server's files."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="personavlm-two-homes-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres(servers_dir):
    server = Postgres(servers_dir / "pg").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chroma(servers_dir):
    if not CHROMA.exists():
        pytest.skip(f"no chroma console script at {CHROMA}")
    server = start_chroma(servers_dir / "chroma")
    yield server
    server.stop()


# --------------------------------------------------------------------------------------------------
# The record store contract: the same behaviour on SQLite (embedded) and PostgreSQL (server)
# --------------------------------------------------------------------------------------------------

def _mem(mid: str, text: str, day: int, *, type: str = "semantic", keywords: str = "", session: str | None = None,
         role: str | None = None, sources: list[str] | None = None, sha: str | None = None) -> Memory:
    return Memory(id=mid, type=type, text=text, keywords=keywords, occurred_at=f"2026-01-{day:02d}T10:00:00+00:00",
                  created_at="2026-02-01T00:00:00+00:00", session_id=session, role=role, source_ids=sources or [],
                  image_sha256=sha)


def _day(day: int) -> float:
    from datetime import datetime

    return datetime(2026, 1, day, 10, tzinfo=UTC).timestamp()


@pytest.fixture(params=["sqlite", "postgres"])
def make_records(request, tmp_path):
    """A factory of record stores of one user: ``make_records()`` opens it (again), as another process would."""
    opened = []
    if request.param == "sqlite":
        from personavlm_cli.adapters.records import RecordStore

        def make(readonly=False):
            opened.append(RecordStore(tmp_path / "u", readonly=readonly))
            return opened[-1]

        (tmp_path / "u").mkdir()
    else:
        from personavlm_cli.adapters.pg_records import PgRecordStore

        pg = request.getfixturevalue("postgres")
        user = "c" + uuid.uuid4().hex[:10]

        def make(readonly=False):
            opened.append(PgRecordStore(pg.url, user, readonly=readonly))
            return opened[-1]
    yield make
    for r in opened:
        r.close()


def test_contract_memories_listed_filtered_and_counted_alike(make_records):
    r = make_records()
    with r.transaction():
        r.insert([_mem("sem_b", "Bob likes chess", 3), _mem("sem_a", "Ada likes tea", 1),
                  _mem("epi_c", "A trip to Rome", 5, type="episodic"),
                  _mem("turn_1", "I like tea", 2, type="turn", session="s1", role="user"),
                  _mem("turn_2", "Noted", 2, type="turn", session="s1", role="assistant"),
                  _mem("turn_3", "Hello", 7, type="turn", session="s2", role="user")])
    assert [m.id for m in r.list()] == ["sem_a", "turn_1", "turn_2", "sem_b", "epi_c", "turn_3"]
    assert [m.id for m in r.list(limit=2, newest_first=True)] == ["turn_3", "epi_c"]
    assert [m.id for m in r.list(types=["semantic"])] == ["sem_a", "sem_b"]
    assert [m.id for m in r.list(since=_day(3), until=_day(5))] == ["sem_b", "epi_c"]
    assert [m.id for m in r.list(session_id="s1")] == ["turn_1", "turn_2"]
    assert r.count() == 6 and r.count(types=["turn"]) == 3
    assert r.get("sem_a").text == "Ada likes tea" and r.get("nope") is None
    assert [m.id for m in r.get_many(["epi_c", "missing", "sem_a"])] == ["epi_c", "sem_a"]
    assert r.turn_counts() == {"s1": 2, "s2": 1}
    assert r.filter_ids(["sem_a", "epi_c", "turn_1", "zzz"], types=["semantic", "turn"]) == {"sem_a", "turn_1"}
    rows = r.session_turns(["turn_2"])
    assert [row[0] for row in rows] == ["turn_1", "turn_2"] and all(row[1] == "s1" and row[4] for row in rows)
    assert [m.id for m in r.unembedded()] and len(r.unembedded(limit=2)) == 2
    r.mark_embedded(["sem_a", "sem_b", "epi_c", "turn_1", "turn_2", "turn_3"])
    assert r.unembedded() == []


def test_contract_supersede_update_provenance_alike(make_records):
    r = make_records()
    with r.transaction():
        r.insert([_mem("turn_1", "My dog is Rex", 1, type="turn", session="s", role="user", sha="ab" * 32),
                  _mem("sem_old", "Dog: Rex", 1, sources=["turn_1"]), _mem("sem_new", "Dog: Max", 2)])
        r.supersede("sem_old", "sem_new", "2026-01-02T10:00:00+00:00")
    assert [m.id for m in r.list(types=["semantic"])] == ["sem_new"]
    assert [m.id for m in r.list(types=["semantic"], include_superseded=True)] == ["sem_old", "sem_new"]
    assert r.count(types=["semantic"], include_superseded=False) == 1
    assert [m.id for m in r.superseded_by_any(["sem_new"])] == ["sem_old"]
    assert [m.id for m in r.derived_from(["turn_1"])] == ["sem_old"]
    assert r.has_current_besides(["sem_new"]) and not r.has_current_besides(["sem_new", "turn_1"])
    assert r.image_in_use("ab" * 32) and not r.image_in_use("cd" * 32)
    m = r.get("sem_new")
    m.text, m.meta = "Dog: Max the beagle", {"k": "v"}
    r.mark_embedded(["sem_new"])
    with r.transaction():
        r.update(m)
    again = make_records().get("sem_new")
    assert again.text == "Dog: Max the beagle" and again.meta == {"k": "v"}
    assert "sem_new" in {x.id for x in r.unembedded()}  # an update re-embeds


def test_contract_lexical_ranks_and_filters_alike(make_records):
    r = make_records()
    with r.transaction():
        r.insert([_mem("sem_1", "My cat Miso loves tuna", 1), _mem("sem_2", "The weather was cold", 2),
                  _mem("sem_3", "Tuna sandwich for lunch", 3, keywords="food"),
                  _mem("epi_1", "We adopted two cats last spring", 4, type="episodic")])
    hits = r.lexical("cat tuna", 10)
    ids = [i for i, _ in hits]
    assert ids[0] == "sem_1"  # both words
    assert set(ids) == {"sem_1", "sem_3", "epi_1"}  # "cats" matches "cat": stemming
    assert all(a[1] >= b[1] > 0 for a, b in zip(hits, hits[1:]))
    assert [i for i, _ in r.lexical("cat tuna", 10, types=["episodic"])] == ["epi_1"]
    assert [i for i, _ in r.lexical("tuna", 10, since=_day(2))] == ["sem_3"]
    assert [i for i, _ in r.lexical("food", 10)] == ["sem_3"]  # keywords are searched too
    assert r.lexical("!!! ?", 10) == [] and r.lexical("x", 10) == []
    assert len(r.lexical("cat tuna weather", 2)) == 2
    with r.transaction():
        r.supersede("sem_1", None, "2026-01-05T00:00:00+00:00")
    assert "sem_1" not in [i for i, _ in r.lexical("miso", 10)]
    assert [i for i, _ in r.lexical("miso", 10, include_superseded=True)] == ["sem_1"]


_BM25_TEXTS = [("m1", "I walked the dog in the park with my sister, and the dog was happy"),
               ("m2", "The dog is a good dog"), ("m3", "Park benches and a dog bowl"),
               ("m4", "My sister walks every morning before work"), ("m5", "Nothing to see here at all")]


def _bm25_scores(records) -> dict[str, float]:
    with records.transaction():
        records.insert([_mem(mid, text, n + 1) for n, (mid, text) in enumerate(_BM25_TEXTS)])
    return dict(records.lexical("dog park sister", 10))


def test_server_bm25_scores_are_fts5_scores_and_an_older_schema_is_upgraded(tmp_path, postgres):
    """PostgreSQL's BM25 gives FTS5's scores (document length in words, stop words included), so the
    server store ranks as the embedded one does; a schema written before (lengths in lexemes) is upgraded
    at its first writable open."""
    from personavlm_cli.adapters.pg_records import PgRecordStore
    from personavlm_cli.adapters.records import RecordStore

    (tmp_path / "u").mkdir()
    sqlite = RecordStore(tmp_path / "u")
    expected = _bm25_scores(sqlite)
    sqlite.close()
    assert len(expected) == 4 and len(set(round(v, 6) for v in expected.values())) == 4
    user = "b" + uuid.uuid4().hex[:10]
    r = PgRecordStore(postgres.url, user)
    got = _bm25_scores(r)
    assert got.keys() == expected.keys() and all(abs(got[i] - expected[i]) < 1e-6 for i in expected), (got, expected)
    # The schema as it was: lengths counted in distinct lexemes without the stop words, no marker.
    with r.transaction():
        r.db.execute("ALTER TABLE memories DROP COLUMN text_len, DROP COLUMN kw_len")
        r.db.execute("ALTER TABLE memories ADD COLUMN text_len INTEGER GENERATED ALWAYS AS "
                     "(length(to_tsvector('english'::regconfig, text))) STORED, ADD COLUMN kw_len INTEGER "
                     "GENERATED ALWAYS AS (length(to_tsvector('english'::regconfig, keywords))) STORED")
        r.db.execute("UPDATE lexstats SET a_sum = (SELECT sum(text_len) FROM memories)")
        r.db.execute("DELETE FROM meta WHERE key = 'lexical_lengths'")
    old = dict(r.lexical("dog park sister", 10))
    assert any(abs(old[i] - expected[i]) > 1e-3 for i in expected)  # the ranking this upgrade fixes
    r.close()
    reader = PgRecordStore(postgres.url, user, readonly=True)
    assert reader.get_meta("lexical_lengths") is None  # a reader does not write
    reader.close()
    r = PgRecordStore(postgres.url, user)
    again = dict(r.lexical("dog park sister", 10))
    assert all(abs(again[i] - expected[i]) < 1e-6 for i in expected), (again, expected)
    assert r.get_meta("lexical_lengths") == "words"
    r.close()


def test_contract_delete_compact_jobs_audit_personality_meta_alike(make_records):
    r = make_records()
    with r.transaction():
        r.insert([_mem("sem_1", "secret-zebra", 1), _mem("sem_2", "keep me", 2)])
    assert r.delete(["sem_1", "nope"]) == 1
    assert r.get_meta("compact_pending") is True
    r.compact()
    assert r.get_meta("compact_pending") is None and r.lexical("zebra", 5) == []
    j1 = r.add_job("turn", {"user": "turn_x"})
    j2 = r.add_job("vector_delete", {"ids": ["a"]})
    assert [j["id"] for j in r.jobs()] == [j1, j2] and [j["kind"] for j in r.pending_jobs()] == ["turn"]
    r.job_attempted(j1)
    assert r.jobs(["turn"])[0]["attempts"] == 1 and r.jobs(["turn"])[0]["payload"] == {"user": "turn_x"}
    r.finish_job(j1)
    assert [j["id"] for j in r.jobs()] == [j2]
    r.audit("forget", ["sem_1"])
    assert [(a["operation"], a["ids"], a["count"]) for a in r.audit_log()] == [("forget", ["sem_1"], 1)]
    rec = {"at": "2026-01-01T00:00:00+00:00", "turn_id": "turn_x", "m": 0, "lambda": 0.5,
           "inferred": {"openness": 0.7}, "before": {"openness": 0.5}, "after": {"openness": 0.6}, "note": "n"}
    r.add_personality(rec)
    assert r.personality_history() == [rec]
    r.set_meta("personality", {"openness": 0.6})
    sid = r.store_id()
    other = make_records()  # another process (another machine, for the server store)
    assert other.get_meta("personality") == {"openness": 0.6} and other.store_id() == sid
    assert other.get_meta("absent", 7) == 7
    assert [m.id for m in other.list()] == ["sem_2"]
    assert r.size_bytes() > 0


def test_contract_transaction_rolls_back_alike(make_records):
    r = make_records()
    with pytest.raises(RuntimeError), r.transaction():
        r.insert([_mem("sem_1", "half", 1)])
        r.add_job("turn", {})
        raise RuntimeError("killed")
    assert r.count() == 0 and r.jobs() == []
    with r.transaction():
        r.insert([_mem("sem_1", "whole", 1)])
    assert make_records(readonly=True).get("sem_1").text == "whole"


# --------------------------------------------------------------------------------------------------
# The PostgreSQL record store on its own
# --------------------------------------------------------------------------------------------------


def test_users_are_apart_and_machines_share_one_store(postgres):
    from personavlm_cli.adapters.pg_records import PgRecordStore

    a1, a2, b = (PgRecordStore(postgres.url, u) for u in ("ann-x", "ann-x", "bea-x"))
    try:
        with a1.transaction():
            a1.insert([_mem("sem_1", "Ann plays the cello", 1)])
        assert [m.id for m in a2.list()] == ["sem_1"]  # the other machine sees it at once
        assert b.list() == [] and b.lexical("cello", 5) == []
        assert a1.store_id() == a2.store_id() != b.store_id()
    finally:
        for r in (a1, a2, b):
            r.close()


def test_the_writer_lock_works_across_connections_and_names_its_holder(postgres):
    import socket

    from personavlm_cli.adapters.pg_records import PgRecordStore
    from personavlm_cli.core.errors import StoreBusyError

    one, two = PgRecordStore(postgres.url, "lock-x"), PgRecordStore(postgres.url, "lock-x")
    try:
        with one.exclusive("forget"):
            with one.exclusive("compact"):  # re-entrant in one process
                pass
            with pytest.raises(StoreBusyError) as caught, two.exclusive("migrate", wait=0.3):
                pass
            message = str(caught.value)
            assert "'forget'" in message and f"PID {os.getpid()}" in message and socket.gethostname() in message
        with two.exclusive("migrate", wait=0.3):  # released: the other one gets it
            pass
    finally:
        one.close()
        two.close()


def test_a_queued_job_is_claimed_by_one_machine_at_a_time(postgres):
    from personavlm_cli.adapters.pg_records import PgRecordStore

    one, two = PgRecordStore(postgres.url, "jobs-x"), PgRecordStore(postgres.url, "jobs-x")
    try:
        job = one.add_job("turn", {"user": "turn_1"})
        with one.claim_job(job) as mine:
            assert mine
            with two.claim_job(job) as theirs:
                assert not theirs  # the other machine skips it
            one.finish_job(job)
        with two.claim_job(job) as theirs:
            assert not theirs  # finished: nothing left to run
    finally:
        one.close()
        two.close()


def test_a_killed_holder_frees_the_lock(postgres):
    from personavlm_cli.adapters.pg_records import PgRecordStore
    from personavlm_cli.core.errors import StoreBusyError

    code = ("import sys, time; from personavlm_cli.adapters.pg_records import PgRecordStore; "
            f"r = PgRecordStore({postgres.url!r}, 'kill-x'); cm = r.exclusive('memory update'); cm.__enter__(); "
            "print('held', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    try:
        assert child.stdout.readline().strip() == "held"
        r = PgRecordStore(postgres.url, "kill-x")
        with pytest.raises(StoreBusyError, match=f"'memory update' by PID {child.pid}"):
            with r.exclusive("forget", wait=0.3):
                pass
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        with r.exclusive("forget", wait=10):  # the server ended the dead session and its lock
            pass
        r.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


def test_missing_user_unreachable_server_and_bad_url_are_one_line(postgres, tmp_path):
    from personavlm_cli.adapters.pg_records import PgRecordStore
    from personavlm_cli.core.errors import NotFoundError, StoreError

    with pytest.raises(NotFoundError, match="no memories yet"):
        PgRecordStore(postgres.url, "nobody-x", readonly=True)
    dead = f"postgresql://u:hunter2@127.0.0.1:{_free_port()}/db"
    with pytest.raises(StoreError) as caught:
        PgRecordStore(dead, "ann", connect_timeout=3)
    assert "cannot reach the record database postgresql://127.0.0.1:" in str(caught.value)
    assert "hunter2" not in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(StoreError, match="must be a postgresql://"):
        PgRecordStore("http://u:hunter2@host/db", "ann")


def test_compact_leaves_no_erased_text_in_the_table_files(postgres):
    """VACUUM FULL rewrites the table: the erased row's bytes are in no live file of the database."""
    from personavlm_cli.adapters.pg_records import PgRecordStore

    r = PgRecordStore(postgres.url, "erase-x")
    secret = "zanzibar-" + uuid.uuid4().hex
    with r.transaction():
        r.insert([_mem("sem_1", secret, 1), _mem("sem_2", "kept", 2)])
        r.put_image("ef" * 32, "png", secret.encode() * 3)
    r.db.execute("CHECKPOINT")

    def files_with_secret() -> list[str]:
        found = []
        # Every relation of the user's schema (the partitions, their indexes) and their TOAST tables.
        for rel in r.db.execute("SELECT pg_relation_filepath(c.oid) AS p FROM pg_class c JOIN pg_namespace n "
                                "ON n.oid=c.relnamespace WHERE n.nspname=%s UNION SELECT pg_relation_filepath("
                                "c.reltoastrelid) FROM pg_class c JOIN pg_namespace n ON n.oid=c.relnamespace "
                                "WHERE n.nspname=%s AND c.reltoastrelid <> 0", (r.schema, r.schema)).fetchall():
            if rel["p"] is None:
                continue
            path = postgres.data / rel["p"]
            if path.exists() and secret.encode() in path.read_bytes():
                found.append(str(path))
        return found

    assert files_with_secret()  # the test can see the text where it is
    with r.transaction():
        r.delete(["sem_1"])
        r.delete_image("ef" * 32)
    r.db.execute("CHECKPOINT")
    assert files_with_secret()  # deleted rows stay in the pages until the table is rewritten
    marked = r.get_meta("compact_parts")  # only the partitions that held them are rewritten
    assert len(marked) == 2 and {p.rsplit("_p", 1)[0] for p in marked} == {"memories", "images"}, marked
    r.compact()
    r.db.execute("CHECKPOINT")
    assert files_with_secret() == [] and [m.id for m in r.list()] == ["sem_2"]
    assert r.get_meta("compact_parts") is None and r.get_meta("compact_pending") is None
    r.close()


# --------------------------------------------------------------------------------------------------
# Two homes, one server pair, one user: the real CLI
# --------------------------------------------------------------------------------------------------

FAST = {"PERSONAVLM_MODEL_MAX_TOKENS": "32", "PERSONAVLM_MODEL_TEMPERATURE": "0"}


def _homes(tmp_path, postgres, chroma, user: str) -> tuple[dict, dict]:
    base = {**FAST, "PERSONAVLM_STORE_KIND": "server", "PERSONAVLM_STORE_URL": chroma.url,
            "PERSONAVLM_STORE_DATABASE_URL": postgres.url, "PERSONAVLM_USER": user}
    return {**base, "PERSONAVLM_HOME": str(tmp_path / "home-a")}, {**base, "PERSONAVLM_HOME": str(tmp_path / "home-b")}


def _listing(env) -> list[dict]:
    r = run_cli("memory", "list", "--all", "--json", env=env)
    assert r.code == 0, r.err
    return r.json()


def test_a_memory_written_in_one_home_is_listed_searched_used_and_forgotten_in_the_other(tmp_path, postgres, chroma):
    a, b = _homes(tmp_path, postgres, chroma, "pat")
    r = run_cli("chat", "--once", "My sister Ines lives in Lisbon and keeps honey bees.", "--at", "2026-11-20 10:00",
                "--no-update", env=a)
    assert r.code == 0, r.err
    said = next(m for m in _listing(a) if m["role"] == "user")
    assert said["text"] == "My sister Ines lives in Lisbon and keeps honey bees."
    # Home B has never seen this user: its user directory does not exist yet.
    assert not (tmp_path / "home-b" / "data" / "users" / "pat").exists()
    assert [m["id"] for m in _listing(b)] == [m["id"] for m in _listing(a)]  # listed
    r = run_cli("memory", "search", "Ines honey bees Lisbon", "--json", env=b)
    assert r.code == 0, r.err
    hits = r.json()
    assert hits[0]["id"] == said["id"]  # searched
    assert {"dense", "lexical"} <= set(hits[0]["signals"]), hits[0]["signals"]  # Chroma server + PostgreSQL FTS
    r = run_cli("chat", "--once", "Where does my sister Ines live?", "--at", "2026-11-20 11:30", "--no-update",
                "--show-reasoning", env=b)
    assert r.code == 0, r.err
    assert said["id"] in r.err  # used in the answer: recalled into B's prompt
    assert not (tmp_path / "home-b" / "data" / "users" / "pat" / "personavlm.db").exists()  # no local records
    # Forgotten from B: gone for A too, from the records, the full-text index and the vectors.
    r = run_cli("memory", "forget", said["id"], "--yes", env=b)
    assert r.code == 0, r.err
    assert said["id"] not in {m["id"] for m in _listing(a)}
    r = run_cli("memory", "search", "Ines honey bees Lisbon", "--json", env=a)
    assert r.code == 0, r.err
    assert said["id"] not in {h["id"] for h in r.json()} and "Lisbon and keeps honey" not in r.out
    from tests.test_servers import collections

    assert said["id"] not in collections(chroma).get("u-pat-memories", set())
    from personavlm_cli.adapters.pg_records import PgRecordStore

    records = PgRecordStore(postgres.url, "pat", readonly=True)
    try:
        assert records.get(said["id"]) is None and records.get_meta("compact_pending") is None  # vacuumed
        assert [e["operation"] for e in records.audit_log()] == ["forget-id"]
    finally:
        records.close()


def test_users_rm_on_another_machine_erases_the_user_from_both_servers(tmp_path, postgres, chroma):
    a, b = _homes(tmp_path, postgres, chroma, "gone")
    r = run_cli("chat", "--once", "My locker code is 4417.", "--at", "2026-11-20 10:00", "--no-update", env=a)
    assert r.code == 0, r.err
    from tests.test_servers import collections

    assert any(k.startswith("u-gone-") for k in collections(chroma))
    # Home B never opened this user: no directory there, the data is the servers'.
    r = run_cli("users", "rm", "gone", "--yes", env=b)
    assert r.code == 0, r.err
    assert not any(k.startswith("u-gone-") for k in collections(chroma))  # every vector collection
    import psycopg

    with psycopg.connect(postgres.url) as db:
        assert db.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'pv_gone'").fetchone() is None
    r = run_cli("memory", "list", "--json", env=a)  # home A sees the user gone from the servers too
    assert r.code != 0 and "no memories" in r.err.lower(), (r.code, r.err)
    r = run_cli("users", "rm", "gone", "--yes", env=b)
    assert r.code != 0 and "unknown user" in r.err


def test_two_homes_chatting_at_once_lose_nothing(tmp_path, postgres, chroma):
    a, b = _homes(tmp_path, postgres, chroma, "duo")
    said = {"a": [f"Note from the laptop number {i}: the kettle is blue {i}" for i in range(3)],
            "b": [f"Note from the desktop number {i}: the lamp is green {i}" for i in range(3)]}
    procs = {}
    for name, env in (("a", a), ("b", b)):
        full = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **env}
        procs[name] = subprocess.Popen([sys.executable, "-m", "personavlm_cli", "chat", "--no-update"],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, env=full, cwd=Path(__file__).parent.parent)
    results = {name: p.communicate("\n".join(said[name]) + "\n", timeout=600) for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, results[name][1]
    listing = _listing(b)
    user_turns = [m["text"] for m in listing if m["type"] == "turn" and m["role"] == "user"]
    assert sorted(user_turns) == sorted(said["a"] + said["b"])  # every message of both, once
    assistant_turns = [m for m in listing if m["type"] == "turn" and m["role"] == "assistant"]
    assert len(assistant_turns) == 6
    assert [m["id"] for m in _listing(a)] == [m["id"] for m in listing]
    from tests.test_servers import collections

    assert collections(chroma)["u-duo-memories"] == {m["id"] for m in listing}  # every vector too


def _png(path: Path, colour: tuple) -> Path:
    from PIL import Image

    Image.new("RGB", (32, 24), colour).save(path)
    return path


def test_migrate_embedded_to_server_and_back_verified_and_refusing_to_overwrite(tmp_path, postgres, chroma):
    import hashlib

    import yaml

    urls = {**FAST, "PERSONAVLM_STORE_URL": chroma.url, "PERSONAVLM_STORE_DATABASE_URL": postgres.url,
            "PERSONAVLM_USER": "mig"}
    home = {**urls, "PERSONAVLM_HOME": str(tmp_path / "laptop")}
    picture = _png(tmp_path / "boat.png", (10, 80, 200))
    r = run_cli("chat", "--once", "This is my boat, the Albatross.", "--attach", str(picture), "--at",
                "2026-11-20 10:00", "--no-update", env=home)
    assert r.code == 0, r.err
    r = run_cli("chat", "--no-update", "--at", "2026-11-20 10:05", env=home,
                input="/remember I sail every Sunday on Lake Geneva\n")
    assert r.code == 0, r.err
    before = _listing(home)
    assert any(m["type"] == "image" for m in before) and len(before) >= 4
    udir = tmp_path / "laptop" / "data" / "users" / "mig"

    r = run_cli("store", "migrate", "--to", "server", "--json", env=home)
    assert r.code == 0, r.err
    report = r.json()
    assert report["memories"] == len(before) and report["images"] == 1 and report["verified"]
    config = yaml.safe_load((tmp_path / "laptop" / "config.yaml").read_text())
    assert config["store"]["kind"] == "server"
    assert not (udir / "personavlm.db").exists() and list(udir.glob("before-migration-*/personavlm.db"))
    after = _listing(home)  # now read from PostgreSQL
    assert after == before
    other = {**urls, "PERSONAVLM_HOME": str(tmp_path / "desktop"), "PERSONAVLM_STORE_KIND": "server"}
    assert _listing(other) == before  # another machine sees the migrated memories
    r = run_cli("memory", "search", "Albatross boat", "--json", env=other)
    assert r.code == 0, r.err and any(h["type"] == "image" or "Albatross" in h["text"] for h in r.json())
    from personavlm_cli.adapters.pg_records import PgRecordStore

    records = PgRecordStore(postgres.url, "mig", readonly=True)
    try:
        image = next(m for m in before if m["type"] == "image")
        _ext, data = records.image_blob(image["image_sha256"])
        assert hashlib.sha256(data).hexdigest() == image["image_sha256"] == hashlib.sha256(picture.read_bytes()).hexdigest()
    finally:
        records.close()

    # A third home with its own embedded memories of the same user name: refused, nothing changed.
    third = {**urls, "PERSONAVLM_HOME": str(tmp_path / "tablet")}
    r = run_cli("chat", "--no-update", env=third, input="/remember A different life\n")
    assert r.code == 0, r.err
    r = run_cli("store", "migrate", "--to", "server", env=third)
    assert_one_line_error(r, "already holds", "refusing to overwrite")
    assert _listing(other) == before

    # And back: the server's memories into this home's embedded store, verified the same way.
    r = run_cli("store", "migrate", "--to", "embedded", "--json", env=home)
    assert r.code == 0, r.err
    assert r.json()["memories"] == len(before)
    assert yaml.safe_load((tmp_path / "laptop" / "config.yaml").read_text())["store"]["kind"] == "embedded"
    assert (udir / "personavlm.db").exists()
    assert _listing(home) == before
    r = run_cli("memory", "search", "sail Sunday Lake Geneva", "--json", env=home)
    assert r.code == 0, r.err
    assert r.json()[0]["text"] == "I sail every Sunday on Lake Geneva"
    assert (udir / "images").is_dir() and list((udir / "images").glob("*/*.png"))
    r = run_cli("store", "migrate", "--to", "embedded", env=home)  # the same migration again: nothing to do
    assert r.code == 0, r.err
    r = run_cli("chat", "--no-update", env=home, input="/remember Back home again\n")
    assert r.code == 0, r.err
    r = run_cli("store", "migrate", "--to", "embedded", env=home)  # this home's store is in use now
    assert_one_line_error(r, "already holds", "refusing to overwrite")
    assert len(_listing(home)) == len(before) + 1


def test_a_migration_killed_midway_resumes_and_verifies(tmp_path, postgres, chroma):
    from personavlm_cli.adapters.records import RecordStore

    home = {**FAST, "PERSONAVLM_STORE_URL": chroma.url, "PERSONAVLM_STORE_DATABASE_URL": postgres.url,
            "PERSONAVLM_USER": "resume", "PERSONAVLM_HOME": str(tmp_path / "h")}
    udir = tmp_path / "h" / "data" / "users" / "resume"
    udir.mkdir(parents=True, mode=0o700)
    records = RecordStore(udir)
    with records.transaction():
        records.insert([_mem(f"sem_{i:04d}", f"fact number {i} about the garden", 1 + i % 28) for i in range(600)])
    records.close()
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **home}
    child = subprocess.Popen([sys.executable, "-m", "personavlm_cli", "store", "migrate", "--to", "server",
                              "--batch", "50"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                             env=full, cwd=Path(__file__).parent.parent)
    try:
        for text in child.stderr:
            if "memories 150/600" in text:
                child.send_signal(signal.SIGKILL)  # killed in the middle of copying
                break
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
    from personavlm_cli.adapters.pg_records import PgRecordStore

    pg = PgRecordStore(postgres.url, "resume", readonly=True)
    partial = pg.count()
    pg.close()
    assert 150 <= partial < 600
    assert (udir / "personavlm.db").exists()  # nothing switched
    r = run_cli("store", "migrate", "--to", "server", "--batch", "50", "--json", env=home)
    assert r.code == 0, r.err
    assert "Resuming the interrupted migration" in r.err and r.json()["memories"] == 600
    listed = _listing({**home, "PERSONAVLM_STORE_KIND": "server"})
    assert sorted(m["id"] for m in listed) == [f"sem_{i:04d}" for i in range(600)]


def test_server_store_errors_are_one_line_and_hide_the_password(tmp_path, chroma):
    dead = f"postgresql://pat:hunter2@127.0.0.1:{_free_port()}/personavlm"
    env = {"PERSONAVLM_STORE_KIND": "server", "PERSONAVLM_STORE_URL": chroma.url,
           "PERSONAVLM_STORE_DATABASE_URL": dead, "PERSONAVLM_USER": "err"}
    r = run_cli("memory", "list", env=env)
    assert_one_line_error(r, "cannot reach the record database postgresql://127.0.0.1:")
    assert "hunter2" not in r.err
    r = run_cli("config", "show", "--json", env=env)
    assert r.code == 0 and "hunter2" not in r.out and "pat:***@" in r.out
    r = run_cli("memory", "list", env={**env, "PERSONAVLM_STORE_DATABASE_URL": "mysql://x@h/db"})
    assert_one_line_error(r, "store.database_url", "postgresql://")
    r = run_cli("store", "migrate", "--to", "server", env={"PERSONAVLM_USER": "err"})
    assert_one_line_error(r, "store migrate needs store.url and store.database_url")


LOCOMO_DEV = next((p for p in (Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "locomo" / "locomo-dev.json",
                               Path("/work/shared/data/locomo/locomo-dev.json")) if p.exists()), None)


@pytest.mark.skipif(LOCOMO_DEV is None, reason="the LoCoMo development split (shared/data/locomo) is not here")
def test_locomo_recall_through_the_server_store_is_within_001_of_embedded(postgres, chroma, monkeypatch):
    """The same replay and questions, once with the embedded store and once with PostgreSQL (full-text
    search for the lexical signal) and the Chroma server: recall@10 within 0.01."""
    from personavlm_cli.adapters.image_store import ServerImages
    from personavlm_cli.adapters.pg_records import PgRecordStore
    from personavlm_cli.adapters.vectors import VectorIndex
    from personavlm_cli.cli.env import namespace
    from personavlm_cli.core.store import MemoryStore
    from personavlm_cli.evals import locomo as lc

    plan = lc.plan_questions(lc.load(LOCOMO_DEV), None)  # the whole development split
    weights = lc.recall_weights(None, None, "score")
    embedded = lc.run(LOCOMO_DEV, plan, k=10, weights=weights, fusion="score", candidates=None)

    def server_store(path, text_encoder, image_encoder=None):
        user = "locomo-" + uuid.uuid4().hex[:8]
        built = {}
        store = MemoryStore(path, text_encoder=lambda: text_encoder, image_encoder=lambda: None,
                            vectors=lambda: VectorIndex(url=chroma.url, namespace=namespace(user, built["s"].records)),
                            records=lambda readonly=False: PgRecordStore(postgres.url, user, readonly=readonly),
                            images=ServerImages(Path(path) / ServerImages.CACHE))
        built["s"] = store
        return store

    monkeypatch.setattr(lc, "temporary_store", server_store)
    server = lc.run(LOCOMO_DEV, plan, k=10, weights=weights, fusion="score", candidates=None)
    assert server["questions"] == embedded["questions"] > 50
    assert "lexical" in server["signals_seen"] and "dense" in server["signals_seen"]
    print(f"\nLoCoMo dev recall@10: embedded {embedded['recall_at_k']['overall']}, server {server['recall_at_k']['overall']}"
          f"; recall ms mean embedded {embedded['timings']['recall_ms_mean']}, server {server['timings']['recall_ms_mean']}")
    assert abs(server["recall_at_k"]["overall"] - embedded["recall_at_k"]["overall"]) <= 0.01


def test_an_image_from_one_home_is_exported_from_the_other_and_doctor_shows_where_records_live(
        tmp_path, postgres, chroma):
    import hashlib
    import json
    import zipfile

    a, b = _homes(tmp_path, postgres, chroma, "pic")
    picture = _png(tmp_path / "red.png", (200, 20, 20))
    r = run_cli("chat", "--once", "My red kite", "--attach", str(picture), "--at", "2026-11-20 10:00", "--no-update",
                env=a)
    assert r.code == 0, r.err
    r = run_cli("memory", "search", "red kite", "--json", env=b)  # B opens the user (its cache is empty)
    assert r.code == 0, r.err
    assert not list((tmp_path / "home-b").rglob("*.png"))
    r = run_cli("memory", "export", str(tmp_path / "b.pvm"), env=b)
    assert r.code == 0, r.err
    with zipfile.ZipFile(tmp_path / "b.pvm") as z:
        names = [n for n in z.namelist() if n.startswith("images/")]
        assert len(names) == 1 and hashlib.sha256(z.read(names[0])).hexdigest() == \
            hashlib.sha256(picture.read_bytes()).hexdigest()
    secret = {**b, "PERSONAVLM_STORE_DATABASE_URL": postgres.url.replace("personavlm@", "personavlm:s3cret@")}
    r = run_cli("doctor", "--no-load", "--json", env=secret)
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["records"].startswith(f"postgresql://127.0.0.1:{postgres.port}/personavlm (PostgreSQL")
    assert report["records check"] == "reachable" and "s3cret" not in r.out
