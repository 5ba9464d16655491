"""The server store's rules that need no server (fast layer, in-process):

* users apart: the map from a user name to its PostgreSQL schema, its Chroma collections and its
  locks is injective (a property test over long, look-alike and unicode names), and the collision
  the former long form allowed (a 61-character name and the 53-character name its schema was cut
  to) is gone;
* what is safe to run again on a new PostgreSQL connection;
* the vector server down is a degraded mode: records are written, searches find nothing instead
  of failing, one notice, vector writes and erasures wait in the record store (the outbox) and are
  flushed by the first write that finds the server back.

The same faults against real servers are in tests/test_server_faults.py (slow layer).
"""

from __future__ import annotations

import hashlib
import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from personavlm_cli.adapters.pg_link import idempotent
from personavlm_cli.adapters.pg_schema import legacy_schema_for, schema_for
from personavlm_cli.cli.env import namespace
from personavlm_cli.core.errors import UserNameError
from personavlm_cli.core.users import validate_name
from tests.kit import fake_store

ALNUM = string.ascii_letters + string.digits
ALPHABET = ALNUM + "._-"
# Every collection name a user's store can use on a Chroma server (shards, marks, rebuild copies).
COLLECTIONS = [f"{base}{suffix}{extra}" for base in ("memories", "images")
               for suffix in ("", "_1", "_2", "_17") for extra in ("", ".rebuild")] + ["memories_dirty", "images_dirty"]


class _Records:
    def __init__(self, store_id: str):
        self._id = store_id

    def store_id(self) -> str:
        return self._id


def _names(user: str, store_id: str = "0123456789abcdef") -> set[str]:
    ns = namespace(user, _Records(store_id))
    return {ns + c for c in COLLECTIONS}


def _valid(name: str) -> bool:
    try:
        validate_name(name)
        return True
    except UserNameError:
        return False


names = st.builds(lambda first, rest: first + rest, st.sampled_from(ALNUM),
                  st.text(alphabet=ALPHABET, max_size=63)).filter(lambda n: ".." not in n)
long_names = st.builds(lambda first, rest: first + rest, st.sampled_from(ALNUM),
                       st.text(alphabet=ALPHABET, min_size=59, max_size=63)).filter(lambda n: ".." not in n)


def _look_alikes(name: str) -> list[str]:
    """Names a person would take for ``name``, and the forms the former mapping confused with it."""
    out = [name.swapcase(), name.lower(), name.upper(), name.replace("-", "_"), name.replace("_", "-"),
           name.replace(".", "_"), name.replace("l", "1"), name.replace("O", "0"), name[:-1], name + "x",
           name[:40], name[:35], name[:60]]
    legacy = legacy_schema_for(name)
    if legacy:
        out.append(legacy[3:])  # the 53-character name whose schema the long one used to get
    return [n for n in out if n and n != name and _valid(n)]


@example(a="a" * 20 + "b" * 41, b="")
@example(a="Z" * 64, b="")
@given(a=st.one_of(names, long_names), b=st.one_of(names, long_names))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
def test_distinct_names_never_share_a_schema_or_a_collection(a, b):
    for other in [b, *_look_alikes(a)]:
        if not other or other == a or not _valid(other):
            continue
        assert schema_for(a) != schema_for(other), (a, other)
        assert _names(a).isdisjoint(_names(other)), (a, other)


@given(name=st.one_of(names, long_names))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
def test_every_valid_name_maps_to_names_each_server_accepts(name):
    schema = schema_for(name)
    assert len(schema.encode()) <= 63  # PostgreSQL's identifier limit: never cut by the server
    assert '"' not in schema and "\x00" not in schema
    for full in _names(name):  # Chroma: 3-512 characters of [a-zA-Z0-9._-], alphanumeric at both ends
        assert 3 <= len(full) <= 512 and full[0].isalnum() and full[-1].isalnum(), full
        assert set(full) <= set(ALPHABET) and ".." not in full, full


@given(text=st.text(max_size=80))
@settings(max_examples=300, deadline=None)
def test_unicode_and_other_names_are_refused_or_plain_ascii(text):
    """A name with anything but ASCII letters, digits, '.', '-' and '_' never reaches a server: no
    Unicode look-alike (Cyrillic 'а' for Latin 'a', a full-width letter, a combining mark) can name a user."""
    if _valid(text):
        assert set(text) <= set(ALPHABET)
    else:
        with pytest.raises(UserNameError):
            validate_name(text)


