"""The portable archive: everything a user has, in a documented, versioned, verifiable zip
(``ZipArchive``, the ``ArchiveFormat`` of core/ports.py; what goes in and the import's order are
``core/transfer.py``'s). This module writes it; ``adapters/archive_read.py`` reads it and
``adapters/archive_checks.py`` holds the checks every member must pass.

Layout (format ``personavlm-archive`` version 1, see docs/formats.md):
  manifest.json      format, version, user, created_at, counts, embedding models, sha256 of every file
  memories.jsonl     one memory per line (every type, superseded versions included)
  personality.json   the current Big Five, the update count, and the full history with evidence
  state.json         consolidation state
  images/<sha256>.<ext>
Vectors are not exported: they are recomputed on import, so an archive moves between embedding
models. Import checks everything before it writes anything: every file's size (declared in the zip
directory and actually read, both bounded) and sha256, every image member decodes as an image and is
used by a memory, every memory (types, times in order, roles, links, text size), the personality
(types and ranges) and the state; then it writes the records in one transaction. A corrupt, tampered
or hostile archive is refused whole with one line.
"""


from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from personavlm_cli.adapters.archive_checks import FORMAT, VERSION
from personavlm_cli.adapters.archive_read import Checked, Limits, Progress, _remove_partial, read_archive
from personavlm_cli.core.errors import StoreError, disk_full, is_disk_full
from personavlm_cli.core.memory import iso, now
from personavlm_cli.core.ports import ArchiveContents

__all__ = ["Checked", "Limits", "ZipArchive", "check_destination", "read_archive", "write_archive"]


class ZipArchive:
    """The archive's format: a versioned zip (docs/formats.md), read under ``limits``."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits

    def read(self, file: Path, progress: Progress | None = None) -> Checked:
        return read_archive(file, progress=progress, limits=self.limits)

    def write(self, file: Path, contents: ArchiveContents, progress: Callable[[int, int], None] | None = None
              ) -> dict[str, Any]:
        return write_archive(file, contents, progress)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_destination(file: Path) -> None:
    """An export replaces only a regular file (or creates one): never a device, a directory, a pipe or a
    link (``memory export /dev/full`` run as root would have replaced the device with the archive)."""
    import stat

    try:
        mode = os.lstat(file).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot write the archive {file}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        what = ("a directory" if stat.S_ISDIR(mode) else "a link" if stat.S_ISLNK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise StoreError(f"refusing to write the archive over {file}: it is {what}; give the path of a new "
                         "or a regular file")


def write_archive(file: Path, contents: ArchiveContents, progress: Callable[[int, int], None] | None = None
                  ) -> dict[str, Any]:
    """Write the archive to ``file`` through a temporary file of the same directory (owner-only), renamed
    over it once complete; ``file`` must be new or a regular file. Returns the manifest."""
    file = Path(file)
    check_destination(file)
    memories = contents.memories
    files: dict[str, bytes] = {
        "memories.jsonl": "".join(json.dumps(m.to_dict(), ensure_ascii=False) + "\n" for m in memories).encode(),
        "personality.json": json.dumps(contents.personality, ensure_ascii=False, indent=1).encode(),
        "state.json": json.dumps(contents.state).encode(),
    }
    images = {f"images/{name}": source for name, source in contents.images.items()}
    user, models = contents.user, contents.models
    digests = {name: _sha(data) for name, data in files.items()}
    for name, path in images.items():
        digests[name] = _sha(path if isinstance(path, bytes) else path.read_bytes())
    manifest = {
        "format": FORMAT, "version": VERSION, "user": user, "created_at": iso(now()),
        "counts": {"memories": len(memories), "images": len(images),
                   "personality_updates": len(contents.personality.get("history") or [])},
        "embedding_models": models or {"text": "all-MiniLM-L6-v2-onnx-int8", "image": "open_clip ViT-B-32"},
        "files": digests,
    }
    import tempfile

    try:  # a new name of the same directory (0600, never an existing file or a planted link)
        fd, name = tempfile.mkstemp(dir=file.parent if str(file.parent) else ".", prefix=f".{file.name}.",
                                    suffix=".part")
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(file.parent if str(file.parent) else Path(".")) from None
        raise StoreError(f"cannot write the archive {file}: {exc.strerror or exc}") from None
    tmp = Path(name)
    try:
        os.close(fd)
        check_destination(file)  # again, just before: nothing was made there meanwhile
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("manifest.json", json.dumps(manifest, indent=1))
            for name, data in files.items():
                z.writestr(name, data)
            for i, (name, path) in enumerate(images.items(), 1):
                if isinstance(path, bytes):
                    z.writestr(name, path)
                else:
                    z.write(path, name)
                if progress:
                    progress(i, len(images))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, file)
    except BaseException as exc:
        # Never leave a .part behind (it holds memory text): a full disk, a bad destination, Ctrl-C.
        if tmp.exists():
            _remove_partial(tmp)
        if isinstance(exc, OSError):
            if is_disk_full(exc):
                raise disk_full(file.parent if str(file.parent) else Path(".")) from None
            raise StoreError(f"cannot write the archive {file}: {exc.strerror or exc}") from None
        raise
    return manifest
