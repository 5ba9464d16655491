"""One writer per user store: an advisory lock that dies with its process (kill -9 included)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from personavlm_cli.core.errors import StoreBusyError, StoreError


class StoreLock:
    def __init__(self, user_dir: Path, user: str):
        self.path = Path(user_dir) / "lock"
        self.user = user
        self._fd: int | None = None

    def acquire(self) -> StoreLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except PermissionError:
            raise StoreError(f"cannot open user '{self.user}' for writing: {self.path.parent} is read-only "
                             "(permission denied); fix its permissions or use another user") from None
        except OSError as e:
            raise StoreError(f"cannot open user '{self.user}' for writing: {self.path} "
                             f"({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = os.pread(fd, 32, 0).decode().strip() or "?"
            finally:
                os.close(fd)
            raise StoreBusyError(
                f"user '{self.user}' is in use by another personavlm process (PID {pid}); "
                "close it or wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