def test_the_reported_collision_is_gone():
    long = "a" * 20 + "b" * 41  # 61 characters: too long for pv_<name>
    short = f"{long[:40]}_{hashlib.sha256(long.encode()).hexdigest()[:12]}"  # the 53-character name
    assert len(short) == 53 and _valid(short)
    assert legacy_schema_for(long) == f"pv_{short}"  # the former long form: the short name's own schema
    assert schema_for(short) == f"pv_{short}"
    assert schema_for(long).startswith("pv~") and schema_for(long) != schema_for(short)


def test_a_case_variant_never_opens_another_users_directory(tmp_path):
    """On a file system that ignores case, 'ann' would open the directory of 'Ann': refused."""
    from personavlm_cli.core.users import _same_name

    (tmp_path / "Ann").mkdir()
    _same_name(tmp_path / "Ann", "Ann")
    with pytest.raises(UserNameError, match="taken by 'Ann'"):
        _same_name(tmp_path / "ann", "ann")


@pytest.mark.parametrize("sql, safe", [
    ("SELECT value FROM meta WHERE key=%s", True),
    ("WITH q AS (SELECT 1) SELECT * FROM q", True),
    ("SELECT pg_try_advisory_lock(%s::int4, %s::int4) AS ok", True),
    ("UPDATE memories SET vector_state=1 WHERE id = ANY(%s)", True),
    ("DELETE FROM jobs WHERE id=%s", True),
    ("INSERT INTO meta VALUES(%s, %s) ON CONFLICT (key) DO UPDATE SET value=EXCLUDED.value", True),
    ("INSERT INTO images VALUES(%s,%s,%s,%s) ON CONFLICT (sha256) DO NOTHING", True),
    ("SET search_path TO x", True),
    ("INSERT INTO jobs(kind, payload, created_at) VALUES (%s,%s,%s) RETURNING id", False),
    ("INSERT INTO audit(at, operation, ids, count) VALUES (%s,%s,%s,%s)", False),
    ("WITH x AS (INSERT INTO audit VALUES (1) RETURNING id) SELECT * FROM x", False),
])
def test_what_is_run_again_on_a_new_connection(sql, safe):
    assert idempotent(sql) is safe


# -- the vector server down: a degraded mode ------------------------------------------------------------


@pytest.fixture
def degradable(tmp_path):
    """The kit's store with stand-in vectors on a server that can be switched off (``server["up"]``)."""
    server = {"up": True}
    store, index = fake_store(tmp_path, server)
    yield store, server, index
    store.close()


def _mem(text: str, minute: int):
    from personavlm_cli.core.store import new_memory

    return new_memory("semantic", text, f"2026-11-20T10:{minute:02d}:00+00:00")


def test_with_the_vector_server_down_records_go_on_and_vectors_wait_in_the_outbox(degradable):
    from personavlm_cli.core.store import TEXT

    store, server, index = degradable
    kept = _mem("Ann plays the cello", 0)
    store.add([kept])
    assert index.data[TEXT].keys() == {kept.id}
    server["up"] = False
    said, doomed = _mem("Ann moved to Porto", 1), kept
    store.add([said])  # no error: the record is written, its vector waits
    assert store.records.get(said.id) is not None
    assert [m.id for m in store.records.unembedded()] == [said.id]
    assert store.vectors.query(TEXT, [1.0, 0.0], 5) == []  # a search finds no vectors instead of failing
    store.erase([doomed.id], "forget-id")  # erasure: the records at once, the vectors when reachable
    assert store.records.get(doomed.id) is None
    assert store.pending_vectors() == (1, 1)
    notices = store.take_notices()
    assert len(notices) == 2 and "not reachable" in notices[0] and "answering from words and dates" in notices[0]
    assert "erased from the records" in notices[1]
    store.add([_mem("Ann has a cat", 2)])
    assert store.take_notices() == []  # one notice per outage, not one per write
    assert index.data[TEXT].keys() == {doomed.id}  # nothing reached the server meanwhile
    server["up"] = True
    store.vectors.retry_s = 0  # the gate asks the server again at once (10 s in real use)
    last = _mem("Ann likes figs", 3)
    store.add([last])  # the first write that finds the server back flushes the outbox
    assert index.data[TEXT].keys() == {said.id, last.id} | {m.id for m in store.records.list() if "cat" in m.text}
    assert doomed.id not in index.data[TEXT]
    assert store.pending_vectors() == (0, 0)
    assert any("vector store is back" in n for n in store.take_notices())


