"""The server store's fault matrix (docs/reliability.md, "Server faults"), against real servers.

A PostgreSQL cluster of this module's own (the tests restart it, kill it, cut its network) and Chroma
servers started per test where a test stops one, all on loopback, as tests/test_two_homes.py starts
them. Each fault is replayed on the real CLI (a chat in a child process, fed one line at a time) or on
the record store itself, and each test checks that nothing is lost and that what is said is true.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, assert_one_line_error, run_cli
from tests.kit import server_store
from tests.test_servers import CHROMA, start_chroma
from tests.test_two_homes import PG_BIN, Postgres, _psycopg_missing

pytestmark = [
    pytest.mark.slow,  # real servers in child processes
    pytest.mark.skipif(PG_BIN is None, reason="no PostgreSQL binaries (initdb, pg_ctl) on this machine"),
    pytest.mark.skipif(_psycopg_missing(), reason="psycopg missing: pip install -e '.[dev]'"),
    pytest.mark.skipif(not CHROMA.exists(), reason=f"no chroma console script at {CHROMA}"),
]

FAST = {"PERSONAVLM_MODEL_MAX_TOKENS": "16", "PERSONAVLM_MODEL_TEMPERATURE": "0", "PERSONAVLM_MEMORY_UPDATE": "false"}


class Cluster(Postgres):
    """The module's PostgreSQL, with the faults: stop, start, restart, kill -9 of the postmaster."""

    def options(self) -> str:
        return (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                "-c fsync=off")

    def down(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def up(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "pg.log"), "-o", self.options(), "-w",
                  "-t", "60", "start")

    def restart(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "pg.log"), "-o", self.options(), "-m",
                  "fast", "-w", "-t", "60", "restart")

    def kill9(self) -> None:
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        os.kill(pid, 9)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # its backends notice the postmaster died and exit
            if not any(Path(f"/proc/{c}").exists() for c in [str(pid), *children]):
                break
            time.sleep(0.2)

    def drop_connections(self) -> None:
        import psycopg

        with psycopg.connect(f"postgresql://personavlm@127.0.0.1:{self.port}/personavlm", autocommit=True) as c:
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
                      "'personavlm' AND pid <> pg_backend_pid()")


@pytest.fixture(scope="module")
def servers_root():
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="personavlm-faults-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg(servers_root):
    server = Cluster(servers_root / "pg").start()
    yield server
    server.stop()


@pytest.fixture
def chroma_server(tmp_path):
    server = start_chroma(tmp_path / "chroma")
    yield server
    server.stop()


def _env(tmp_path, pg, chroma, user: str, **extra) -> dict:
    return {**FAST, "PERSONAVLM_STORE_KIND": "server", "PERSONAVLM_STORE_URL": chroma.url,
            "PERSONAVLM_STORE_DATABASE_URL": pg.url, "PERSONAVLM_USER": user,
            "PERSONAVLM_HOME": str(tmp_path / "home"), **extra}


def _listing(env) -> list[dict]:
    r = run_cli("memory", "list", "--all", "--json", env=env)
    assert r.code == 0, r.err
    return r.json()


def _said(env) -> list[str]:
    return [m["text"] for m in _listing(env) if m["type"] == "turn" and m["role"] == "user"]


