"""What the two record stores share: the rows of a memory and the SQL that is the same on SQLite
(``adapters/records.py``) and PostgreSQL (``adapters/pg_records.py``).

:class:`SqlRecords` implements every method of the ``RecordStore`` port (``core/ports.py``) whose SQL
is the same on both engines but for the parameter placeholder and the way a list of ids is matched;
each store gives those through a few small hooks and keeps to itself only what really differs
(connections, transactions, full-text search, locks, schema, compaction, sizes).
"""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from personavlm_cli.core.memory import Memory, from_iso, iso, now

FORMAT_VERSION = 1

def tables(key: str, real: str, memory_columns: str = "") -> str:
    """The tables and indexes both engines have, as ``;``-ended statements in the engine's types:
    ``key`` an auto-numbered primary key, ``real`` a float; ``memory_columns`` more columns of
    ``memories`` (each line starting ``,``). Each store adds its own (full-text search, images, locks)."""
    return f"""
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS memories(
    rowid {key},
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    text TEXT NOT NULL,
    keywords TEXT NOT NULL DEFAULT '',
    role TEXT,
    session_id TEXT,
    occurred_at TEXT NOT NULL,
    occurred_ts {real} NOT NULL,
    occurred_end TEXT,
    end_ts {real} NOT NULL,
    created_at TEXT NOT NULL,
    source_ids TEXT NOT NULL DEFAULT '[]',
    image_sha256 TEXT,
    valid_to TEXT,
    superseded_by TEXT,
    meta TEXT NOT NULL DEFAULT '{{}}',
    vector_state INTEGER NOT NULL DEFAULT 0{memory_columns}
);
CREATE INDEX IF NOT EXISTS memories_type_time ON memories(type, occurred_ts);
CREATE INDEX IF NOT EXISTS memories_session ON memories(session_id);
CREATE INDEX IF NOT EXISTS memories_image ON memories(image_sha256);
CREATE INDEX IF NOT EXISTS memories_vector_state ON memories(vector_state);
CREATE TABLE IF NOT EXISTS jobs(
    id {key},
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS audit(
    id {key},
    at TEXT NOT NULL,
    operation TEXT NOT NULL,
    ids TEXT NOT NULL,
    count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS personality(
    id {key},
    at TEXT NOT NULL,
    turn_id TEXT,
    m INTEGER NOT NULL,
    lam {real},
    inferred TEXT,
    before TEXT NOT NULL,
    after TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
"""


_COLUMNS = ("id", "type", "text", "keywords", "role", "session_id", "occurred_at", "occurred_ts",
            "occurred_end", "end_ts", "created_at", "source_ids", "image_sha256", "valid_to",
            "superseded_by", "meta")


def _row_to_memory(row) -> Memory:
    """A memory from a row of ``memories`` (an ``sqlite3.Row`` or a psycopg dict row)."""
    return Memory(
        id=row["id"], type=row["type"], text=row["text"], keywords=row["keywords"], role=row["role"],
        session_id=row["session_id"], occurred_at=row["occurred_at"], occurred_end=row["occurred_end"],
        created_at=row["created_at"], source_ids=json.loads(row["source_ids"]),
        image_sha256=row["image_sha256"], valid_to=row["valid_to"], superseded_by=row["superseded_by"],
        meta=json.loads(row["meta"]),
    )


def _memory_values(m: Memory) -> tuple:
    start = from_iso(m.occurred_at).timestamp()
    end = from_iso(m.occurred_end).timestamp() if m.occurred_end else start
    return (m.id, m.type, m.text, m.keywords, m.role, m.session_id, m.occurred_at, start, m.occurred_end,
            end, m.created_at, json.dumps(m.source_ids), m.image_sha256, m.valid_to, m.superseded_by,
            json.dumps(m.meta, ensure_ascii=False))


_FTS_WORD = re.compile(r"\w+", re.UNICODE)


def query_words(text: str) -> list[str]:
    """The words a lexical search looks for (shared by the SQLite and the PostgreSQL record stores)."""
    words = [w.lower() for w in _FTS_WORD.findall(text)]
    return [w for w in dict.fromkeys(words) if len(w) > 1 or w.isdigit()][:64]


_IMAGE_PATH = re.compile(r"([0-9a-f]{2})/([0-9a-f]{64})\.([a-z0-9]{1,5})")


