"""Moving a user's memories out and in: the portable archive as a use case (``memory export``/``import``,
``profile export --archive``/``import``).

An export gathers everything the user has (:func:`gather`: every memory, superseded versions included,
the personality with its history and evidence, the consolidation state, the image files of this
store) and hands it to the archive's format (``ArchiveFormat.write``, ``adapters/archive.py``), which
lays it out and writes it whole or not at all.

An import verifies everything before it writes anything (:func:`import_file`): the whole archive is
read and checked (``ArchiveFormat.read``) before the user's store is opened, an archive with nothing
to write creates nothing, and then :func:`import_archive` checks the version links against the store
and writes: the image files first, under a job that names them (a kill before the records commit leaves
the job, and the next writer open shreds the files no record uses), then the records, the personality
(when the store has none), the consolidation state and the audit entry in one transaction. What the
store holds already is kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from personavlm_cli.core.errors import PersonaError, StoreError, disk_full, is_disk_full
from personavlm_cli.core.memory import Memory

if TYPE_CHECKING:
    from personavlm_cli.core.ports import ArchiveFormat, CheckedArchive, RecordStore
    from personavlm_cli.core.store import MemoryStore

Progress = Callable[[str, int, int], None]  # (what, done, total)

_IMAGE_PATH = re.compile(r"([0-9a-f]{2})/([0-9a-f]{64})\.([a-z0-9]{1,5})")  # a content address in images/


@dataclass
class Export:
    """What an export gathers (``ArchiveContents`` of core/ports.py)."""

    user: str
    memories: list[Memory]
    personality: dict[str, Any]
    state: dict[str, Any]
    images: dict[str, Path | bytes]
    models: dict[str, str] | None = None


def gather(records: RecordStore, user_dir: Path, user: str, models: dict[str, str] | None = None) -> Export:
    """Everything ``user`` has: the records, and the image files of the store in ``user_dir``."""
    memories = records.list(include_superseded=True)
    personality = {"state": records.get_meta("personality"), "updates": records.get_meta("personality_updates") or 0,
                   "history": records.personality_history(), "evidence": records.get_meta("personality_evidence")}
    state = {"consolidated": records.get_meta("consolidated", {}) or {}}
    images: dict[str, Path | bytes] = {}
    images_dir = (Path(user_dir) / "images").resolve()
    for m in memories:
        if m.image_sha256 and m.meta.get("path"):
            src = Path(user_dir) / "images" / m.meta["path"]
            # Only content-addressed files of this store's images directory ever leave it.
            if (_IMAGE_PATH.fullmatch(str(m.meta["path"])) and src.is_file()
                    and src.resolve().is_relative_to(images_dir)):
                images[src.name] = src
            elif _IMAGE_PATH.fullmatch(str(m.meta["path"])) and records.remote:
                # A server store: the bytes live in the record database (this machine's cache may lack them).
                blob = records.image_blob(m.image_sha256)
                if blob is not None and _sha(blob[1]) == m.image_sha256:
                    images[src.name] = blob[1]
    return Export(user, memories, personality, state, images, models)


def export_archive(records: RecordStore, user_dir: Path, file: Path, user: str, archives: ArchiveFormat,
                   models: dict[str, str] | None = None, progress: Callable[[int, int], None] | None = None
                   ) -> dict[str, Any]:
    """Write everything ``user`` has to ``file`` (new, or a regular file replaced once complete); the manifest."""
    return archives.write(Path(file), gather(records, user_dir, user, models), progress)


def is_empty(archive: CheckedArchive) -> bool:
    """An archive with nothing to write: no memory, no personality, no state (its import creates nothing)."""
    return not archive.memories and not archive.personality.get("state") and not archive.state.get("consolidated")


def import_file(file: Path, archives: ArchiveFormat, open_store: Callable[[], MemoryStore],
                progress: Progress | None = None) -> dict[str, Any]:
    """Verify the whole archive, then (only if it holds something) open the store and write it in."""
    verified = archives.read(file, progress=progress)  # a corrupt, tampered or hostile archive: nothing created
    if is_empty(verified):  # nothing to write: the user's store is not created for it
        return {"added": 0, "skipped": 0, "manifest": verified.manifest, "empty": True}
    return import_archive(open_store(), verified, progress=progress)


def import_archive(store: MemoryStore, archive: CheckedArchive, progress: Progress | None = None) -> dict[str, Any]:
    """Write a checked archive (``ArchiveFormat.read``) into ``store``; what is there already is kept.

    All or nothing: everything is checked before anything is written (the archive, then its links
    against the store), and the records, the personality history and the audit entry are one
    transaction. Image files are written before it, under a job that names them, committed first: a
    kill before the records commit leaves the job, and the next writer open shreds the files no
    record uses. A full disk is its own one-line error, with every file written for it removed.
    """
    records = store.records
    records.finish_interrupted_imports(store.images_dir)
    memories, personality, state = archive.memories, archive.personality, archive.state
    existing = {m.id for m in records.list(include_superseded=True)}
    archive.check_links(existing)
    new = [m for m in memories if m.id not in existing]
    shipped = set(archive.images)
    for m in new:
        # An export skips an image file that was already gone; such a memory comes in as text only
        # (its vector is the text's), never pointing at a file that is not there.
        rel = m.meta.get("path")
        if rel and Path(rel).name not in shipped and not (store.images_dir / rel).is_file():
            m.meta = {k: v for k, v in m.meta.items() if k != "path"}
            m.meta["image_missing"] = True
    files = [(dest, name) for name in archive.images if not (dest := store.images_dir / name[:2] / name).exists()]
    job = None
    try:
        if files:
            with records.transaction():
                job = records.add_job("import_files", {"paths": [str(d.relative_to(store.images_dir)) for d, _ in files]})
            archive.copy_images(files, progress)
        with records.transaction():
            records.insert(new)
            if personality.get("state") and not records.get_meta("personality"):
                records.set_meta("personality", personality["state"])
                records.set_meta("personality_updates", personality.get("updates") or 0)
                for h in personality.get("history") or []:
                    records.add_personality(h)
                if personality.get("evidence"):  # what the reading rests on (core/personality.py)
                    records.set_meta("personality_evidence", personality["evidence"])
            if state.get("consolidated"):
                done = records.get_meta("consolidated", {}) or {}
                records.set_meta("consolidated", {**state["consolidated"], **done})
            records.audit("import", [m.id for m in new])
            store.keep_images(new)  # a server store: the image bytes go where the records are
            if job is not None:
                records.finish_job(job)
    except BaseException as exc:
        # Rolled back: the files written for it are shredded now, as a kill would have them later.
        if job is not None:
            try:
                records.finish_interrupted_imports(store.images_dir)
            except Exception:  # the next writer open finishes it
                pass
        if isinstance(exc, OSError):
            if is_disk_full(exc):
                raise disk_full(store.images_dir) from None
            raise StoreError(f"cannot write the imported images in {store.images_dir}: "
                             f"{exc.strerror or exc}") from None
        if isinstance(exc, (KeyError, TypeError, ValueError, AttributeError)):
            raise PersonaError(f"the archive's personality history is invalid ({_short(exc)}); "
                               "nothing imported") from None
        raise
    store.sync_vectors()
    return {"added": len(new), "skipped": len(memories) - len(new), "manifest": archive.manifest}


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text[:120]