def test_the_gate_does_not_ask_a_down_server_again_before_its_retry_time(degradable):
    from personavlm_cli.core.store import TEXT

    store, server, index = degradable
    server["up"] = False
    calls = []
    real = index.query
    index.query = lambda *a, **k: calls.append(1) or real(*a, **k)
    store.add([_mem("one", 0)])  # marks the server down
    server["up"] = True
    assert store.vectors.query(TEXT, [1.0, 0.0], 5) == [] and calls == []  # within the retry time: not asked
    store.vectors.retry_s = 0
    assert store.vectors.query(TEXT, [1.0, 0.0], 5) == [] and calls == [1]  # asked again: up, (nothing embedded yet)
    assert store.vectors.back


# -- the outbox flushed in the background (core/outbox.py) ------------------------------------------


def _until(condition, seconds: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_the_background_flusher_empties_the_outbox_as_soon_as_the_server_is_back(degradable):
    import time

    from personavlm_cli.core import outbox
    from personavlm_cli.core.store import TEXT

    store, server, index = degradable
    kept = _mem("Ann plays the cello", 0)
    store.add([kept])
    server["up"] = False
    said = _mem("Ann moved to Porto", 1)
    store.add([said])
    store.erase([kept.id], "forget-id")
    assert store.pending_vectors() == (1, 1)
    store.take_notices()
    flusher = outbox.for_store(store, first=0.02, most=0.1, look=0.02).start()
    try:
        assert _until(lambda: flusher.tries >= 3)  # down: it keeps trying, with backoff, and says nothing more
        assert store.pending_vectors() == (1, 1) and store.take_notices() == []
        server["up"] = True  # nobody writes anything: the flusher alone finds it back
        assert _until(lambda: store.pending_vectors() == (0, 0))
        assert index.data[TEXT].keys() == {said.id}  # the waiting vector written, the erased one gone
        assert store.vectors_down is None
        assert _until(lambda: any("vector store is back: 1 waiting vector written, 1 vector erasure finished" in n
                                  for n in store.notices))
        server["up"] = False  # a second outage is told again, once
        store.add([_mem("Ann has a cat", 2)])
        assert len([n for n in store.take_notices() if "not reachable" in n]) == 1
        server["up"] = True
        assert _until(lambda: store.pending_vectors() == (0, 0))
    finally:
        started = time.monotonic()
        flusher.stop()
        assert time.monotonic() - started < 0.05  # quitting never waits for it
    assert _until(lambda: not flusher.alive, 2.0)


def test_the_flusher_backs_off_while_the_server_stays_down_and_sleeps_while_it_answers():
    import time

    from personavlm_cli.core.outbox import OutboxFlusher

    stamps: list[float] = []
    down = {"now": True}

    def step() -> bool:
        stamps.append(time.monotonic())
        return not down["now"]

    flusher = OutboxFlusher(step, lambda: down["now"], first=0.02, most=0.16, look=0.01).start()
    try:
        assert _until(lambda: len(stamps) >= 6)
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        assert gaps[0] < gaps[2] and max(gaps[:5]) < 0.16 + 0.1  # doubling, capped
        down["now"] = False
        assert _until(lambda: flusher.flushes == 1)
        n = len(stamps)
        time.sleep(0.2)
        assert len(stamps) == n  # the server answers: not asked again
    finally:
        flusher.stop()


def test_a_vector_written_for_a_memory_erased_meanwhile_is_deleted_again(degradable):
    from personavlm_cli.core.store import TEXT

    store, server, index = degradable
    server["up"] = False
    doomed = _mem("Ann's old address", 0)
    store.add([doomed])
    server["up"] = True
    store.vectors.ask_now()
    real = store._embed

    def embed_then_erased_elsewhere(memories):
        real(memories)  # the vector is written, then another process's forget deletes the record
        with store.records.transaction():
            store.records.delete([doomed.id])

    store._embed = embed_then_erased_elsewhere
    assert store.flush_outbox()
    assert doomed.id not in index.data.get(TEXT, {})


def test_a_kick_makes_the_flusher_try_even_when_nothing_is_watched():
    """`personavlm mcp` kicks its flusher when a call found the server down (it has no gate to watch)."""
    from personavlm_cli.core.outbox import OutboxFlusher

    answers = iter([False, False, True])
    flusher = OutboxFlusher(lambda: next(answers), lambda: False, first=0.01, most=0.02, look=0.01).start()
    try:
        assert _until(lambda: flusher.alive)
        import time

        time.sleep(0.05)  # idle: nothing watched, nothing kicked
        assert flusher.tries == 0
        flusher.kick()
        assert _until(lambda: flusher.tries >= 1)
    finally:
        flusher.stop()
    assert _until(lambda: not flusher.alive, 2.0)
