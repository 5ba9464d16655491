"""Forgetting by text on a server store (issue 24, item 4): the records in a real PostgreSQL (started by
tests/test_two_homes.py's fixture), the vectors in a local index. After `plan_text`/`execute_text` no live
file of the user's tables holds the word, and the unrelated rest of the profile is still there."""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path

import pytest

from tests.kit import server_store
from tests.test_two_homes import PG_BIN, _psycopg_missing, postgres, servers_dir  # noqa: F401 - fixtures

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PG_BIN is None, reason="no PostgreSQL binaries (initdb, pg_ctl) on this machine"),
    pytest.mark.skipif(_psycopg_missing(), reason="psycopg missing: pip install -e '.[dev]'"),
]


def _table_files_holding(records, data: Path, word: bytes) -> list[str]:
    found = []
    for rel in records.db.execute(
            "SELECT pg_relation_filepath(c.oid) AS p FROM pg_class c JOIN pg_namespace n ON n.oid=c.relnamespace "
            "WHERE n.nspname=%s UNION SELECT pg_relation_filepath(c.reltoastrelid) FROM pg_class c JOIN "
            "pg_namespace n ON n.oid=c.relnamespace WHERE n.nspname=%s AND c.reltoastrelid <> 0",
            (records.schema, records.schema)).fetchall():
        path = data / rel["p"] if rel["p"] else None
        if path is not None and path.exists() and word.lower() in path.read_bytes().lower():
            found.append(str(path))
    return found


def test_forget_by_text_leaves_no_byte_in_the_server_tables(tmp_path, postgres):
    from personavlm_cli.core import forgetting
    from personavlm_cli.core.learning.learner import Learner
    from personavlm_cli.core.store import new_memory

    user = "forget-" + uuid.uuid4().hex[:8]
    store = server_store(tmp_path, postgres.url, user)  # the real parts (tests/kit)
    at = datetime(2026, 5, 1, 9).astimezone()
    learner = Learner(store)
    for i, text in enumerate(["My name is Iris Vega.", "I live in Valparaiso and I work as a baker.",
                              "My son Mateo loves the Valparaiso funicular.", "I like long walks."]):
        turn = new_memory("turn", text, at.replace(minute=i), role="user", session_id="s1")
        reply = new_memory("turn", f"Noted: {text}", at.replace(minute=i, second=30), role="assistant",
                           session_id="s1", source_ids=[turn.id])
        store.add([turn, reply])
        learner.learn_turn(turn)
    store.records.db.execute("CHECKPOINT")
    assert _table_files_holding(store.records, postgres.data, b"valparaiso")

    plan = forgetting.plan_text(store, "valparaiso")
    forgetting.execute_text(store, plan, "forget-query")
    store.records.db.execute("CHECKPOINT")
    assert _table_files_holding(store.records, postgres.data, b"valparaiso") == []
    assert forgetting.matching(store, "Valparaiso") == []
    facts = store.records.list(types=["core"])[-1].meta["facts"]
    assert facts.get("name") == "Iris Vega" and facts.get("occupation") == "baker" and "location" not in facts
    assert "son Mateo" in facts.get("family", "")
    assert [m.text for m in store.records.list(types=["turn"]) if m.role == "user"] == [
        "My name is Iris Vega.", "I like long walks."]
    store.close()
