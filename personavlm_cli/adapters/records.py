"""The user's record file (SQLite): memory records, the lexical index, pending work, audit, personality.

SQLite is the system of record because it gives what a months-long memory needs and Chroma alone
does not: transactions (a kill never leaves half an operation), ordered listing without loading
the vector engine (fast `memory list`), BM25 ranking (FTS5), and erasure that can be proven
(``secure_delete`` zeroes freed pages; forget then merges the FTS index and vacuums). Vectors live
in Chroma; every record row says whether its vector is there yet (``vector_state``), so a kill
between the two writes is repaired at the next start.
"""

from __future__ import annotations

import contextlib

import json
import os
import re
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Iterator

from personavlm_cli.core.errors import StoreError, disk_full, is_disk_full
from personavlm_cli.core.memory import Memory, from_iso, iso, now

FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS memories(
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    text TEXT NOT NULL,
    keywords TEXT NOT NULL DEFAULT '',
    role TEXT,
    session_id TEXT,
    occurred_at TEXT NOT NULL,
    occurred_ts REAL NOT NULL,
    occurred_end TEXT,
    end_ts REAL NOT NULL,
    created_at TEXT NOT NULL,
    source_ids TEXT NOT NULL DEFAULT '[]',
    image_sha256 TEXT,
    valid_to TEXT,
    superseded_by TEXT,
    meta TEXT NOT NULL DEFAULT '{}',
    vector_state INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS memories_type_time ON memories(type, occurred_ts);
CREATE INDEX IF NOT EXISTS memories_session ON memories(session_id);
CREATE INDEX IF NOT EXISTS memories_image ON memories(image_sha256);
CREATE INDEX IF NOT EXISTS memories_vector_state ON memories(vector_state);
CREATE VIRTUAL TABLE IF NOT EXISTS memory_fts USING fts5(
    text, keywords, content='memories', content_rowid='rowid', tokenize='porter unicode61'
);
CREATE TRIGGER IF NOT EXISTS memories_ai AFTER INSERT ON memories BEGIN
    INSERT INTO memory_fts(rowid, text, keywords) VALUES (new.rowid, new.text, new.keywords);
END;
CREATE TRIGGER IF NOT EXISTS memories_ad AFTER DELETE ON memories BEGIN
    INSERT INTO memory_fts(memory_fts, rowid, text, keywords) VALUES ('delete', old.rowid, old.text, old.keywords);
END;
CREATE TRIGGER IF NOT EXISTS memories_au AFTER UPDATE OF text, keywords ON memories BEGIN
    INSERT INTO memory_fts(memory_fts, rowid, text, keywords) VALUES ('delete', old.rowid, old.text, old.keywords);
    INSERT INTO memory_fts(rowid, text, keywords) VALUES (new.rowid, new.text, new.keywords);
END;
CREATE TABLE IF NOT EXISTS jobs(
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS audit(
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    operation TEXT NOT NULL,
    ids TEXT NOT NULL,
    count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS personality(
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    turn_id TEXT,
    m INTEGER NOT NULL,
    lam REAL,
    inferred TEXT,
    before TEXT NOT NULL,
    after TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
"""

_COLUMNS = ("id", "type", "text", "keywords", "role", "session_id", "occurred_at", "occurred_ts",
            "occurred_end", "end_ts", "created_at", "source_ids", "image_sha256", "valid_to",
            "superseded_by", "meta")


def _row_to_memory(row: sqlite3.Row) -> Memory:
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


def fts_query(text: str) -> str | None:
    """An FTS5 query matching any word of ``text`` (BM25 ranks the matches); None if no words."""
    words = query_words(text)
    if not words:
        return None
    return " OR ".join(f'"{w}"' for w in words)


class RecordStore:
    """One user's ``personavlm.db``. Not shared between threads: each thread opens its own."""

    FILENAME = "personavlm.db"

    def __init__(self, user_dir: Path, readonly: bool = False):
        self.path = Path(user_dir) / self.FILENAME
        if readonly and not self.path.exists():
            raise StoreError(f"no store yet at {self.path}")
        if not readonly:
            self._check_writable()
        try:
            fresh = not self.path.exists()
            if fresh:
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                    os.close(fd)
                except OSError as exc:
                    if is_disk_full(exc):
                        raise disk_full(self.path.parent) from None
                    raise
            self.db = self._connect(readonly)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA secure_delete=ON")
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self._migrate()
                self._finish_interrupted_compaction()
                self.finish_interrupted_imports(self.path.parent / "images")
            elif self._check_version() < 1:
                # The schema and its format version are written in one transaction: a file without
                # them is empty (a writer is creating it right now) or is someone else's database.
                raise StoreError(f"the store {self.path} is empty or not a personavlm store")
        except PermissionError:
            raise StoreError(f"the store {self.path} is read-only (permission denied)") from None
        except sqlite3.OperationalError as exc:
            if is_disk_full(exc):
                raise disk_full(self.path.parent) from None
            if _is_readonly_error(exc):
                raise StoreError(f"the store {self.path} is read-only ({exc}); fix the permissions of "
                                 f"{self.path.parent}") from None
            if "locked" in str(exc).lower() or "busy" in str(exc).lower():
                raise StoreError(f"the store {self.path} is busy ({exc}): another process is writing it; "
                                 "try again") from None
            raise StoreError(f"the store {self.path} is damaged or not a personavlm store ({exc})") from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"the store {self.path} is damaged or not a personavlm store ({exc})") from None

    def _connect(self, readonly: bool) -> sqlite3.Connection:
        def connect(mode: str) -> sqlite3.Connection:
            return sqlite3.connect(f"file:{self.path}?{mode}", uri=True, timeout=10, isolation_level=None,
                                   check_same_thread=False)

        if not readonly:
            return connect("mode=rw")
        db = connect("mode=ro")
        try:
            db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            return db
        except sqlite3.OperationalError:
            # A WAL-mode file in a directory we may not write to, with no -shm file to share: SQLite
            # cannot open it read-only. No writer can be active without a WAL file, so the file is
            # stable; read it as immutable instead.
            db.close()
            wal = Path(f"{self.path}-wal")
            if os.access(self.path.parent, os.W_OK) or (wal.exists() and wal.stat().st_size > 0):
                raise
            return connect("mode=ro&immutable=1")

    def _check_writable(self) -> None:
        """Refuse, in one line, a store that cannot be written (read-only file or directory).

        SQLite would open a read-only file "read-write" and fail only at the first write, in the
        middle of a chat; a WAL file it must create in a read-only directory fails as "unable to open".
        """
        d = self.path.parent
        side = [Path(f"{self.path}-wal"), Path(f"{self.path}-shm")]
        denied = [p for p in (self.path, *side) if p.exists() and not os.access(p, os.W_OK)]
        must_create = not self.path.exists() or not all(p.exists() for p in side)
        if denied or (must_create and not os.access(d, os.W_OK | os.X_OK)):
            where = denied[0] if denied else d
            raise StoreError(f"the store {self.path} is read-only ({where} is not writable); fix its permissions "
                             "to chat or change memories (reading still works)")

    # -- schema --------------------------------------------------------------------------------

    def _check_version(self) -> int:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key='format_version'").fetchone()
        except sqlite3.OperationalError:
            return 0
        version = int(row["value"]) if row else 0
        if version > FORMAT_VERSION:
            raise StoreError(
                f"the store {self.path} has format {version}, newer than this personavlm understands "
                f"({FORMAT_VERSION}); upgrade personavlm"
            )
        return version

    def _migrate(self) -> None:
        version = self._check_version()
        # Migrations are applied in order, once, inside one transaction each; version 1 is the
        # first format, so there is nothing to upgrade yet.
        if version < 1:
            with self.transaction():
                for statement in _split_script(_SCHEMA):
                    self.db.execute(statement)
                self.db.execute("INSERT OR REPLACE INTO meta VALUES('format_version', ?)", (str(FORMAT_VERSION),))
                self.db.execute("INSERT OR IGNORE INTO meta VALUES('created_at', ?)", (json.dumps(iso(now())),))

    def _finish_interrupted_compaction(self) -> None:
        """An erasure killed between its commit and its compaction leaves the erased text in FTS
        segments and free pages; the flag it set with the deletion says so, and it is finished here."""
        if self.get_meta("compact_pending"):
            try:
                self.compact()
            except sqlite3.OperationalError:  # a reader in the way: the next open tries again
                pass

    remote = False  # a file on this machine; the user's store lock (adapters/lock.py) keeps one writer

    def exclusive(self, command: str):
        return contextlib.nullcontext()

    def claim_job(self, job_id: int):
        return contextlib.nullcontext(True)

    def transaction(self):
        return _Transaction(self.db, self.path.parent)

    def close(self) -> None:
        self.db.close()

    # -- meta ----------------------------------------------------------------------------------

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row["value"]) if row and key != "format_version" else (
            int(row["value"]) if row else default)

    def store_id(self) -> str:
        """A random id of this store, made once: it tells two stores of the same user name apart."""
        value = self.get_meta("store_id")
        if not value:
            import secrets

            value = secrets.token_hex(8)
            self.set_meta("store_id", value)
        return value

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES(?, ?)", (key, json.dumps(value)))

    # -- memories ------------------------------------------------------------------------------

    def insert(self, memories: Iterable[Memory]) -> None:
        cols = ", ".join(_COLUMNS)
        marks = ", ".join("?" for _ in _COLUMNS)
        self.db.executemany(f"INSERT INTO memories({cols}) VALUES ({marks})",
                            [_memory_values(m) for m in memories])

    def update(self, memory: Memory) -> None:
        values = _memory_values(memory)
        sets = ", ".join(f"{c}=?" for c in _COLUMNS[1:])
        self.db.execute(f"UPDATE memories SET {sets}, vector_state=0 WHERE id=?", (*values[1:], values[0]))

    def supersede(self, old_id: str, new_id: str | None, at: str) -> None:
        self.db.execute("UPDATE memories SET valid_to=?, superseded_by=? WHERE id=? AND valid_to IS NULL",
                        (at, new_id, old_id))

    def get(self, memory_id: str) -> Memory | None:
        row = self.db.execute("SELECT * FROM memories WHERE id=?", (memory_id,)).fetchone()
        return _row_to_memory(row) if row else None

    def get_many(self, ids: Iterable[str]) -> list[Memory]:
        ids = list(ids)
        out: dict[str, Memory] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ",".join("?" for _ in chunk)
            for row in self.db.execute(f"SELECT * FROM memories WHERE id IN ({marks})", chunk):
                out[row["id"]] = _row_to_memory(row)
        return [out[i] for i in ids if i in out]

    def list(self, types: Iterable[str] | None = None, since: float | None = None, until: float | None = None,
             include_superseded: bool = False, limit: int | None = None, session_id: str | None = None,
             newest_first: bool = False) -> list[Memory]:
        sql, args = self._where(types, since, until, include_superseded, session_id)
        order = "DESC" if newest_first else "ASC"
        sql = f"SELECT * FROM memories {sql} ORDER BY occurred_ts {order}, rowid {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_row_to_memory(r) for r in self.db.execute(sql, args)]

    def has_current_besides(self, ids: Iterable[str]) -> bool:
        """Is there any current memory other than ``ids``? (Cheaper than counting at 100k.)"""
        ids = list(ids)
        marks = ",".join("?" for _ in ids) or "''"
        row = self.db.execute(f"SELECT 1 FROM memories WHERE valid_to IS NULL AND id NOT IN ({marks}) LIMIT 1",
                              ids).fetchone()
        return row is not None

    def count(self, types: Iterable[str] | None = None, include_superseded: bool = True) -> int:
        sql, args = self._where(types, None, None, include_superseded, None)
        return self.db.execute(f"SELECT COUNT(*) FROM memories {sql}", args).fetchone()[0]

    @staticmethod
    def _where(types, since, until, include_superseded, session_id) -> tuple[str, list]:
        clauses, args = [], []
        if types:
            types = list(types)
            clauses.append(f"type IN ({','.join('?' for _ in types)})")
            args.extend(types)
        if since is not None:
            clauses.append("end_ts >= ?")
            args.append(since)
        if until is not None:
            clauses.append("occurred_ts <= ?")
            args.append(until)
        if not include_superseded:
            clauses.append("valid_to IS NULL")
        if session_id is not None:
            clauses.append("session_id = ?")
            args.append(session_id)
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", args

    def lexical(self, query: str, k: int, types: Iterable[str] | None = None, since: float | None = None,
                until: float | None = None, include_superseded: bool = False) -> list[tuple[str, float]]:
        """BM25 search (FTS5); returns (id, score) with higher scores better."""
        match = fts_query(query)
        if match is None:
            return []
        where, args = self._where(types, since, until, include_superseded, None)
        where = where.replace("WHERE ", "AND ") if where else ""
        sql = (f"SELECT m.id, bm25(memory_fts, 1.0, 0.5) AS rank FROM memory_fts JOIN memories m "
               f"ON m.rowid = memory_fts.rowid WHERE memory_fts MATCH ? {where} ORDER BY rank LIMIT ?")
        return [(r["id"], -r["rank"]) for r in self.db.execute(sql, [match, *args, k])]

    def _tuples(self, sql: str, args: list) -> list[tuple]:
        """Plain tuples: sqlite3.Row objects cost more, and recall reads thousands of rows."""
        cursor = self.db.cursor()
        cursor.row_factory = None
        try:
            return cursor.execute(sql, args).fetchall()
        finally:
            cursor.close()

    def filter_ids(self, ids: list[str], types: Iterable[str] | None = None, since: float | None = None,
                   until: float | None = None, include_superseded: bool = False) -> set[str]:
        """Those of ``ids`` that pass the filters (recall checks Chroma's unfiltered hits here)."""
        where, args = self._where(types, since, until, include_superseded, None)
        where = where.replace("WHERE ", "AND ") if where else ""
        out: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ",".join("?" for _ in chunk)
            out.update(r[0] for r in self._tuples(f"SELECT id FROM memories WHERE id IN ({marks}) {where}",
                                                  [*chunk, *args]))
        return out

    def session_turns(self, ids: list[str]) -> list[tuple]:
        """Every turn of the sessions that ``ids`` belong to, in order:
        (id, session_id, occurred_ts, end_ts, current)."""
        rows: list[tuple] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ",".join("?" for _ in chunk)
            # "+type": without it SQLite walks the type index over every turn instead of the session index.
            rows.extend(self._tuples(
                "SELECT id, session_id, occurred_ts, end_ts, valid_to IS NULL FROM memories WHERE "
                f"+type='turn' AND session_id IN (SELECT DISTINCT session_id FROM memories WHERE id IN "
                f"({marks})) ORDER BY session_id, occurred_ts, rowid", chunk))
        return rows

    def unembedded(self, limit: int = 1000) -> list[Memory]:
        rows = self.db.execute("SELECT * FROM memories WHERE vector_state=0 LIMIT ?", (limit,))
        return [_row_to_memory(r) for r in rows]

    def mark_embedded(self, ids: Iterable[str]) -> None:
        self.db.executemany("UPDATE memories SET vector_state=1 WHERE id=?", [(i,) for i in ids])

    def delete(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        total = 0
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ",".join("?" for _ in chunk)
            total += self.db.execute(f"DELETE FROM memories WHERE id IN ({marks})", chunk).rowcount
        if total:
            # Cleared by compact(): until then the deleted text may survive in the FTS index's
            # segments and in free pages, so an open finishes a compaction a kill interrupted.
            self.set_meta("compact_pending", True)
        return total

    def derived_from(self, ids: Iterable[str]) -> list[Memory]:
        """Memories whose provenance names any of ``ids``."""
        wanted = set(ids)
        out = []
        for row in self.db.execute("SELECT * FROM memories WHERE source_ids != '[]'"):
            sources = json.loads(row["source_ids"])
            if wanted.intersection(sources):
                out.append(_row_to_memory(row))
        return out

    def superseded_by_any(self, ids: Iterable[str]) -> list[Memory]:
        """Memories whose successor is one of ``ids``."""
        ids = list(ids)
        out: list[Memory] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ",".join("?" for _ in chunk)
            out.extend(_row_to_memory(r) for r in
                       self.db.execute(f"SELECT * FROM memories WHERE superseded_by IN ({marks})", chunk))
        return out

    def turn_counts(self) -> dict[str, int]:
        """Turns per chat session."""
        return {r[0]: r[1] for r in self.db.execute(
            "SELECT session_id, COUNT(*) FROM memories WHERE type='turn' GROUP BY session_id")}

    def image_in_use(self, sha256: str) -> bool:
        return self.db.execute("SELECT 1 FROM memories WHERE image_sha256=? LIMIT 1", (sha256,)).fetchone() is not None

    def compact(self) -> None:
        """Make erased text unrecoverable: merge FTS segments, checkpoint the WAL, vacuum."""
        self.db.execute("INSERT INTO memory_fts(memory_fts) VALUES('optimize')")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.execute("VACUUM")
        self.db.execute("DELETE FROM meta WHERE key='compact_pending'")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- pending work --------------------------------------------------------------------------

    def add_job(self, kind: str, payload: dict) -> int:
        cur = self.db.execute("INSERT INTO jobs(kind, payload, created_at) VALUES (?,?,?)",
                              (kind, json.dumps(payload), iso(now())))
        return cur.lastrowid

    def jobs(self, kinds: Iterable[str] | None = None) -> list[dict]:
        rows = self.db.execute("SELECT * FROM jobs ORDER BY id")
        out = [dict(id=r["id"], kind=r["kind"], payload=json.loads(r["payload"]), attempts=r["attempts"])
               for r in rows]
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
        self.db.execute("UPDATE jobs SET attempts = attempts + 1 WHERE id=?", (job_id,))

    def finish_job(self, job_id: int) -> None:
        self.db.execute("DELETE FROM jobs WHERE id=?", (job_id,))

    # -- audit and personality -----------------------------------------------------------------

    def audit(self, operation: str, ids: list[str]) -> None:
        """Record an operation and the ids it touched; never the content."""
        self.db.execute("INSERT INTO audit(at, operation, ids, count) VALUES (?,?,?,?)",
                        (iso(now()), operation, json.dumps(ids), len(ids)))

    def audit_log(self) -> list[dict]:
        return [dict(at=r["at"], operation=r["operation"], ids=json.loads(r["ids"]), count=r["count"])
                for r in self.db.execute("SELECT * FROM audit ORDER BY id")]

    def add_personality(self, record: dict) -> None:
        self.db.execute(
            "INSERT INTO personality(at, turn_id, m, lam, inferred, before, after, note) VALUES (?,?,?,?,?,?,?,?)",
            (record["at"], record.get("turn_id"), record["m"], record.get("lambda"),
             json.dumps(record.get("inferred")), json.dumps(record["before"]), json.dumps(record["after"]),
             record.get("note", "")))

    def personality_history(self) -> list[dict]:
        return [dict(at=r["at"], turn_id=r["turn_id"], m=r["m"], **{"lambda": r["lam"]},
                     inferred=json.loads(r["inferred"]) if r["inferred"] else None,
                     before=json.loads(r["before"]), after=json.loads(r["after"]), note=r["note"])
                for r in self.db.execute("SELECT * FROM personality ORDER BY id")]

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.parent.glob(self.FILENAME + "*") if p.is_file())


_IMAGE_PATH = re.compile(r"([0-9a-f]{2})/([0-9a-f]{64})\.([a-z0-9]{1,5})")


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (KeyboardInterrupt included). A full
    disk (SQLITE_FULL) inside it or at its commit becomes one DiskFullError: the transaction is
    rolled back, so nothing of it was written and nothing before it was lost."""

    def __init__(self, db: sqlite3.Connection, where: Path | None = None):
        self.db = db
        self.where = where
        self.depth_owner = False

    def __enter__(self):
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
            self.depth_owner = True
        return self.db

    def __exit__(self, exc_type, exc, tb):
        if not self.depth_owner:
            return False
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
            except sqlite3.OperationalError as error:
                if not is_disk_full(error):
                    raise
                self._rollback()
                raise disk_full(self.where or "the disk") from None
            return False
        self._rollback()
        if exc is not None and isinstance(exc, sqlite3.OperationalError) and is_disk_full(exc):
            raise disk_full(self.where or "the disk") from None
        return False

    def _rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")


def _is_readonly_error(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "readonly" in text or "read-only" in text or "unable to open" in text


def _split_script(script: str) -> Iterator[str]:
    """Split the schema into statements; triggers contain ';' inside BEGIN ... END."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            stmt = buf.strip()
            if stmt:
                yield stmt
            buf = ""

