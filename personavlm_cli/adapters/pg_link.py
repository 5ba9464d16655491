"""The connection of a PostgreSQL record store that outlives a server restart, a dropped connection
and a failover (docs/deploy.md, "When a server is down").

:class:`Link` stands where a psycopg connection would (``execute``, ``cursor``, ``info``, ``close``)
and adds what a long-lived chat needs:

* **Before** a statement outside a transaction, and before ``BEGIN``, the connection is checked
  without a round trip: a connection psycopg knows is broken, or whose socket is readable while
  idle (the server's "terminating connection" message, or the end of the stream, waiting there), is
  re-opened first. An idle connection after a restart is therefore replaced before anything is sent.
* **When** a statement fails because the connection went away, it is re-run on a new connection
  only if that is safe: the server said it did not run it (``57P01`` admin shutdown, ``57P02``
  crash shutdown, ``57P03`` cannot connect now), or it reads, or its effect is the same run twice
  (``UPDATE``, ``DELETE``, ``INSERT ... ON CONFLICT``, ``SET``, ``VACUUM``, a lock claim on the new
  session). A plain ``INSERT`` outside a transaction whose outcome is unknown is not re-run: one line
  says it may not have been written.
* Inside a transaction nothing is re-run here: the caller's transaction fails as one unit ("nothing
  of this change was written") and the next one starts on a new connection; ``begin()`` re-sends a
  ``BEGIN`` that met a dead connection.
* Re-opening waits with bounded exponential backoff (0.2 s doubling to 2 s) for at most
  ``retry_s`` seconds, then raises one line: the record database is not reachable. Wrong
  credentials or a missing database are not waited for. The store's ``reopen`` hook restores the
  session (search path, read-only mode) and takes back the session locks it held.
"""

from __future__ import annotations

import contextlib
import re
import select
import time
from collections.abc import Callable, Iterator
from typing import Any

from personavlm_cli.core.errors import DiskFullError, StoreError, UnreachableError

RETRY_S = 30.0  # how long a lost connection is waited for by default (store.retry_seconds)
_NOT_RUN = {"57P01", "57P02", "57P03"}  # the server ended the session before running the statement
_PERMANENT = ("28", "3D")  # invalid authorization, invalid catalog name: waiting does not help
_SAFE = re.compile(r"^\s*(?:SELECT|WITH|SET|SHOW|UPDATE|DELETE|VACUUM|CREATE\s+SCHEMA\s+IF\s+NOT\s+EXISTS)\b", re.I)
_WRITES = re.compile(r"\b(?:INSERT|UPDATE|DELETE)\b", re.I)


def idempotent(query: Any) -> bool:
    """Is running ``query`` twice the same as running it once (or is it a read)?"""
    if not isinstance(query, str):
        return True  # composed statements here: SET search_path, VACUUM FULL, CREATE SCHEMA IF NOT EXISTS
    text = query.lstrip()
    if re.match(r"^(?:SELECT|WITH)\b", text, re.I):
        return not _WRITES.search(text)  # a read, or a lock claim (SELECT pg_try_advisory_lock)
    if re.match(r"^INSERT\b", text, re.I):
        return bool(re.search(r"\bON\s+CONFLICT\b", text, re.I))
    return bool(_SAFE.match(text))


def server_disk_full(where: str) -> DiskFullError:
    """The one line for a full disk on the database server (SQLSTATE 53100, ``could not extend file``):
    the statement or transaction was not written, and what was stored before is intact."""
    return DiskFullError(f"no space left on the record database server {where}: it cannot write until space is "
                         "freed there; nothing was lost")


