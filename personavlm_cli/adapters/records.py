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
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from personavlm_cli.adapters.sql_records import FORMAT_VERSION, SqlRecords, query_words, tables
from personavlm_cli.core.errors import StoreError, disk_full, is_disk_full
from personavlm_cli.core.memory import iso, now

__all__ = ["FORMAT_VERSION", "RecordStore", "fts_query", "query_words"]

_SCHEMA = tables("INTEGER PRIMARY KEY", "REAL") + """
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
"""


def fts_query(text: str) -> str | None:
    """An FTS5 query matching any word of ``text`` (BM25 ranks the matches); None if no words."""
    words = query_words(text)
    if not words:
        return None
    return " OR ".join(f'"{w}"' for w in words)


class RecordStore(SqlRecords):
    """One user's ``personavlm.db``. Not shared between threads: each thread opens its own. The
    methods whose SQL PostgreSQL shares are in :class:`SqlRecords`; here, what only SQLite does."""

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

    def image_blob(self, sha256: str) -> tuple[str, bytes] | None:
        return None  # the images of an embedded store are files (adapters/image_store.py), never rows

    def exclusive(self, command: str):
        return contextlib.nullcontext()

    def claim_job(self, job_id: int):
        return contextlib.nullcontext(True)

    def transaction(self):
        return _Transaction(self.db, self.path.parent)

    def close(self) -> None:
        self.db.close()

    # -- the hooks of SqlRecords -------------------------------------------------------------------

    PARAM = "?"
    _TURN_TYPE = "+type"  # without "+" SQLite walks the type index over every turn, not the session index

    def _in(self, column: str, values: list) -> tuple[str, list]:
        return f"{column} IN ({','.join('?' for _ in values)})", list(values)

    def _chunks(self, ids: Iterable[str]) -> Iterator[list[str]]:
        ids = list(ids)
        for i in range(0, len(ids), 500):  # SQLite's limit on the number of parameters
            yield ids[i:i + 500]

    def _execute_many(self, sql: str, rows: list[tuple]) -> None:
        self.db.executemany(sql, rows)

    # -- memories: what only SQLite does ------------------------------------------------------

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

    def compact(self) -> None:
        """Make erased text unrecoverable: merge FTS segments, checkpoint the WAL, vacuum."""
        self.db.execute("INSERT INTO memory_fts(memory_fts) VALUES('optimize')")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.execute("VACUUM")
        self.db.execute("DELETE FROM meta WHERE key='compact_pending'")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def add_job(self, kind: str, payload: dict) -> int:
        cur = self.db.execute("INSERT INTO jobs(kind, payload, created_at) VALUES (?,?,?)",
                              (kind, json.dumps(payload), iso(now())))
        return int(cur.lastrowid or 0)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.parent.glob(self.FILENAME + "*") if p.is_file())


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

