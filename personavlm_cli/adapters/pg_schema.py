"""A user's schema on the PostgreSQL server: its name (``schema_for``: an injective map of user names, and the
former long form a schema is adopted from), its tables (the shared schema of ``adapters/sql_records.py`` with
``memories`` and ``images`` hash-partitioned, full-text search columns, the BM25 counters and their trigger,
the lock holders), and the keys of its advisory locks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from personavlm_cli.adapters.sql_records import tables

# The memories and the images are split in hash partitions (by id, by sha256): a forget rewrites only
# the partitions that held what it erased (VACUUM FULL of a few thousand rows), not the whole store.
PARTITIONS = 64


def _partitioned(ddl: str) -> str:
    """The shared schema with ``memories`` and ``images`` as hash-partitioned tables (a partitioned
    table's unique keys must include its partition key: ``id`` is the key, ``rowid`` an ordered index)."""
    ddl = ddl.replace("CREATE TABLE IF NOT EXISTS memories(\n    rowid BIGSERIAL PRIMARY KEY,\n    id TEXT NOT NULL UNIQUE,",
                      "CREATE TABLE IF NOT EXISTS memories(\n    rowid BIGSERIAL NOT NULL,\n    id TEXT NOT NULL PRIMARY KEY,")
    ddl = ddl.replace("    data BYTEA NOT NULL,\n    created_at TEXT NOT NULL\n)",
                      "    data BYTEA NOT NULL,\n    created_at TEXT NOT NULL\n) PARTITION BY HASH (sha256)")
    head, sep, rest = ddl.partition("CREATE INDEX IF NOT EXISTS memories_type_time")
    head = head.rstrip()
    assert head.endswith(");") and sep, "the shared schema changed: update _partitioned"
    head = head[:-1] + " PARTITION BY HASH (id);\nCREATE INDEX IF NOT EXISTS memories_rowid ON memories(rowid);\n"
    parts = "".join(f"CREATE TABLE IF NOT EXISTS {table}_p{i} PARTITION OF {table} FOR VALUES WITH "
                    f"(MODULUS {PARTITIONS}, REMAINDER {i});\n"
                    for table in ("memories", "images") for i in range(PARTITIONS))
    return head + sep + rest + ";\n" + parts


def words(column: str) -> str:
    """SQL for the number of words in ``column`` as FTS5's unicode61 tokenizer counts them (runs of
    letters and digits, stop words included): the document length of BM25. Each run becomes one ``x``,
    and the length with them less the length without them is their count (regexp_count is PostgreSQL
    15+; this is any version). Not ``length(tsvector)``: that counts distinct lexemes without the stop
    words, and with it LoCoMo recall@10 through this store was 0.811 against the embedded store's 0.822
    (answers ranked 10th or 11th traded places); with the words, 0.821."""
    return (f"(length(regexp_replace({column}, '[[:alnum:]]+', 'x', 'g')) - "
            f"length(regexp_replace({column}, '[[:alnum:]]+', '', 'g')))")


def _length_columns() -> tuple[str, str]:
    return (f"text_len INTEGER GENERATED ALWAYS AS ({words('text')}) STORED",
            f"kw_len INTEGER GENERATED ALWAYS AS ({words('keywords')}) STORED")


TABLES = tables("BIGSERIAL PRIMARY KEY", "DOUBLE PRECISION", """,
    tsv tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english'::regconfig, text), 'A') ||
        setweight(to_tsvector('english'::regconfig, keywords), 'B')) STORED,
    """ + ",\n    ".join(_length_columns())) + """
CREATE INDEX IF NOT EXISTS memories_superseded_by ON memories(superseded_by);
CREATE INDEX IF NOT EXISTS memories_tsv ON memories USING GIN(tsv);
CREATE TABLE IF NOT EXISTS images(
    sha256 TEXT PRIMARY KEY,
    ext TEXT NOT NULL,
    data BYTEA NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS holders(
    lock TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    command TEXT NOT NULL,
    since TEXT NOT NULL
)
"""
TABLES = _partitioned(TABLES) + """
CREATE TABLE IF NOT EXISTS lexstats(
    one INTEGER PRIMARY KEY DEFAULT 1 CHECK (one = 1),
    n BIGINT NOT NULL DEFAULT 0,
    a_sum BIGINT NOT NULL DEFAULT 0,
    b_sum BIGINT NOT NULL DEFAULT 0
);
INSERT INTO lexstats(one) VALUES (1) ON CONFLICT DO NOTHING
"""

# BM25 needs the number of memories and their average lengths: kept up to date by a trigger, so a
# search never counts the whole store (run as one statement: its body has semicolons).
LEXSTATS_TRIGGER = ("""
CREATE OR REPLACE FUNCTION lexstats_track() RETURNS trigger AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE lexstats SET n = n - 1, a_sum = a_sum - OLD.text_len, b_sum = b_sum - OLD.kw_len;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        UPDATE lexstats SET n = n + 1, a_sum = a_sum + NEW.text_len, b_sum = b_sum + NEW.kw_len;
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql""",
    "CREATE TRIGGER memories_lexstats AFTER INSERT OR UPDATE OR DELETE ON memories "
    "FOR EACH ROW EXECUTE FUNCTION lexstats_track()")

# The meta key saying the BM25 lengths are words (``words``); a schema without it has the lengths in
# lexemes (before 2026-12) and ``LENGTHS_UPGRADE`` rewrites them once, at the first open that may write.
LENGTHS_KEY = "lexical_lengths"
LENGTHS_UPGRADE = (
    "ALTER TABLE memories DROP COLUMN text_len, DROP COLUMN kw_len",
    "ALTER TABLE memories " + ", ".join(f"ADD COLUMN {column}" for column in _length_columns()),
    "UPDATE lexstats SET n = (SELECT count(*) FROM memories), "
    "a_sum = (SELECT coalesce(sum(text_len), 0) FROM memories), "
    "b_sum = (SELECT coalesce(sum(kw_len), 0) FROM memories)",
)

# Small tables whose rows may name erased memories (ids, image paths): compact() rewrites them with the
# partitions that held the erased rows. (``meta`` holds no memory text: markers by id, settings.)
SMALL_TABLES = ("jobs", "audit")


def schema_for(user: str) -> str:
    """The user's schema. ``pv_<user>`` while that fits PostgreSQL's 63 bytes; a longer name (61 to 64
    characters) is ``pv~<its first 35 characters>~<24 hex digits of its SHA-256>``. A user name has no
    ``~`` (core/users.py), so no short form is ever a long one, and two long forms are equal only for a
    SHA-256 collision; every open also checks the schema's ``owner`` (a name never opens another's)."""
    name = f"pv_{user}"
    if len(name.encode()) <= 63:
        return name
    return f"pv~{user[:35]}~{hashlib.sha256(user.encode()).hexdigest()[:24]}"


def legacy_schema_for(user: str) -> str | None:
    """The schema a long name had before its long form changed (``pv_<first 40>_<12 hex>``, which a
    53-character name could also have): None for a name that fits."""
    if len(f"pv_{user}".encode()) <= 63:
        return None
    return f"pv_{user[:40]}_{hashlib.sha256(user.encode()).hexdigest()[:12]}"


def advisory_key(text: str) -> int:
    """A signed 64-bit advisory-lock key for ``text``."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


def lock_call(key: tuple, fn: str = "pg_try_advisory_lock") -> str:
    """The SQL call of ``fn`` for a key of one 64-bit or two 32-bit ints (PostgreSQL keeps the two
    kinds apart)."""
    return f"{fn}(%s::int8)" if len(key) == 1 else f"{fn}(%s::int4, %s::int4)"


def create_tables(execute: Callable[[str], Any]) -> None:
    """Create the tables, indexes and the BM25 trigger with ``execute(statement)``, in the schema the
    session's ``search_path`` names (inside the caller's transaction)."""
    for statement in TABLES.split(";"):
        if statement.strip():
            execute(statement)
    for statement in LEXSTATS_TRIGGER:
        execute(statement)
