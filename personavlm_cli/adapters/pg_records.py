"""A user's records on PostgreSQL (``store.kind: server`` with ``store.database_url``).

The same public interface as :class:`personavlm_cli.adapters.records.RecordStore` (memories, the
lexical index, pending work, audit, personality, meta), so that several machines with the same user
and the same server share one system of record. Differences, all deliberate:

* One PostgreSQL schema per user (``pv_<user>``) in one database; every connection sets its
  ``search_path`` to that schema, so the SQL is the same for everyone and no query can reach another
  user's rows by accident (it is not access control: see docs/deploy.md).
* The lexical signal is PostgreSQL full-text search (a ``tsvector`` generated from text and keywords,
  a GIN index) ranked by BM25 computed in SQL exactly as FTS5's ``bm25(memory_fts, 1.0, 0.5)`` does
  (k1 1.2, b 0.75, the text weighted 1.0 and the keywords 0.5). ``ts_rank`` has no inverse document
  frequency: with it, LoCoMo recall@10 fell from 0.77 to 0.56; with BM25 it matches the embedded store.
* Images are rows of ``images`` (``bytea``, keyed by sha256): they live where the records live.
  A machine materialises the ones it needs (CLIP, showing) in a private local cache.
* ``compact()`` is ``VACUUM FULL`` of the tables that held the erased text (it rewrites them, so
  no dead tuple is left in the live files; WAL, replicas and backups: docs/reliability.md).
* ``exclusive(command)`` is a session-level advisory lock per user, with a ``holders`` row saying
  who holds it (host, PID, command): one writer for erase/compact/migrate, across machines; turns
  are plain transactions, so two chats at once both write.

psycopg is imported here only (``pip install 'personavlm-cli[postgres]'``), never by the embedded store.
The schema's name, tables and advisory-lock keys are ``adapters/pg_schema.py``'s; the connection that
survives a restart is ``adapters/pg_link.py``'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

from personavlm_cli.adapters.pg_link import RETRY_S, Link, idempotent, server_disk_full
from personavlm_cli.adapters.pg_schema import (
    LENGTHS_KEY,
    LENGTHS_UPGRADE,
    PARTITIONS,
    SMALL_TABLES,
    advisory_key,
    create_tables,
    legacy_schema_for,
    lock_call,
    schema_for,
)
from personavlm_cli.adapters.sql_records import FORMAT_VERSION, SqlRecords, query_words
from personavlm_cli.adapters.urls import shown_url
from personavlm_cli.core.errors import DiskFullError, NotFoundError, StoreBusyError, StoreError
from personavlm_cli.core.memory import iso, now

INSTALL = "pip install 'personavlm-cli[postgres]' (psycopg 3)"


def _psycopg():
    try:
        import psycopg
        from psycopg.rows import dict_row
    except ImportError:
        raise StoreError(f"store.database_url needs psycopg, which is not installed: {INSTALL}") from None
    return psycopg, dict_row


def require_psycopg() -> None:
    """Raise one StoreError naming the install command when psycopg is missing (checked before a migration)."""
    _psycopg()


def check_database_url(url: str) -> str:
    """``url`` if it is a PostgreSQL URL, else one line saying what it must be (no password shown)."""
    from urllib.parse import urlsplit

    text = (url or "").strip()
    try:
        u = urlsplit(text)
        _ = u.port  # raises on a bad port
    except ValueError:
        raise StoreError(f"store.database_url has an invalid port: {shown_database_url(text)}") from None
    if u.scheme not in ("postgresql", "postgres") or not (u.hostname or "host=" in u.query):
        raise StoreError("store.database_url must be a postgresql://[user[:password]@]host[:port]/database URL, "
                         f"got {shown_database_url(text)!r}")
    return text


shown_database_url = shown_url  # the name cli/housekeeping.py imports


class PgRecordStore(SqlRecords):
    """One user's records in their schema of a PostgreSQL database. Not shared between threads. The
    methods whose SQL SQLite shares are in :class:`SqlRecords`; here, what only PostgreSQL does."""

    remote = True

    def __init__(self, url: str, user: str, readonly: bool = False, connect_timeout: int = 10,
                 retry_s: float = RETRY_S):
        """Opens at once or raises one line (an unreachable server is not waited for at open); once open,
        a lost connection is re-opened for up to ``retry_s`` seconds (``adapters/pg_link.py``)."""
        psycopg, dict_row = _psycopg()
        self.url = check_database_url(url)
        self.user = user
        self.schema = schema_for(user)
        self.where = f"{shown_database_url(self.url)} (schema {self.schema})"
        self.readonly = readonly
        self._psycopg = psycopg
        self._dict_row = dict_row
        self._locks: dict[str, int] = {}
        self._held: dict[str, tuple] = {}  # advisory keys this session holds (taken back after a reconnect)
        self._oid: int | None = None
        self._destroyed = False
        try:
            conn = self._connect(connect_timeout)
        except psycopg.OperationalError as exc:
            raise StoreError(f"cannot reach the record database {shown_database_url(self.url)}: "
                             f"{_first_line(exc)}") from None
        self.db = Link(conn, self._connect, self._reopen, shown_database_url(self.url), retry_s)
        try:
            exists = self._schema_exists(self.schema) or self._adopt_legacy()
            if readonly and not exists:
                self.db.close()
                raise NotFoundError(f"user '{user}' has no memories yet on {shown_database_url(self.url)}")
            if not readonly:
                self._migrate()
            self._reopen(self.db.conn)
            if readonly and self._check_version() < 1:
                raise StoreError(f"the record database {self.where} is empty or not a personavlm store")
            self._check_owner()
            if not readonly:
                self._finish_interrupted_compaction()
        except psycopg.Error as exc:
            self.db.close()
            raise StoreError(f"the record database {self.where} cannot be used: {_first_line(exc)}") from None
        except BaseException:
            self.db.close()
            raise

    def _connect(self, timeout: float):
        return self._psycopg.connect(self.url, autocommit=True, row_factory=self._dict_row,
                                     connect_timeout=max(1, int(timeout)), application_name="personavlm")

    def _reopen(self, conn) -> None:
        """Make ``conn`` this store's session: the user's schema, read-only if so opened, and the
        session locks it held before a reconnect (refused if another process took one meanwhile)."""
        sql = self._psycopg.sql
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        if self.readonly:
            conn.execute("SET default_transaction_read_only = on")
        for name, key in list(self._held.items()):
            if not conn.execute(f"SELECT {lock_call(key)} AS ok", key).fetchone()["ok"]:
                self._held.pop(name, None)
                self._locks.pop(name, None)
                raise StoreBusyError(f"the connection to the record database was lost while holding the lock for "
                                     f"{name}, and another process took it meanwhile; nothing more was written")
            if name == "writer":
                conn.execute("INSERT INTO holders VALUES(%s,%s,%s,%s,%s) ON CONFLICT (lock) DO UPDATE SET "
                             "host=EXCLUDED.host, pid=EXCLUDED.pid, command=EXCLUDED.command, since=EXCLUDED.since",
                             (name, socket.gethostname(), os.getpid(), self._holding or "?", iso(now())))

    _holding: str | None = None

    def _schema_exists(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM pg_namespace WHERE nspname=%s", (name,)).fetchone() is not None

    def _adopt_legacy(self) -> bool:
        """A long name's schema made under its former name (``legacy_schema_for``) is renamed to its
        current one, unless its ``owner`` says it is another user's (that 53-character user keeps it)."""
        old = legacy_schema_for(self.user)
        if old is None or not self._schema_exists(old):
            return False
        sql = self._psycopg.sql
        with self.db.begin():
            self.db.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key("personavlm-schema:" + self.schema),))
            if self._schema_exists(self.schema):
                return True
            meta = self.db.execute("SELECT to_regclass(%s) AS t", (f'"{old}".meta',)).fetchone()["t"]
            row = None
            if meta is not None:
                row = self.db.execute(sql.SQL("SELECT value FROM {} WHERE key='owner'").format(
                    sql.Identifier(old, "meta"))).fetchone()
            if row is not None and json.loads(row["value"]) != self.user:
                return False
            self.db.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(old),
                                                                          sql.Identifier(self.schema)))
        return True

    def _check_owner(self) -> None:
        """The schema names its user (``owner`` in meta, written when it is made, or at the first open by
        this version): a schema of another name is refused, whatever mapped this name to it."""
        owner = self.get_meta("owner")
        if owner is None and not self.readonly:
            self.set_meta("owner", self.user)
        elif owner is not None and owner != self.user:
            raise StoreError(f"the schema {self.schema} on {shown_database_url(self.url)} belongs to user "
                             f"'{owner}', not '{self.user}'; nothing was read or written")

    @property
    def reconnects(self) -> int:
        return self.db.reconnects

    def _lock_key(self, job_id: int = 0) -> tuple:
        """An advisory-lock key of this user's schema: (schema oid, 0) for the writer, (schema oid, job id)
        for a job. The oid is the schema's own number in the database, so two users never share a key
        (a hash of the name could collide); a job id past 2^31 falls back to a 64-bit hash."""
        if self._oid is None:
            row = self.db.execute("SELECT oid::bigint AS oid FROM pg_namespace WHERE nspname=%s",
                                  (self.schema,)).fetchone()
            oid = int(row["oid"]) if row else 0
            self._oid = oid - 2 ** 32 if oid >= 2 ** 31 else oid
        if 0 <= job_id < 2 ** 31:
            return (self._oid, job_id)
        return (advisory_key(f"personavlm-job:{self.schema}:{job_id}"),)

    # -- schema --------------------------------------------------------------------------------

    def _check_version(self) -> int:
        # to_regclass, not a failing SELECT: inside a transaction an error would abort it.
        if self.db.execute("SELECT to_regclass('meta') AS t").fetchone()["t"] is None:
            return 0
        row = self.db.execute("SELECT value FROM meta WHERE key='format_version'").fetchone()
        version = int(row["value"]) if row else 0
        if version > FORMAT_VERSION:
            raise StoreError(f"the record database {self.where} has format {version}, newer than this "
                             f"personavlm understands ({FORMAT_VERSION}); upgrade personavlm")
        return version

    def _migrate(self) -> None:
        sql = self._psycopg.sql
        ident = sql.Identifier(self.schema)
        with self.db.begin():
            # Two machines opening a new user at once: one creates, the other waits and finds it done.
            self.db.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key("personavlm-schema:" + self.schema),))
            self.db.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
            self.db.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
            if self._check_version() >= 1:
                if self.db.execute("SELECT 1 FROM meta WHERE key=%s", (LENGTHS_KEY,)).fetchone() is None:
                    for statement in LENGTHS_UPGRADE:
                        self.db.execute(statement)
                    self.db.execute("INSERT INTO meta VALUES(%s, %s)", (LENGTHS_KEY, json.dumps("words")))
                return
            create_tables(self.db.execute)
            self.db.execute("INSERT INTO meta VALUES(%s, %s) ON CONFLICT (key) DO NOTHING",
                            (LENGTHS_KEY, json.dumps("words")))
            self.db.execute("INSERT INTO meta VALUES('format_version', %s) ON CONFLICT (key) DO UPDATE "
                            "SET value=EXCLUDED.value", (str(FORMAT_VERSION),))
            self.db.execute("INSERT INTO meta VALUES('created_at', %s) ON CONFLICT (key) DO NOTHING",
                            (json.dumps(iso(now())),))
            self.db.execute("INSERT INTO meta VALUES('owner', %s) ON CONFLICT (key) DO NOTHING",
                            (json.dumps(self.user),))

    def _finish_interrupted_compaction(self) -> None:
        if self.get_meta("compact_pending"):
            try:
                self.compact()
            except (self._psycopg.errors.LockNotAvailable, DiskFullError):  # the next open tries again
                pass

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """BEGIN ... COMMIT, rolled back on any exception; a transaction inside another joins it (as
        SQLite's does: no savepoint). A full disk or a lost server is one StoreError line; a connection
        lost before the BEGIN is re-opened first (``Link.begin``)."""
        if self.db.in_transaction():
            yield self.db
            return
        try:
            with self.db.begin():
                yield self.db
        except self._psycopg.errors.DiskFull:
            raise server_disk_full(self.where) from None
        except self._psycopg.OperationalError as exc:
            raise StoreError(f"the record database {shown_database_url(self.url)} failed: {_first_line(exc)}; "
                             "nothing of this change was written") from None
        except self._psycopg.errors.ReadOnlySqlTransaction as exc:
            raise StoreError(f"the record database {shown_database_url(self.url)} is read-only "
                             f"({_first_line(exc)}); nothing of this change was written") from None

    def close(self) -> None:
        if not self.db.closed:
            for name in list(self._locks):
                with contextlib.suppress(StoreError, self._psycopg.Error):
                    self._release(name)
            self.db.close()

    def destroy(self) -> None:
        """Erase the user's whole schema (``users rm``): every table, index and image row, in one
        statement under the user's lock; the table files are removed by PostgreSQL (docs/reliability.md
        says what its WAL and backups keep)."""
        from psycopg import sql

        with self.exclusive("users rm"):
            self.db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(self.schema)))
            self._destroyed = True
        self.db.close()

    # -- one writer across machines ------------------------------------------------------------

    @contextlib.contextmanager
    def exclusive(self, command: str, wait: float = 30.0) -> Iterator[None]:
        """Hold the user's advisory lock for ``command`` (re-entrant). Busy for longer than ``wait``
        seconds: StoreBusyError naming who holds it (host, PID, command, since)."""
        name = "writer"
        if name in self._locks:
            self._locks[name] += 1
            try:
                yield
            finally:
                self._locks[name] -= 1
            return
        key = self._lock_key()
        deadline = time.monotonic() + wait
        while not self.db.execute(f"SELECT {lock_call(key)} AS ok", key).fetchone()["ok"]:
            if time.monotonic() >= deadline:
                row = self.db.execute("SELECT * FROM holders WHERE lock=%s", (name,)).fetchone()
                who = (f"'{row['command']}' by PID {row['pid']} on {row['host']} since {row['since'][:19]}"
                       if row else "another personavlm process")
                raise StoreBusyError(f"user '{self.user}' is busy on the record database: {who}; wait for it "
                                     "to finish and try again")
            time.sleep(0.2)
        self._locks[name] = 1
        self._held[name] = key
        self._holding = command
        self.db.execute("INSERT INTO holders VALUES(%s,%s,%s,%s,%s) ON CONFLICT (lock) DO UPDATE SET "
                        "host=EXCLUDED.host, pid=EXCLUDED.pid, command=EXCLUDED.command, since=EXCLUDED.since",
                        (name, socket.gethostname(), os.getpid(), command, iso(now())))
        try:
            yield
        finally:
            self._locks[name] -= 1
            if self._locks[name] == 0:
                self._release(name)

    @contextlib.contextmanager
    def claim_job(self, job_id: int) -> Iterator[bool]:
        """True while this connection alone runs job ``job_id`` (an advisory lock per job, not waited
        for): two machines' update stages never run the same queued job at once."""
        key = self._lock_key(job_id)
        name = f"job {job_id}"
        mine = self.db.execute(f"SELECT {lock_call(key)} AS ok", key).fetchone()["ok"]
        if mine:
            self._held[name] = key
        try:
            yield bool(mine) and self.db.execute("SELECT 1 FROM jobs WHERE id=%s", (job_id,)).fetchone() is not None
        finally:
            if mine and self._held.pop(name, None) is not None:
                self.db.execute(f"SELECT {lock_call(key, 'pg_advisory_unlock')}", key)

    def _release(self, name: str) -> None:
        self._locks.pop(name, None)
        key = self._held.pop(name, None)
        self._holding = None
        if key is None:
            return
        try:
            if not self._destroyed:  # the holders table went with the schema
                self.db.execute("DELETE FROM holders WHERE lock=%s AND pid=%s AND host=%s",
                                (name, os.getpid(), socket.gethostname()))
        finally:
            self.db.execute(f"SELECT {lock_call(key, 'pg_advisory_unlock')}", key)

    # -- the hooks of SqlRecords -------------------------------------------------------------------

    PARAM = "%s"
    _HOLD = " FOR SHARE"

    def _in(self, column: str, values: list) -> tuple[str, list]:
        return f"{column} = ANY(%s)", [list(values)]

    def _chunks(self, ids: Iterable[str]) -> Iterator[list[str]]:
        ids = list(ids)
        if ids:
            yield ids

    def _execute_many(self, sql: str, rows: list[tuple]) -> None:
        def run(conn):
            with conn.cursor() as cur:
                cur.executemany(sql, rows)

        if rows:
            self.db.call(run, safe=idempotent(sql))

    def _tuples(self, sql: str, args: list) -> list[tuple]:
        from psycopg.rows import tuple_row

        def run(conn):
            with conn.cursor(row_factory=tuple_row) as cur:
                return cur.execute(sql, args).fetchall()

        return self.db.call(run, safe=True)

    # -- memories: what only PostgreSQL does --------------------------------------------------

    def lexical(self, query: str, k: int, types: Iterable[str] | None = None, since: float | None = None,
                until: float | None = None, include_superseded: bool = False) -> list[tuple[str, float]]:
        """BM25 over full-text search: any word of ``query`` (English stemming, like FTS5's porter
        tokenizer); (id, score), higher better. Term statistics (rows, document frequency, average
        lengths) are over all the user's memories, as FTS5's are; the filters apply to the results."""
        words = query_words(query)
        if not words:
            return []
        tsquery = " | ".join(f"'{w}'" for w in words)  # words are \w+: no quote can get in
        where, args = self._where(types, since, until, include_superseded, None)
        where = where.replace("WHERE ", "AND ") if where else ""
        sql = f"""
            WITH q AS (SELECT DISTINCT lexeme FROM unnest(to_tsvector('english'::regconfig, %s))),
            hits AS (
                SELECT m.rowid, u.lexeme,
                       (SELECT count(*) FROM unnest(u.weights) w WHERE w = 'A') AS tf_a,
                       (SELECT count(*) FROM unnest(u.weights) w WHERE w = 'B') AS tf_b
                FROM memories m, unnest(m.tsv) u
                WHERE m.tsv @@ to_tsquery('english'::regconfig, %s) AND u.lexeme IN (SELECT lexeme FROM q)),
            df AS (SELECT lexeme, count(DISTINCT rowid)::float8 AS df FROM hits GROUP BY lexeme),
            st AS (SELECT %s::float8 AS n, %s::float8 AS a_avg, %s::float8 AS b_avg)
            SELECT m.id, SUM(GREATEST(ln((st.n - df.df + 0.5) / (df.df + 0.5)), 1e-6) * (
                       1.0 * h.tf_a * 2.2 / (h.tf_a + 1.2 * (0.25 + 0.75 * m.text_len / st.a_avg)) +
                       0.5 * h.tf_b * 2.2 / (h.tf_b + 1.2 * (0.25 + 0.75 * m.kw_len / st.b_avg)))) AS score
            FROM hits h JOIN df USING (lexeme) CROSS JOIN st JOIN memories m ON m.rowid = h.rowid
            WHERE TRUE {where}
            GROUP BY m.id, m.rowid ORDER BY score DESC, m.rowid LIMIT %s"""
        # The collection's statistics come from the counters (a single row: read it apart, so that the
        # planner never guesses its size from dead versions of it).
        st = self.db.execute("SELECT n, a_sum, b_sum FROM lexstats").fetchone()
        n = max(int(st["n"]), 1)
        stats = [float(st["n"]), max(st["a_sum"] / n, 1.0), max(st["b_sum"] / n, 1.0)]
        rows = self.db.execute(sql, [" ".join(words), tsquery, *stats, *args, k]).fetchall()
        return [(r["id"], float(r["score"])) for r in rows]

    def compact(self) -> None:
        """Rewrite what held erased rows (VACUUM FULL: new files, the old ones dropped): the partitions a
        deletion marked (all of them after a deletion this code did not see), and the small tables."""
        sql = self._psycopg.sql
        marked = self.get_meta("compact_parts")
        if marked is None:
            marked = ([f"{table}_p{i}" for table in ("memories", "images") for i in range(PARTITIONS)]
                      if self.get_meta("compact_pending") else [])
        try:
            for table in [*sorted(set(marked)), *SMALL_TABLES]:
                self.db.execute(sql.SQL("VACUUM FULL {}").format(sql.Identifier(self.schema, table)))
        except DiskFullError:  # the deletion (and its compact_pending mark) is committed; the rewrite waits
            raise DiskFullError(f"the memories are erased, but the record database server {self.where} has no space "
                                "left to rewrite the tables that held them (VACUUM FULL), so their old copies stay in "
                                "its files until it can: the next command does it once space is freed") from None
        self.db.execute("DELETE FROM meta WHERE key IN ('compact_pending', 'compact_parts')")

    def delete(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        self._mark_parts("memories", "id", ids)
        return super().delete(ids)

    def _mark_parts(self, table: str, key: str, values: list[str]) -> None:
        """Note which partitions hold the rows about to be deleted, for ``compact``."""
        if not values:
            return
        found = self.db.execute(f"SELECT DISTINCT tableoid::regclass::text AS part FROM {table} WHERE {key} = ANY(%s)",
                                (values,)).fetchall()
        parts = {r["part"].rpartition(".")[2].strip('"') for r in found}
        if parts:
            self.set_meta("compact_parts", sorted(set(self.get_meta("compact_parts") or []) | parts))

    # -- images (the bytes live with the records) ----------------------------------------------

    def put_image(self, sha256: str, ext: str, data: bytes) -> None:
        self.db.execute("INSERT INTO images VALUES(%s,%s,%s,%s) ON CONFLICT (sha256) DO NOTHING",
                        (sha256, ext, data, iso(now())))

    def image_blob(self, sha256: str) -> tuple[str, bytes] | None:
        row = self.db.execute("SELECT ext, data FROM images WHERE sha256=%s", (sha256,)).fetchone()
        return (row["ext"], bytes(row["data"])) if row else None

    def has_image(self, sha256: str) -> bool:
        return self.db.execute("SELECT 1 FROM images WHERE sha256=%s", (sha256,)).fetchone() is not None

    def image_shas(self) -> set[str]:
        return {r["sha256"] for r in self.db.execute("SELECT sha256 FROM images").fetchall()}

    def delete_image(self, sha256: str) -> None:
        self._mark_parts("images", "sha256", [sha256])
        if self.db.execute("DELETE FROM images WHERE sha256=%s", (sha256,)).rowcount:
            self.set_meta("compact_pending", True)

    # -- pending work --------------------------------------------------------------------------

    def add_job(self, kind: str, payload: dict) -> int:
        return self.db.execute("INSERT INTO jobs(kind, payload, created_at) VALUES (%s,%s,%s) RETURNING id",
                               (kind, json.dumps(payload), iso(now()))).fetchone()["id"]

    def size_bytes(self) -> int:
        row = self.db.execute(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) AS n FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'", (self.schema,)).fetchone()
        return int(row["n"])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def probe(url: str, user: str, timeout: int = 5) -> dict:
    """What ``doctor`` says of the record database: reachable or why not, the server's version, the
    round-trip latency (median of 5 ``SELECT 1``), and for ``user``'s schema its format version, owner,
    and the outbox (memories whose vectors are not written yet, vector erasures queued). Never raises."""
    import statistics

    out: dict[str, Any] = {"reachable": False}
    try:
        psycopg, dict_row = _psycopg()
        check_database_url(url)
        conn = psycopg.connect(url, autocommit=True, row_factory=dict_row, connect_timeout=timeout,
                               application_name="personavlm-doctor")
    except StoreError as exc:
        out["problem"] = str(exc)
        return out
    except Exception as exc:  # doctor reports, never fails
        out["problem"] = _first_line(exc)
        return out
    try:
        out["reachable"] = True
        out["version"] = conn.execute("SHOW server_version").fetchone()["server_version"]
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            times.append(time.perf_counter() - t0)
        out["latency_ms"] = round(statistics.median(times) * 1000, 2)
        schema = schema_for(user)
        out["schema"] = schema
        sql = psycopg.sql
        if conn.execute("SELECT to_regclass(%s) AS t", (f'"{schema}".meta',)).fetchone()["t"] is None:
            out["format"] = None
            return out
        meta = {r["key"]: r["value"] for r in conn.execute(
            sql.SQL("SELECT key, value FROM {} WHERE key IN ('format_version', 'owner')").format(
                sql.Identifier(schema, "meta"))).fetchall()}
        out["format"] = int(meta.get("format_version", 0))
        out["format_known"] = FORMAT_VERSION
        out["owner"] = json.loads(meta["owner"]) if "owner" in meta else None
        out["vectors_waiting"] = conn.execute(sql.SQL("SELECT count(*) AS n FROM {} WHERE vector_state = 0").format(
            sql.Identifier(schema, "memories"))).fetchone()["n"]
        jobs = conn.execute(sql.SQL("SELECT payload FROM {} WHERE kind = 'vector_delete'").format(
            sql.Identifier(schema, "jobs"))).fetchall()
        out["erasures_pending"] = sum(len(json.loads(j["payload"]).get("ids", [])) for j in jobs)
    except Exception as exc:  # doctor reports, never fails
        out["problem"] = _first_line(exc)
    finally:
        conn.close()
    return out
