"""What makes an erased vector go: Chroma only marks a deletion (the HNSW index and its write-ahead log keep
the vector), so a shard that had one is copied, its live vectors only, into a fresh collection that replaces
it (``copy_live``), and an embedded store's files are compacted: the index directories of dropped
collections shredded, ``chroma.sqlite3`` vacuumed (``compact_local_files``). Which shards a purge rebuilds,
and when, is ``VectorIndex.purge``'s (adapters/vectors.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def copy_live(old: Any, spare: Any, page: int) -> int:
    """Add every vector of collection ``old`` (ids, embeddings, metadata, documents) to ``spare``, ``page``
    at a time; the number copied."""
    copied = 0
    while True:
        got = old.get(include=["embeddings", "metadatas", "documents"], limit=page, offset=copied)
        if not got["ids"]:
            break
        docs = got.get("documents")
        spare.add(ids=got["ids"], embeddings=got["embeddings"],
                  metadatas=[m or None for m in got["metadatas"]],
                  documents=[d or "" for d in docs] if docs and any(docs) else None)
        copied += len(got["ids"])
        if len(got["ids"]) < page:
            break
    return copied


def compact_local_files(path: Path) -> None:
    """Shred the index directories of dropped collections (Chroma leaves them on disk) and vacuum
    ``chroma.sqlite3``, where deleted rows would otherwise linger in free pages."""
    import sqlite3

    from personavlm_cli.adapters.files import shred_tree

    db = Path(path) / "chroma.sqlite3"
    if not db.exists():
        return
    con = sqlite3.connect(db, timeout=30)
    try:
        live = {str(r[0]) for r in con.execute("SELECT id FROM segments")}
        for entry in Path(path).iterdir():
            if entry.is_dir() and not entry.is_symlink() and _is_uuid(entry.name) and entry.name not in live:
                shred_tree(entry)
        con.execute("PRAGMA secure_delete=ON")
        con.execute("VACUUM")
    finally:
        con.close()


def _is_uuid(name: str) -> bool:
    import uuid

    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False