class Chat:
    """``personavlm chat`` in a child process, fed one line at a time (a scripted chat: stdin is a pipe)."""

    def __init__(self, env: dict):
        full = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **env}
        self.proc = subprocess.Popen([sys.executable, "-m", "personavlm_cli", "chat", "--no-update"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=full, cwd=ROOT, bufsize=1)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for text in self.proc.stdout:
            self.lines.put(text)

    def say(self, text: str, wait: float = 240) -> str:
        """Send a line; the answer's first line (the answer ends its line)."""
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.lines.get(timeout=wait)

    def send(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def close(self, timeout: float = 300) -> tuple[int, str]:
        self.proc.stdin.close()
        self.proc.wait(timeout)
        return self.proc.returncode, self.proc.stderr.read()


# --------------------------------------------------------------------------------------------------
# PostgreSQL: restart, outage, kill -9, dropped connections
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["restart", "outage", "kill -9", "dropped connection"])
def test_a_chat_open_across_a_postgresql_fault_goes_on_and_loses_no_message(tmp_path, pg, chroma_server, fault):
    env = _env(tmp_path, pg, chroma_server, "pg-" + fault.replace(" ", "").replace("-", ""))
    chat = Chat(env)
    try:
        assert chat.say("First: my bike is a green Gazelle.").strip()
        if fault == "restart":
            pg.restart()
            chat.say("Second: said after the restart.")
        elif fault == "outage":
            pg.down()
            chat.send("Second: typed while the server is down.")
            time.sleep(3)  # the chat waits for the server (store.retry_seconds, 30 s by default)
            pg.up()
            assert chat.lines.get(timeout=240).strip()  # the answer comes once the server is back
        elif fault == "kill -9":
            pg.kill9()
            pg.up()
            chat.say("Second: said after the crash.")
        else:
            pg.drop_connections()
            chat.say("Second: said after the connection was dropped.")
        chat.say("Third: and the chat goes on.")
        code, err = chat.close()
    finally:
        if chat.proc.poll() is None:
            chat.proc.kill()
    assert code == 0, err
    assert "Traceback" not in err and "not stored" not in err, err
    said = _said(env)
    assert len(said) == 3 and said[0].startswith("First") and said[1].startswith("Second") and said[2].startswith("Third"), said
    answers = [m for m in _listing(env) if m["type"] == "turn" and m["role"] == "assistant"]
    assert len(answers) == 3  # every answer stored once, none twice


def test_postgresql_down_longer_than_the_wait_is_one_line_per_message_and_the_rest_is_stored(tmp_path, pg,
                                                                                             chroma_server):
    env = _env(tmp_path, pg, chroma_server, "pg-longdown", PERSONAVLM_STORE_RETRY_SECONDS="2")
    chat = Chat(env)
    try:
        chat.say("One: before the outage.")
        pg.down()
        chat.send("Two: typed while the server stays down.")
        time.sleep(8)  # longer than the 2 s the store waits
        pg.up()
        chat.say("Three: after the outage.")
        code, err = chat.close()
    finally:
        if chat.proc.poll() is None:
            chat.proc.kill()
        if not (pg.data / "postmaster.pid").exists():
            pg.up()
    assert code == 1, err  # a scripted chat with a line not stored exits 1
    errors = [ln for ln in err.replace("\n ", " ").splitlines() if "not stored" in ln]  # (a wrapped line joined)
    assert len(errors) == 1 and errors[0].startswith("Error: line 2 not stored"), err
    assert "is not reachable (Connection refused); waited 2 s" in errors[0], errors[0]
    assert "Traceback" not in err
    assert sorted(_said(env)) == ["One: before the outage.", "Three: after the outage."]


class Proxy:
    """A TCP proxy to PostgreSQL whose connections can be cut (a network drop) or black-holed."""

    def __init__(self, port: int):
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.accepting = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.accepting:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        for a, b in self.pairs:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
        self.pairs.clear()

    def close(self) -> None:
        self.listener.close()
        self.cut()


def _mem(mid: str, text: str):
    from personavlm_cli.core.memory import Memory

    return Memory(id=mid, type="semantic", text=text, occurred_at="2026-01-01T10:00:00+00:00",
                  created_at="2026-01-01T10:00:00+00:00")


def test_a_network_drop_is_ridden_out_and_a_dead_link_is_one_line_within_the_wait(pg):
    from personavlm_cli.adapters.pg_records import PgRecordStore
    from personavlm_cli.core.errors import UnreachableError

    proxy = Proxy(pg.port)
    url = f"postgresql://personavlm@127.0.0.1:{proxy.port}/personavlm"
    store = PgRecordStore(url, "net-drop", retry_s=5)
    try:
        with store.transaction():
            store.insert([_mem("sem_1", "before the drop")])
        with store.exclusive("forget"):
            proxy.cut()  # the network drops while the writer lock is held
            assert [m.id for m in store.list()] == ["sem_1"]  # read again on a new connection
            with store.transaction():
                store.insert([_mem("sem_2", "after the drop")])
            other = PgRecordStore(pg.url, "net-drop")
            try:  # the lock was taken back on the new connection: another process still waits
                from personavlm_cli.core.errors import StoreBusyError

                with pytest.raises(StoreBusyError), other.exclusive("migrate", wait=0.3):
                    pass
            finally:
                other.close()
        assert store.reconnects >= 1 and store.count() == 2
        proxy.accepting = False
        proxy.cut()
        started = time.monotonic()
        with pytest.raises(UnreachableError) as caught:
            store.list()
        assert time.monotonic() - started < 30  # bounded: 5 s of retries, each connect bounded too
        assert "not reachable" in str(caught.value) and "\n" not in str(caught.value)
    finally:
        store.close()
        proxy.close()
    check = PgRecordStore(pg.url, "net-drop", readonly=True)
    try:
        assert sorted(m.id for m in check.list()) == ["sem_1", "sem_2"]  # nothing lost, nothing twice
    finally:
        check.close()


def test_wrong_credentials_a_missing_database_and_a_newer_schema_are_one_line(tmp_path, pg, chroma_server):
    env = _env(tmp_path, pg, chroma_server, "pg-newer")
    bad_role = {**env, "PERSONAVLM_STORE_DATABASE_URL":
                f"postgresql://nobody:hunter2@127.0.0.1:{pg.port}/personavlm"}
    r = run_cli("memory", "list", env=bad_role)
    assert_one_line_error(r, "record database")
    assert "hunter2" not in r.err and "nobody" in r.err
    no_db = {**env, "PERSONAVLM_STORE_DATABASE_URL": f"postgresql://personavlm@127.0.0.1:{pg.port}/missing"}
    assert_one_line_error(run_cli("memory", "list", env=no_db), "does not exist")
    r = run_cli("chat", "--once", "I keep bees.", env=env)
    assert r.code == 0, r.err
    import psycopg

    with psycopg.connect(pg.url, autocommit=True) as c:
        c.execute('UPDATE "pv_pg-newer".meta SET value = %s WHERE key = %s', ("99", "format_version"))
    for argv in (["memory", "list"], ["chat", "--once", "hello"]):
        assert_one_line_error(run_cli(*argv, env=env), "format 99", "newer", "upgrade personavlm")
    r = run_cli("doctor", "--no-load", env=env)
    assert r.code == 0 and "format 99 (newer than this personavlm's 1" in r.out, r.out


# --------------------------------------------------------------------------------------------------
# Users apart on the server
# --------------------------------------------------------------------------------------------------


def test_a_long_name_and_the_53_character_name_its_schema_was_cut_to_are_apart(pg, monkeypatch):
    import hashlib

    import personavlm_cli.adapters.pg_records as pgr
    from personavlm_cli.core.errors import StoreError

    long = "L" + uuid.uuid4().hex[:8] + "x" * 52  # 61 characters
    short = f"{long[:40]}_{hashlib.sha256(long.encode()).hexdigest()[:12]}"  # 53 characters
    # A store made by the former version: the long name in its former schema (no owner recorded).
    monkeypatch.setattr(pgr, "schema_for", pgr.legacy_schema_for)
    old = pgr.PgRecordStore(pg.url, long)
    with old.transaction():
        old.insert([_mem("sem_1", "the long user's secret")])
    old.db.execute("DELETE FROM meta WHERE key = 'owner'")
    old.close()
    monkeypatch.undo()
    a = pgr.PgRecordStore(pg.url, long)  # adopts its former schema under the new name
    b = pgr.PgRecordStore(pg.url, short)
    try:
        assert a.schema != b.schema and a.schema.startswith("pv~")
        assert [m.text for m in a.list()] == ["the long user's secret"]
        assert b.list() == [] and b.lexical("secret", 5) == []
        with b.transaction():
            b.insert([_mem("sem_2", "the short user's own")])
        assert [m.id for m in a.list()] == ["sem_1"]
        assert a._lock_key() != b._lock_key()
        with a.exclusive("forget"):  # one user's writer lock never blocks the other's
            with b.exclusive("forget", wait=0.3):
                pass
    finally:
        a.close()
        b.close()
    # A schema that names another owner is refused, whatever mapped a name to it.
    import psycopg

    with psycopg.connect(pg.url, autocommit=True) as c:
        c.execute(f'UPDATE "pv_{short}".meta SET value = %s WHERE key = %s', (json.dumps("mallory"), "owner"))
    with pytest.raises(StoreError, match="belongs to user 'mallory'"):
        pgr.PgRecordStore(pg.url, short, readonly=True)


# --------------------------------------------------------------------------------------------------
# Chroma down: a degraded mode
# --------------------------------------------------------------------------------------------------


def test_with_chroma_down_chat_forget_and_import_go_on_and_the_outbox_is_flushed_when_it_is_back(
        tmp_path, pg, chroma_server):
    from tests.test_servers import collections

    env = _env(tmp_path, pg, chroma_server, "vec-down")
    r = run_cli("chat", "--once", "My cat Miso loves tuna.", "--at", "2026-11-20 10:00", env=env)
    assert r.code == 0, r.err
    miso = next(m for m in _listing(env) if m["role"] == "user")
    r = run_cli("memory", "export", str(tmp_path / "a.pvm"), env=env)
    assert r.code == 0, r.err
    chroma_server.kill()
    r = run_cli("chat", "--once", "My dog Rex hates the vacuum cleaner.", "--at", "2026-11-20 10:05", env=env)
    assert r.code == 0, r.err  # the answer comes, with one notice
    assert r.out.strip()
    notes = [ln for ln in r.err.splitlines() if "not reachable" in ln]
    assert len(notes) == 1 and "answering from words and dates only" in r.err.replace("\n", " "), r.err
    assert "Rex" in " ".join(_said(env))  # stored
    r = run_cli("memory", "search", "cat tuna", "--json", env=env)  # words still find it
    assert r.code == 0 and miso["id"] in {h["id"] for h in r.json()}, r.err
    r = run_cli("memory", "forget", miso["id"], "--yes", env=env)
    assert r.code == 0, r.err
    assert "Erased" in r.err and "erased as soon as the vector store is reachable" in r.err.replace("\n", " ")
    assert miso["id"] not in {m["id"] for m in _listing(env)}  # the records: at once
    other = {**env, "PERSONAVLM_USER": "vec-import"}
    r = run_cli("memory", "import", str(tmp_path / "a.pvm"), env=other)
    assert r.code == 0, r.err  # the import committed, and says the vectors wait
    assert "Imported 2 memories" in r.err and "not reachable" in r.err, r.err
    r = run_cli("doctor", "--no-load", env=env)
    assert r.code == 0, r.err
    report = r.out
    assert "vector server          DOWN" in report and "servers down           vector server (Chroma)" in report
    assert "vectors waiting        2" in report and "erasures pending       2" in report, report
    # Back: the next command that reaches it flushes the outbox, the user does nothing else.
    chroma_server.start(timeout=90)
    r = run_cli("chat", "--once", "What is my dog called?", "--at", "2026-11-20 10:15", env=env)
    assert r.code == 0, r.err
    r = run_cli("doctor", "--no-load", env=env)
    assert "vectors waiting        0" in r.out and "erasures pending       0" in r.out, r.out
    listed = {m["id"] for m in _listing(env)}
    held = collections(chroma_server)
    assert held["u-vec-down-memories"] == listed  # every waiting vector written, the erased one gone
    assert miso["id"] not in held["u-vec-down-memories"]


# --------------------------------------------------------------------------------------------------
# A home moves whole
# --------------------------------------------------------------------------------------------------


def test_store_migrate_moves_every_user_of_the_home_and_a_user_left_behind_is_told_so(tmp_path, pg, chroma_server):
    base = {**FAST, "PERSONAVLM_STORE_URL": chroma_server.url, "PERSONAVLM_STORE_DATABASE_URL": pg.url}
    whole = {**base, "PERSONAVLM_HOME": str(tmp_path / "whole")}
    part = {**base, "PERSONAVLM_HOME": str(tmp_path / "part")}
    for home, names in ((whole, ("w-ann", "w-bob")), (part, ("p-ann", "p-bob"))):
        for name in names:
            r = run_cli("chat", "--no-update", env={**home, "PERSONAVLM_USER": name},
                        input=f"/remember {name} keeps a red notebook\n")
            assert r.code == 0, r.err
    before = {n: _listing({**whole, "PERSONAVLM_USER": n}) for n in ("w-ann", "w-bob")}
    r = run_cli("store", "migrate", "--to", "server", "--json", env={**whole, "PERSONAVLM_USER": "w-ann"})
    assert r.code == 0, r.err
    report = r.json()
    assert set(report["users"]) == {"w-ann", "w-bob"} and report["left_in_the_other_store"] == []
    for name in ("w-ann", "w-bob"):  # both read from the server now, neither looks empty
        assert _listing({**whole, "PERSONAVLM_USER": name}) == before[name] != []
    # --user moves one: the other is told where their memories are, by every command, in one line.
    r = run_cli("store", "migrate", "--to", "server", "--user", "p-ann", env={**part, "PERSONAVLM_USER": "p-ann"})
    assert r.code == 0, r.err
    assert "Still in the embedded store of this home: p-bob" in r.err.replace("\n", " ")
    bob = {**part, "PERSONAVLM_USER": "p-bob"}
    for argv in (["memory", "list"], ["memory", "search", "notebook"], ["chat", "--once", "hello"],
                 ["memory", "forget", "--all", "--yes"]):
        assert_one_line_error(run_cli(*argv, env=bob), "p-bob", "embedded store",
                              "store migrate --to server --user p-bob")
    r = run_cli("store", "migrate", "--to", "server", "--user", "p-bob", env=bob)
    assert r.code == 0, r.err
    assert [m["text"] for m in _listing(bob)] == ["p-bob keeps a red notebook"]
    # And back, one user: the other, still on the server, is told so by the embedded home.
    r = run_cli("store", "migrate", "--to", "embedded", "--user", "p-ann", env={**part, "PERSONAVLM_USER": "p-ann"})
    assert r.code == 0, r.err
    assert_one_line_error(run_cli("memory", "list", env=bob), "p-bob", "server store",
                          "store migrate --to embedded --user p-bob")


# --------------------------------------------------------------------------------------------------
# Several homes at once: a dropped collection, an answer to an erased message
# --------------------------------------------------------------------------------------------------


def test_a_home_recovers_when_another_drops_or_rebuilds_a_collection_it_holds(chroma_server):
    from personavlm_cli.adapters.vectors import VectorIndex

    ns = f"u-drop-{uuid.uuid4().hex[:8]}-"
    chatting, forgetting = VectorIndex(url=chroma_server.url, namespace=ns), VectorIndex(url=chroma_server.url, namespace=ns)
    chatting.upsert("memories", ["a", "b"], [[1.0, 0.0], [0.0, 1.0]])
    forgetting.delete("memories", ["a"])
    forgetting.purge(["memories"])  # the collection the chatting home holds is replaced by a rebuilt copy
    chatting.upsert("memories", ["c"], [[1.0, 1.0]])  # was: "does not exist" at every later write
    assert chatting.ids("memories") == {"b", "c"} and [i for i, _ in chatting.query("memories", [1.0, 1.0], 1)] == ["c"]
    forgetting.drop(["memories"])  # `forget --all` / `users rm` elsewhere: the collection is gone
    chatting.upsert("memories", ["d"], [[1.0, 1.0]])
    assert chatting.ids("memories") == {"d"} and chatting.count("memories") == 1


def test_no_answer_is_stored_whose_message_another_home_erased(tmp_path, pg):
    from personavlm_cli.core.memory import Memory

    user = "src-" + uuid.uuid4().hex[:6]

    def home(name):  # two homes of one user: the records shared, no vectors, no encoder
        return server_store(tmp_path / name, pg.url, user, vectors=lambda: None, text_encoder=False)

    def turn(mid, role, text, sources=()):
        return Memory(id=mid, type="turn", text=text, role=role, session_id="s1", source_ids=list(sources),
                      occurred_at="2026-11-20T10:00:00+00:00", created_at="2026-11-20T10:00:00+00:00")

    a, b = home("a"), home("b")
    try:
        # 1. The message is erased before its answer is written: the answer is not stored.
        a.add([turn("turn_u1", "user", "my secret code is 4417")], embed=False)
        with b.records.transaction():
            b.records.delete(["turn_u1"])
        assert a.add([turn("turn_a1", "assistant", "your code is 4417", ["turn_u1"])], embed=False,
                     sources=["turn_u1"]) is False
        assert a.records.get("turn_a1") is None
        # 2. The answer is written after another home planned its erasure of the message: the erasure
        #    takes the answer too (no vector store involved here: it is down, the deletions are queued).
        a.add([turn("turn_u2", "user", "my locker is 12")], embed=False)
        planned = ["turn_u2"]  # what `forget --all` listed in home B
        assert a.add([turn("turn_a2", "assistant", "locker 12", ["turn_u2"])], embed=False, sources=["turn_u2"])
        from personavlm_cli.core.errors import UnreachableError

        def down():
            raise UnreachableError("the vector store is not reachable: test")
        b._vectors_factory = down
        erased = b.erase(planned, "forget-all")
        assert set(erased) == {"turn_u2", "turn_a2"}
        assert a.records.get("turn_a2") is None and a.records.count() == 0
    finally:
        a.close()
        b.close()


def test_a_load_run_of_concurrent_chats_a_migrate_and_a_forget_all_loses_nothing():
    """scripts/load_servers.py, small (docs/benchmarks.md has the figures of the full run): several homes
    chatting at once, a migration and a `forget --all` of a chatting user, on one server pair."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("load_servers", ROOT / "scripts" / "load_servers.py")
    load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load)
    report = load.main(["--chats", "4", "--messages", "3", "--pause", "3"])
    assert report["chat_exit_codes"] == [0] and report["chat_errors"] == {}
    assert report["forget_all_exit"] == 0 and report["migrate_exit"] == 0
    assert report["lost"] == 0 and report["duplicated"] == 0 and report["answers_without_their_message"] == 0
    assert report["users_with_every_vector"] == "2/2"
    assert report["migrated_memories"] == {"movera": 20, "moverb": 20}
    assert report["messages_written"] >= report["messages_sent"] - 2 * 3  # only the erased user's may be gone


# --------------------------------------------------------------------------------------------------
# What docs/deploy.md says of a server down when a command starts
# --------------------------------------------------------------------------------------------------


def test_a_command_started_while_postgresql_is_down_stops_at_once_with_one_line(tmp_path, pg, chroma_server):
    env = _env(tmp_path, pg, chroma_server, "pg-startdown", PERSONAVLM_STORE_RETRY_SECONDS="30")
    r = run_cli("chat", "--once", "I keep bees.", env=env)
    assert r.code == 0, r.err
    pg.down()
    try:
        for argv in (["memory", "list"], ["chat", "--once", "hello"]):
            started = time.monotonic()
            r = run_cli(*argv, env=env)
            took = time.monotonic() - started
            assert_one_line_error(r, "cannot reach the record database", "connection refused")
            assert took < 25, took  # not the 30 s an open store waits for a lost connection
    finally:
        pg.up()
    assert _said(env) == ["I keep bees."]


def test_store_migrate_with_chroma_down_stops_with_one_line_and_switches_nothing(tmp_path, pg, chroma_server):
    home = {**FAST, "PERSONAVLM_HOME": str(tmp_path / "home"), "PERSONAVLM_USER": "mig-down",
            "PERSONAVLM_STORE_URL": chroma_server.url, "PERSONAVLM_STORE_DATABASE_URL": pg.url}
    r = run_cli("chat", "--no-update", env=home, input="/remember I keep a red notebook\n")
    assert r.code == 0, r.err
    chroma_server.kill()
    r = run_cli("store", "migrate", "--to", "server", env=home)
    assert r.code != 0 and "Traceback" not in r.err, r.err
    last = " ".join(r.err.split()).rpartition("Error: ")[2]
    assert last.startswith("the vector store at") and "is not reachable" in last, r.err
    assert "every memory needs its vector before the switch: nothing switched" in last, r.err
    assert [m["text"] for m in _listing(home)] == ["I keep a red notebook"]  # still the embedded store
    r = run_cli("config", "show", "--json", env=home)
    assert next(s["value"] for s in r.json() if s["key"] == "store.kind") == "embedded"
