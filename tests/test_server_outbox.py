"""The vector outbox against real servers (docs/deploy.md, "When the server is down"; S10 and S19 of
docs/reliability.md's server fault matrix): a chat open while Chroma is stopped and started again
flushes its waiting vectors in the background (core/outbox.py), without the user typing anything, and
quits at once; `memory forget --query` with Chroma down says it matched by words only and erases the
records at once, the vectors pending (doctor) until Chroma is back.

A PostgreSQL cluster of this module's own and a Chroma server per test, on loopback.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.test_server_disk_full import Chat
from tests.test_server_faults import CHROMA, FAST, PG_BIN, Cluster, _psycopg_missing
from tests.test_servers import collections, start_chroma

pytestmark = [
    pytest.mark.slow,  # real servers in child processes
    pytest.mark.skipif(PG_BIN is None, reason="no PostgreSQL binaries (initdb, pg_ctl) on this machine"),
    pytest.mark.skipif(_psycopg_missing(), reason="psycopg missing: pip install -e '.[dev]'"),
    pytest.mark.skipif(not CHROMA.exists(), reason=f"no chroma console script at {CHROMA}"),
]


@pytest.fixture(scope="module")
def pg():
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="personavlm-outbox-"))
    server = Cluster(root / "pg").start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def chroma_server(tmp_path):
    server = start_chroma(tmp_path / "chroma")
    yield server
    server.stop()


def _env(tmp_path, pg, chroma, user: str, home: str = "home") -> dict:
    return {**FAST, "PERSONAVLM_STORE_KIND": "server", "PERSONAVLM_STORE_URL": chroma.url,
            "PERSONAVLM_STORE_DATABASE_URL": pg.url, "PERSONAVLM_USER": user, "PERSONAVLM_HOME": str(tmp_path / home)}


def _outbox(pg, user: str) -> tuple[int, int]:
    from personavlm_cli.adapters.pg_records import probe

    seen = probe(pg.url, user)
    return seen.get("vectors_waiting"), seen.get("erasures_pending")


def _listing(env) -> list[dict]:
    r = run_cli("memory", "list", "--all", "--json", env=env)
    assert r.code == 0, r.err
    return r.json()


def test_an_open_chat_flushes_the_outbox_when_chroma_is_back_without_a_word_and_quits_at_once(tmp_path, pg,
                                                                                                  chroma_server):
    user = "flush-" + uuid.uuid4().hex[:6]
    env = _env(tmp_path, pg, chroma_server, user)
    chat = Chat(env)
    try:
        assert chat.say("One: my bike is a green Gazelle.").strip()
        chroma_server.kill()
        assert chat.say("Two: my dog Rex hates the vacuum cleaner.").strip()  # answered from words and dates
        chat.wait_err("not reachable")
        assert _outbox(pg, user) == (2, 0)  # the message and its answer wait in the record store
        chroma_server.start(timeout=90)
        started = time.monotonic()
        while _outbox(pg, user) != (0, 0):  # nobody types: the chat's flusher writes them
            assert time.monotonic() - started < 60, "the outbox was not flushed within 60 s of Chroma's return"
            time.sleep(0.5)
        flushed_after = time.monotonic() - started
        assert chat.say("Three: and the chat goes on.").strip()
        chat.wait_err("The vector store is back: 2 waiting vectors written")
        # Chroma down again, and the chat quits while its flusher is backing off: quitting does not wait.
        chroma_server.kill()
        assert chat.say("Four: typed while it is down again.").strip()
        quit_started = time.monotonic()
        code, err = chat.close()
        quit_s = time.monotonic() - quit_started
    finally:
        if chat.proc.poll() is None:
            chat.proc.kill()
    print(f"flushed {flushed_after:.1f} s after Chroma was back; quit in {quit_s:.1f} s")
    assert code == 0, err
    assert "Traceback" not in err, err
    assert flushed_after < 30, flushed_after  # the backoff never waits more than 10 s between tries
    assert quit_s < 20, quit_s
    listed = {m["id"] for m in _listing(env)}
    assert len(listed) == 8 and _outbox(pg, user) == (2, 0)  # the last two wait for the next chat or command
    chroma_server.start(timeout=90)
    held = collections(chroma_server)[f"u-{user}-memories"]
    assert len(held) == 6 and held < listed  # every vector written while the chat was open


def test_forget_by_text_with_chroma_down_says_words_only_and_erases_the_records_at_once(tmp_path, pg, chroma_server):
    user = "fq-" + uuid.uuid4().hex[:6]
    env = _env(tmp_path, pg, chroma_server, user)
    r = run_cli("chat", "--no-update", env=env, input="/remember My locker code is 4417\n/remember I like figs\n")
    assert r.code == 0, r.err
    chroma_server.kill()
    r = run_cli("memory", "forget", "--query", "locker code", "--yes", env=env)
    assert r.code == 0, r.err
    said = " ".join(r.err.split())
    assert "is not reachable: connection refused" in said, r.err
    assert "running there?): matched by the words only, as --query always does" in said, r.err
    assert "Erased 1 memory" in said and "erased as soon as the vector store is reachable" in said, r.err
    assert "answering from words and dates" not in said  # no chat here: nothing is being answered
    assert "Traceback" not in r.err
    assert [m["text"] for m in _listing(env)] == ["I like figs"]  # the records: at once
    r = run_cli("doctor", "--no-load", env=env)
    assert r.code == 0 and "erasures pending       1" in r.out, r.out
    chroma_server.start(timeout=90)
    r = run_cli("chat", "--once", "hello", env=env)
    assert r.code == 0, r.err
    assert _outbox(pg, user) == (0, 0)
    listed = {m["id"] for m in _listing(env)}
    assert collections(chroma_server)[f"u-{user}-memories"] == listed


def test_personavlm_mcp_flushes_the_outbox_in_the_background_once_chroma_is_back(tmp_path, pg, chroma_server):
    """`personavlm mcp` over stdio (the SDK's client starts it as an MCP client would): a memory remembered while
    Chroma is down waits in the outbox; once Chroma is back, the open server writes its vector with no call."""
    import os
    import sys

    import anyio
    from mcp import Client, StdioServerParameters

    from tests.conftest import ROOT
    from tests.test_mcp import data

    user = "mcp-" + uuid.uuid4().hex[:6]
    env = _env(tmp_path, pg, chroma_server, user)
    full = {**{k: v for k, v in os.environ.items() if k.startswith(("HF_", "PATH", "HOME"))}, **env,
            "PYTHONPATH": str(ROOT), "ANONYMIZED_TELEMETRY": "False"}
    params = StdioServerParameters(command=sys.executable, args=["-m", "personavlm_cli", "mcp"], env=full,
                                   cwd=str(ROOT))
    seen: dict = {}

    async def main():
        async with Client(params) as client:
            data(await client.call_tool("remember", {"statement": "My dog is called Pistache."}))
            chroma_server.kill()
            kept = data(await client.call_tool("remember", {"statement": "My cat is called Miso."}))
            seen["waiting"] = _outbox(pg, user)
            await anyio.to_thread.run_sync(lambda: chroma_server.start(timeout=90))
            started = time.monotonic()
            while _outbox(pg, user) != (0, 0) and time.monotonic() - started < 60:
                await anyio.sleep(0.5)  # no call: the server's flusher does it
            seen["flushed_after"] = time.monotonic() - started
            seen["after"] = _outbox(pg, user)
            return kept

    kept = anyio.run(main)
    assert seen["waiting"][0] >= 1 and seen["waiting"][1] == 0, seen  # the memory (and what it made) wait
    assert seen["after"] == (0, 0), seen
    assert kept["id"] in collections(chroma_server)[f"u-{user}-memories"]
