"""Erasing files for real: overwrite, flush to disk, then unlink."""

from __future__ import annotations

import os
from pathlib import Path


def shred(path: Path) -> None:
    """Overwrite then unlink, so an erased file's bytes do not linger in its blocks (on the usual
    in-place filesystems; copy-on-write filesystems and SSD wear levelling are beyond a program's
    reach, see docs/reliability.md). A missing file is fine."""
    try:
        size = path.stat().st_size
        with open(path, "r+b") as fh:
            remaining = size
            block = b"\0" * min(size, 1 << 20)
            while remaining > 0:
                n = min(remaining, len(block))
                fh.write(block[:n])
                remaining -= n
            fh.flush()
            os.fsync(fh.fileno())
        path.unlink()
    except FileNotFoundError:
        pass


def shred_tree(root: Path) -> None:
    """Shred every file under ``root``, then remove its directories."""
    if not root.exists():
        return
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for f in filenames:
            p = Path(dirpath) / f
            if p.is_symlink():
                p.unlink()
            else:
                shred(p)
        for d in dirnames:
            p = Path(dirpath) / d
            if p.is_symlink():
                p.unlink()
            else:
                p.rmdir()
    root.rmdir()