def sqlstate(exc: BaseException) -> str:
    return getattr(exc, "sqlstate", None) or ""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class Link:
    """A psycopg connection that is re-opened when lost. ``connect(timeout)`` opens a new raw
    connection; ``reopen(conn)`` prepares it (search path, read-only, session locks)."""

    def __init__(self, conn, connect: Callable[[float], Any], reopen: Callable[[Any], None], where: str,
                 retry_s: float = RETRY_S):
        import psycopg

        self._psycopg = psycopg
        self.conn = conn
        self._connect = connect
        self._reopen = reopen
        self.where = where
        self.retry_s = retry_s
        self.reconnects = 0  # how many times the connection was re-opened (doctor, tests)

    # -- what a connection offers -----------------------------------------------------------------

    @property
    def info(self):
        return self.conn.info

    @property
    def closed(self) -> bool:
        return self.conn.closed

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()

    def in_transaction(self) -> bool:
        status = self._psycopg.pq.TransactionStatus
        return not self.conn.closed and self.conn.info.transaction_status in (status.INTRANS, status.INERROR,
                                                                              status.ACTIVE)

    def execute(self, query, params=None, **kwargs):
        return self.call(lambda conn: conn.execute(query, params, **kwargs), safe=idempotent(query))

    def cursor(self, **kwargs):
        if not self.in_transaction():
            self.ensure_alive()
        return self.conn.cursor(**kwargs)

    # -- surviving a lost connection ----------------------------------------------------------------

    def call(self, fn: Callable[[Any], Any], safe: bool) -> Any:
        """``fn(connection)``; re-run on a new connection after a loss when ``safe`` (or not run)."""
        if self.in_transaction():
            try:
                return fn(self.conn)  # the transaction fails as a whole; the next one reconnects
            except self._psycopg.errors.DiskFull:
                raise server_disk_full(self.where) from None
        deadline = None
        while True:
            self.ensure_alive(deadline)
            try:
                return fn(self.conn)
            except self._psycopg.errors.DiskFull:  # one statement refused, the connection is fine
                raise server_disk_full(self.where) from None
            except self._psycopg.OperationalError as exc:
                if not self.lost(exc):
                    raise
                self._drop()
                if not (safe or sqlstate(exc) in _NOT_RUN):
                    raise StoreError(f"the connection to the record database {self.where} was lost during a "
                                     f"write ({first_line(exc)}): it may not have been written; try again") from None
                deadline = deadline or time.monotonic() + self.retry_s

    @contextlib.contextmanager
    def begin(self) -> Iterator[Link]:
        """A transaction on a live connection: a ``BEGIN`` that meets a lost connection is sent again
        on a new one (nothing ran yet); a loss after it fails the transaction (the caller says so)."""
        deadline = None
        stack = contextlib.ExitStack()
        while True:
            self.ensure_alive(deadline)
            try:
                stack.enter_context(self.conn.transaction())
                break
            except self._psycopg.OperationalError as exc:
                if not self.lost(exc):
                    raise
                self._drop()
                deadline = deadline or time.monotonic() + self.retry_s
        with stack:
            yield self

    def lost(self, exc: BaseException) -> bool:
        """Did ``exc`` end the connection (rather than fail one statement)?"""
        state = sqlstate(exc)
        return (self.conn.closed or self.conn.broken or state[:2] == "08" or state in _NOT_RUN
                or not state and isinstance(exc, self._psycopg.OperationalError))

    def alive(self) -> bool:
        """No round trip: psycopg does not know it broken, and the idle socket has nothing waiting
        (a server that ended the session leaves its last message, or the end of the stream, there)."""
        if self.conn.closed or self.conn.broken:
            return False
        try:
            readable, _, _ = select.select([self.conn.pgconn.socket], [], [], 0)
        except (OSError, ValueError, self._psycopg.OperationalError):
            return False
        return not readable

    def ensure_alive(self, deadline: float | None = None) -> None:
        if not self.alive():
            self.reconnect(deadline)

    def _drop(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()

    def reconnect(self, deadline: float | None = None) -> None:
        """A new connection, waited for with backoff until ``deadline`` (``retry_s`` from now)."""
        self._drop()  # the old session's locks go with it before the new one claims them again
        deadline = deadline or time.monotonic() + self.retry_s
        delay = 0.2
        while True:
            left = deadline - time.monotonic()
            try:
                conn = self._connect(max(2.0, min(10.0, left)))
            except self._psycopg.OperationalError as exc:
                if sqlstate(exc)[:2] in _PERMANENT or _permanent_message(exc):
                    raise StoreError(f"the record database {self.where} refused the connection: "
                                     f"{first_line(exc)}") from None
                if time.monotonic() + delay > deadline:
                    reason = first_line(exc).rpartition("failed: ")[2] or first_line(exc)
                    raise UnreachableError(f"the record database {self.where} is not reachable ({reason}); "
                                           f"waited {self.retry_s:g} s for it to come back") from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            try:
                self._reopen(conn)
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.close()
                raise
            self.conn = conn
            self.reconnects += 1
            return


def _permanent_message(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "password authentication failed" in text or "does not exist" in text or "no password supplied" in text
