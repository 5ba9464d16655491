"""Where a user's image files live: a directory of the user (embedded), or the record database (server).

Both keep images content-addressed as ``<sha[:2]>/<sha>.<ext>`` (the ``path`` a memory's meta names)
under ``dir``. For a server store, ``dir`` (``<user dir>/image-cache``, never the embedded store's
``images``) is only a private local cache: the bytes live in the
record database next to the records (``PgRecordStore.put_image``), so every machine of the user sees
the same images; a machine writes a cached copy when it needs a file (CLIP embeds a path, a chat shows
one), and ``prune`` shreds the cached copies of images erased elsewhere.

Every method takes the record store it works with (a store forked for another thread has its own).
"""

from __future__ import annotations

import re
from pathlib import Path

from personavlm_cli.adapters.files import shred
from personavlm_cli.adapters.images import write_private

_REL = re.compile(r"([0-9a-f]{2})/([0-9a-f]{64})\.([a-z0-9]{1,5})")


def rel_path(sha256: str, ext: str) -> str:
    return f"{sha256[:2]}/{sha256}.{ext}"


def _sha_of(rel: str) -> tuple[str, str] | None:
    found = _REL.fullmatch(str(rel))
    return (found.group(2), found.group(3)) if found else None


def _write_private(dest: Path, data: bytes) -> None:
    """Atomically, mode 0600 in directories of mode 0700."""
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(dest, data)


class DirImages:
    """Embedded: the files under the user's directory are the images."""

    remote = False

    def __init__(self, directory: Path):
        self.dir = Path(directory)

    def store(self, records, path):
        """Check ``path`` is a safe image and keep a private copy; returns ``adapters.images.ImageInfo``."""
        from personavlm_cli.adapters.images import store_image

        return store_image(path, self.dir)

    def keep(self, records, rel: str) -> None:
        """Make sure the image named by a new memory is stored where the records are (a file here: nothing)."""

    def path(self, records, rel: str) -> Path:
        return self.dir / rel

    def read(self, records, sha256: str) -> tuple[str, bytes] | None:
        for p in sorted(self.dir.glob(f"{sha256[:2]}/{sha256}.*")):
            if p.is_file() and not p.is_symlink() and _sha_of(f"{p.parent.name}/{p.name}"):
                return p.suffix[1:], p.read_bytes()
        return None

    def put(self, records, sha256: str, ext: str, data: bytes) -> str:
        rel = rel_path(sha256, ext)
        dest = self.dir / rel
        if not dest.is_file():
            _write_private(dest, data)
        return rel

    def erase(self, records, sha256: str) -> None:
        for p in self.dir.glob(f"{sha256[:2]}/{sha256}.*"):
            shred(p)

    def shas(self, records) -> set[str]:
        out = set()
        if self.dir.is_dir():
            for p in self.dir.glob("??/*"):
                found = _sha_of(f"{p.parent.name}/{p.name}")
                if found and p.is_file():
                    out.add(found[0])
        return out

    def prune(self, records) -> int:
        return 0


class ServerImages(DirImages):
    """Server: the bytes are rows of the record database; ``dir`` is this machine's private cache."""

    remote = True
    CACHE = "image-cache"  # under the user directory: never the embedded store's "images"

    def store(self, records, path):
        info = super().store(records, path)  # checks the image, writes the cached copy
        records.put_image(info.sha256, Path(info.path).suffix[1:], Path(info.path).read_bytes())
        return info

    def keep(self, records, rel: str) -> None:
        found = _sha_of(rel)
        if found and not records.has_image(found[0]):
            local = self.dir / rel
            if local.is_file():
                records.put_image(found[0], found[1], local.read_bytes())

    def path(self, records, rel: str) -> Path:
        local = self.dir / rel
        found = _sha_of(rel)
        if found and not local.is_file():
            blob = records.image_blob(found[0])
            if blob is not None:
                _write_private(local, blob[1])
        return local

    def read(self, records, sha256: str) -> tuple[str, bytes] | None:
        return records.image_blob(sha256)

    def put(self, records, sha256: str, ext: str, data: bytes) -> str:
        records.put_image(sha256, ext, data)
        return rel_path(sha256, ext)

    def erase(self, records, sha256: str) -> None:
        records.delete_image(sha256)
        super().erase(records, sha256)

    def shas(self, records) -> set[str]:
        return records.image_shas()

    def prune(self, records) -> int:
        """Shred cached copies of images no longer in the record database (erased from another machine)."""
        cached = DirImages.shas(self, records)
        if not cached:
            return 0
        gone = {sha for sha in cached - records.image_shas() if not records.image_in_use(sha)}
        for sha in gone:
            DirImages.erase(self, records, sha)
        return len(gone)


def embedded_parts(user_dir: Path) -> dict:
    """``records`` and ``images`` of an embedded store in ``user_dir`` (the SQLite file, the image files):
    ``MemoryStore(user_dir, **embedded_parts(user_dir), text_encoder=..., ...)``."""
    from personavlm_cli.adapters.records import RecordStore

    directory = Path(user_dir)
    return {"records": lambda readonly=False: RecordStore(directory, readonly=readonly),
            "images": DirImages(directory / "images")}