class SqlRecords(abc.ABC):
    """The shared methods of a record store. A subclass sets ``self.db`` (a connection whose
    ``execute(sql, args)`` returns a cursor of rows indexable by column name) and gives the hooks:

    * ``PARAM``: the engine's parameter placeholder (``?`` or ``%s``);
    * ``_in(column, values)``: a clause matching ``column`` against a list, and its arguments;
    * ``_chunks(ids)``: ``ids`` in lists small enough for one ``_in`` (nothing for no ids);
    * ``_execute_many(sql, rows)``: one statement for many rows of arguments;
    * ``_tuples(sql, args)``: the rows of a query as plain tuples (recall reads thousands);
    * ``_TURN_TYPE``: how ``session_turns`` names the ``type`` column (SQLite wants a hint).
    """

    PARAM = "?"
    _TURN_TYPE = "type"
    db: Any  # the subclass's connection
    transaction: Callable[[], AbstractContextManager[Any]]  # the subclass's BEGIN ... COMMIT

    @abc.abstractmethod
    def _in(self, column: str, values: list) -> tuple[str, list]:
        """Each engine says how (see the class docstring)."""

    @abc.abstractmethod
    def _chunks(self, ids: Iterable[str]) -> Iterator[list[str]]:
        """Each engine says how (see the class docstring)."""

    @abc.abstractmethod
    def _execute_many(self, sql: str, rows: list[tuple]) -> None:
        """Each engine says how (see the class docstring)."""

    @abc.abstractmethod
    def _tuples(self, sql: str, args: list) -> list[tuple]:
        """Each engine says how (see the class docstring)."""

    # -- meta ----------------------------------------------------------------------------------

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute(f"SELECT value FROM meta WHERE key={self.PARAM}", (key,)).fetchone()
        if not row:
            return default
        return int(row["value"]) if key == "format_version" else json.loads(row["value"])

    def set_meta(self, key: str, value: Any) -> None:
        p = self.PARAM
        self.db.execute(f"INSERT INTO meta VALUES({p}, {p}) ON CONFLICT (key) DO UPDATE SET value=EXCLUDED.value",
                        (key, json.dumps(value)))

    def meta_items(self) -> dict[str, Any]:
        rows = self.db.execute("SELECT key, value FROM meta").fetchall()
        return {r["key"]: int(r["value"]) if r["key"] == "format_version" else json.loads(r["value"]) for r in rows}

    def store_id(self) -> str:
        """A random id of this store, made once by whoever asks first (every machine of a server store
        reads the same one): it tells two stores of the same user name apart."""
        value = self.get_meta("store_id")
        if not value:
            import secrets

            self.db.execute(f"INSERT INTO meta VALUES('store_id', {self.PARAM}) ON CONFLICT (key) DO NOTHING",
                            (json.dumps(secrets.token_hex(8)),))
            value = self.get_meta("store_id")
        return value

    # -- memories ------------------------------------------------------------------------------

    def insert(self, memories: Iterable[Memory]) -> None:
        cols = ", ".join(_COLUMNS)
        marks = ", ".join(self.PARAM for _ in _COLUMNS)
        self._execute_many(f"INSERT INTO memories({cols}) VALUES ({marks})", [_memory_values(m) for m in memories])

    def update(self, memory: Memory) -> None:
        p = self.PARAM
        values = _memory_values(memory)
        sets = ", ".join(f"{c}={p}" for c in _COLUMNS[1:])
        self.db.execute(f"UPDATE memories SET {sets}, vector_state=0 WHERE id={p}", (*values[1:], values[0]))

    def supersede(self, old_id: str, new_id: str | None, at: str) -> None:
        p = self.PARAM
        self.db.execute(f"UPDATE memories SET valid_to={p}, superseded_by={p} WHERE id={p} AND valid_to IS NULL",
                        (at, new_id, old_id))

    def get(self, memory_id: str) -> Memory | None:
        row = self.db.execute(f"SELECT * FROM memories WHERE id={self.PARAM}", (memory_id,)).fetchone()
        return _row_to_memory(row) if row else None

    def get_many(self, ids: Iterable[str]) -> list[Memory]:
        ids = list(ids)
        out: dict[str, Memory] = {}
        for chunk in self._chunks(ids):
            clause, args = self._in("id", chunk)
            for row in self.db.execute(f"SELECT * FROM memories WHERE {clause}", args):
                out[row["id"]] = _row_to_memory(row)
        return [out[i] for i in ids if i in out]

    def has_current_besides(self, ids: Iterable[str]) -> bool:
        """Is there any current memory other than ``ids``? (Cheaper than counting at 100k.)"""
        clause, args = self._in("id", list(ids))
        row = self.db.execute(f"SELECT 1 FROM memories WHERE valid_to IS NULL AND NOT ({clause}) LIMIT 1",
                              args).fetchone()
        return row is not None

    def count(self, types: Iterable[str] | None = None, include_superseded: bool = True) -> int:
        where, args = self._where(types, None, None, include_superseded, None)
        return self.db.execute(f"SELECT COUNT(*) AS n FROM memories {where}", args).fetchone()["n"]

    def _where(self, types, since, until, include_superseded, session_id) -> tuple[str, list]:
        p = self.PARAM
        clauses, args = [], []
        if types:
            clause, values = self._in("type", list(types))
            clauses.append(clause)
            args.extend(values)
        if since is not None:
            clauses.append(f"end_ts >= {p}")
            args.append(since)
        if until is not None:
            clauses.append(f"occurred_ts <= {p}")
            args.append(until)
        if not include_superseded:
            clauses.append("valid_to IS NULL")
        if session_id is not None:
            clauses.append(f"session_id = {p}")
            args.append(session_id)
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", args

    def filter_ids(self, ids: list[str], types: Iterable[str] | None = None, since: float | None = None,
                   until: float | None = None, include_superseded: bool = False) -> set[str]:
        """Those of ``ids`` that pass the filters (recall checks Chroma's unfiltered hits here)."""
        where, args = self._where(types, since, until, include_superseded, None)
        where = where.replace("WHERE ", "AND ") if where else ""
        out: set[str] = set()
        for chunk in self._chunks(ids):
            clause, chunk_args = self._in("id", chunk)
            out.update(r[0] for r in self._tuples(f"SELECT id FROM memories WHERE {clause} {where}",
                                                  [*chunk_args, *args]))
        return out

    def session_turns(self, ids: list[str]) -> list[tuple]:
        """Every turn of the sessions that ``ids`` belong to, in order:
        (id, session_id, occurred_ts, end_ts, current)."""
        rows: list[tuple] = []
        for chunk in self._chunks(ids):
            clause, args = self._in("id", chunk)
            rows.extend(self._tuples(
                "SELECT id, session_id, occurred_ts, end_ts, CAST(valid_to IS NULL AS INTEGER) FROM memories "
                f"WHERE {self._TURN_TYPE}='turn' AND session_id IN (SELECT DISTINCT session_id FROM memories "
                f"WHERE {clause}) ORDER BY session_id, occurred_ts, rowid", args))
        return rows

    def unembedded(self, limit: int = 1000) -> list[Memory]:
        return [_row_to_memory(r) for r in self.db.execute(
            f"SELECT * FROM memories WHERE vector_state=0 ORDER BY rowid LIMIT {self.PARAM}", (limit,))]

    def mark_embedded(self, ids: Iterable[str]) -> None:
        for chunk in self._chunks(ids):
            clause, args = self._in("id", chunk)
            self.db.execute(f"UPDATE memories SET vector_state=1 WHERE {clause}", args)

    def delete(self, ids: Iterable[str]) -> int:
        total = 0
        for chunk in self._chunks(ids):
            clause, args = self._in("id", chunk)
            total += self.db.execute(f"DELETE FROM memories WHERE {clause}", args).rowcount
        if total:
            # Cleared by compact(): until then the deleted text may survive (FTS segments and free
            # pages; dead tuples), so an open finishes a compaction a kill interrupted.
            self.set_meta("compact_pending", True)
        return total

    def derived_from(self, ids: Iterable[str]) -> list[Memory]:
        """Memories whose provenance names any of ``ids``."""
        wanted = set(ids)
        return [_row_to_memory(r) for r in self.db.execute(
            "SELECT * FROM memories WHERE source_ids != '[]' ORDER BY rowid")
            if wanted.intersection(json.loads(r["source_ids"]))]

    def hold(self, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` exist, kept so until the transaction ends (PostgreSQL: ``FOR SHARE``, so a
        concurrent erasure of them waits; SQLite: its one writer already holds the file)."""
        found: set[str] = set()
        for chunk in self._chunks(ids):
            clause, args = self._in("id", chunk)
            found.update(r["id"] for r in self.db.execute(f"SELECT id FROM memories WHERE {clause}{self._HOLD}", args))
        return found

    _HOLD = ""

    def answers_to(self, ids: Iterable[str]) -> list[str]:
        """Ids of the assistant turns that answer one of the user turns ``ids`` (their one source)."""
        found: list[str] = []
        for chunk in self._chunks(ids):
            clause, args = self._in("source_ids", [json.dumps([i]) for i in chunk])
            found.extend(r["id"] for r in self.db.execute(
                f"SELECT id FROM memories WHERE type='turn' AND role='assistant' AND {clause}", args))
        return found

    def superseded_by_any(self, ids: Iterable[str]) -> list[Memory]:
        """Memories whose successor is one of ``ids``."""
        out: list[Memory] = []
        for chunk in self._chunks(ids):
            clause, args = self._in("superseded_by", chunk)
            out.extend(_row_to_memory(r) for r in
                       self.db.execute(f"SELECT * FROM memories WHERE {clause} ORDER BY rowid", args))
        return out

    def turn_counts(self) -> dict[str, int]:
        """Turns per chat session."""
        return {r["session_id"]: r["n"] for r in self.db.execute(
            "SELECT session_id, COUNT(*) AS n FROM memories WHERE type='turn' GROUP BY session_id")}

    def image_in_use(self, sha256: str) -> bool:
        return self.db.execute(f"SELECT 1 FROM memories WHERE image_sha256={self.PARAM} LIMIT 1",
                               (sha256,)).fetchone() is not None

    # -- pending work --------------------------------------------------------------------------

    def jobs(self, kinds: Iterable[str] | None = None) -> list[dict]:
        out = [{"id": r["id"], "kind": r["kind"], "payload": json.loads(r["payload"]), "attempts": r["attempts"]}
               for r in self.db.execute("SELECT * FROM jobs ORDER BY id")]
        return [j for j in out if kinds is None or j["kind"] in kinds]

    # Kinds of pending work a user is shown (`memory list --pending`): updates still to run, and the
    # clean-up of an import that was killed (its image files are shredded at the next writer open).
    PENDING_KINDS = ("turn", "session", "import_files")

    def pending_jobs(self) -> list[dict]:
        return self.jobs(self.PENDING_KINDS)

    def finish_interrupted_imports(self, images_dir: Path) -> int:
        """Shred the image files of imports killed before their records were committed (named by their
        committed ``import_files`` job), except those a record uses; then drop the job. Every writer
        open runs it, so a forget (``--all`` included) never starts with such files left behind."""
        from personavlm_cli.adapters.files import shred

        removed = 0
        for job in self.jobs(["import_files"]):
            for rel in job["payload"].get("paths", []):
                found = _IMAGE_PATH.fullmatch(str(rel))
                if not found:
                    continue
                path = Path(images_dir) / str(rel)
                for candidate in (path.with_name(path.name + ".part"), path):
                    if candidate == path and self.image_in_use(found.group(2)):
                        continue
                    if candidate.is_file() and not candidate.is_symlink():
                        shred(candidate)
                        removed += 1
            with self.transaction():
                self.finish_job(job["id"])
        return removed

    def job_attempted(self, job_id: int) -> None:
        self.db.execute(f"UPDATE jobs SET attempts = attempts + 1 WHERE id={self.PARAM}", (job_id,))

    def finish_job(self, job_id: int) -> None:
        self.db.execute(f"DELETE FROM jobs WHERE id={self.PARAM}", (job_id,))

    # -- audit and personality -----------------------------------------------------------------

    def audit(self, operation: str, ids: list[str]) -> None:
        """Record an operation and the ids it touched; never the content."""
        marks = ",".join([self.PARAM] * 4)
        self.db.execute(f"INSERT INTO audit(at, operation, ids, count) VALUES ({marks})",
                        (iso(now()), operation, json.dumps(ids), len(ids)))

    def audit_log(self) -> list[dict]:
        return [{"at": r["at"], "operation": r["operation"], "ids": json.loads(r["ids"]), "count": r["count"]}
                for r in self.db.execute("SELECT * FROM audit ORDER BY id")]

    def add_personality(self, record: dict) -> None:
        marks = ",".join([self.PARAM] * 8)
        self.db.execute(
            f"INSERT INTO personality(at, turn_id, m, lam, inferred, before, after, note) VALUES ({marks})",
            (record["at"], record.get("turn_id"), record["m"], record.get("lambda"),
             json.dumps(record.get("inferred")), json.dumps(record["before"]), json.dumps(record["after"]),
             record.get("note", "")))

    def personality_history(self) -> list[dict]:
        return [dict(at=r["at"], turn_id=r["turn_id"], m=r["m"], **{"lambda": r["lam"]},
                     inferred=json.loads(r["inferred"]) if r["inferred"] else None,
                     before=json.loads(r["before"]), after=json.loads(r["after"]), note=r["note"])
                for r in self.db.execute("SELECT * FROM personality ORDER BY id")]

    # Last in the class: from here on, ``list`` in this class's body would name this method, not the type.
    def list(self, types: Iterable[str] | None = None, since: float | None = None, until: float | None = None,
             include_superseded: bool = False, limit: int | None = None, session_id: str | None = None,
             newest_first: bool = False) -> list[Memory]:
        where, args = self._where(types, since, until, include_superseded, session_id)
        order = "DESC" if newest_first else "ASC"
        sql = f"SELECT * FROM memories {where} ORDER BY occurred_ts {order}, rowid {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_row_to_memory(r) for r in self.db.execute(sql, args)]
