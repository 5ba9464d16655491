"""The portable archive: everything a user has, in a documented, versioned, verifiable zip.

Layout (format ``personavlm-archive`` version 1, see docs/formats.md):
  manifest.json      format, version, user, created_at, counts, embedding models, sha256 of every file
  memories.jsonl     one memory per line (every type, superseded versions included)
  personality.json   the current Big Five, the update count, and the full history with evidence
  state.json         consolidation state
  images/<sha256>.<ext>
Vectors are not exported: they are recomputed on import, so an archive moves between embedding
models. Import verifies every file's sha256 before it writes anything, then writes the records in
one transaction: a corrupt or tampered archive is refused whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
import zlib
from pathlib import Path

from personavlm_cli.core.errors import PersonaError
from personavlm_cli.core.memory import TYPES, Memory, from_iso, iso, now

FORMAT = "personavlm-archive"
VERSION = 1

# Members are read into memory: their sizes are checked from the zip's directory first (a zip
# bomb is refused before anything is decompressed; zipfile never returns more than the declared size).
MAX_MEMBER_BYTES = 1 << 30
MAX_TOTAL_BYTES = 4 << 30
_IMAGE_MEMBER = re.compile(r"images/([0-9a-f]{64})\.([a-z0-9]{1,5})")
_IMAGE_PATH = re.compile(r"([0-9a-f]{2})/([0-9a-f]{64})\.([a-z0-9]{1,5})")
_DATA_MEMBERS = ("memories.jsonl", "personality.json", "state.json")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export_archive(records, user_dir: Path, file: Path, user: str, models: dict | None = None,
                   progress=None) -> dict:
    memories = records.list(include_superseded=True)
    files: dict[str, bytes] = {
        "memories.jsonl": "".join(json.dumps(m.to_dict(), ensure_ascii=False) + "\n" for m in memories).encode(),
        "personality.json": json.dumps({
            "state": records.get_meta("personality"), "updates": records.get_meta("personality_updates") or 0,
            "history": records.personality_history()}, ensure_ascii=False, indent=1).encode(),
        "state.json": json.dumps({"consolidated": records.get_meta("consolidated", {}) or {}}).encode(),
    }
    images = {}
    images_dir = (Path(user_dir) / "images").resolve()
    for m in memories:
        if m.image_sha256 and m.meta.get("path"):
            src = Path(user_dir) / "images" / m.meta["path"]
            # Only content-addressed files of this store's images directory ever leave it.
            if (_IMAGE_PATH.fullmatch(str(m.meta["path"])) and src.is_file()
                    and src.resolve().is_relative_to(images_dir)):
                images[f"images/{src.name}"] = src
    manifest = {
        "format": FORMAT, "version": VERSION, "user": user, "created_at": iso(now()),
        "counts": {"memories": len(memories), "images": len(images),
                   "personality_updates": len(records.personality_history())},
        "embedding_models": models or {"text": "all-MiniLM-L6-v2-onnx-int8", "image": "open_clip ViT-B-32"},
        "files": {name: _sha(data) for name, data in files.items()},
    }
    for name, path in images.items():
        manifest["files"][name] = _sha(path.read_bytes())
    tmp = Path(str(file) + ".part")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    os.close(fd)
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", json.dumps(manifest, indent=1))
        for name, data in files.items():
            z.writestr(name, data)
        for i, (name, path) in enumerate(images.items(), 1):
            z.write(path, name)
            if progress:
                progress(i, len(images))
    os.replace(tmp, file)
    return manifest


def read_archive(file: Path) -> tuple[dict, dict[str, bytes]]:
    """Open and verify an archive; returns (manifest, files). Raises PersonaError if anything is off."""
    file = Path(file)
    if not file.is_file():
        raise PersonaError(f"archive not found: {file}")
    try:
        with zipfile.ZipFile(file) as z:
            infos = z.infolist()
            names = [i.filename for i in infos]
            if len(names) != len(set(names)):
                raise PersonaError(f"archive {file} has been altered (a member appears twice)")
            big = next((i for i in infos if i.file_size > MAX_MEMBER_BYTES), None)
            if big is not None or sum(i.file_size for i in infos) > MAX_TOTAL_BYTES:
                raise PersonaError(f"archive {file} is too large to import "
                                   f"({(big or infos[0]).filename if big else 'in total'})")
            if z.testzip() is not None:
                raise PersonaError(f"archive {file} is corrupt (a checksum does not match)")
            manifest = json.loads(z.read("manifest.json"))
            data = {name: z.read(name) for name in names if name != "manifest.json"}
    except (zipfile.BadZipFile, zlib.error, KeyError, ValueError, OSError, EOFError, zipfile.LargeZipFile,
            NotImplementedError, RuntimeError) as exc:
        raise PersonaError(f"archive {file} is corrupt or not a personavlm archive ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PersonaError(f"{file} is not a personavlm archive")
    if int(manifest.get("version", 0)) > VERSION:
        raise PersonaError(f"archive {file} has format version {manifest['version']}; upgrade personavlm")
    listed = manifest.get("files", {})
    if set(listed) != set(data):
        raise PersonaError(f"archive {file} has been altered (its files do not match its manifest)")
    for name, digest in listed.items():
        if _sha(data[name]) != digest:
            raise PersonaError(f"archive {file} has been altered ({name} does not match its sha256)")
    for name, blob in data.items():
        if name in _DATA_MEMBERS:
            continue
        found = _IMAGE_MEMBER.fullmatch(name)
        if found is None:
            raise PersonaError(f"archive {file} has an unexpected member {name!r}")
        if found.group(1) != _sha(blob):
            raise PersonaError(f"archive {file} has been altered ({name} is not named by its sha256)")
    if "memories.jsonl" not in data:
        raise PersonaError(f"archive {file} has no memories.jsonl")
    return manifest, data


def _parse_memories(data: dict[str, bytes]) -> list[Memory]:
    """The archive's memories, each checked as the record file will need it; raises PersonaError."""
    out: list[Memory] = []
    seen: set[str] = set()
    try:
        # Split on "\n" only: str.splitlines() also splits on U+2028, U+0085 and others, which
        # json.dumps(ensure_ascii=False) leaves unescaped inside a memory's text.
        lines = data["memories.jsonl"].decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise PersonaError("the archive's memories.jsonl is not UTF-8 text") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict):
                raise ValueError("not an object")
            m = Memory.from_dict(raw)
            _check_memory(m, data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise PersonaError(f"the archive's memory on line {n} is invalid ({_short(exc)}); nothing imported") from None
        if m.id in seen:
            raise PersonaError(f"the archive has memory {m.id} twice; nothing imported")
        seen.add(m.id)
        out.append(m)
    return out


def _check_memory(m: Memory, data: dict[str, bytes]) -> None:
    for key in ("id", "type", "text", "occurred_at", "created_at"):
        if not isinstance(getattr(m, key), str):
            raise ValueError(f"{key} must be a string")
    if m.type not in TYPES:
        raise ValueError(f"unknown type {m.type!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", m.id):
        raise ValueError("bad id")
    from_iso(m.occurred_at), from_iso(m.created_at)
    for key in ("occurred_end", "valid_to"):
        if getattr(m, key) is not None:
            from_iso(getattr(m, key))
    if not isinstance(m.source_ids, list) or not all(isinstance(x, str) for x in m.source_ids):
        raise ValueError("source_ids must be a list of ids")
    if not isinstance(m.meta, dict) or not isinstance(m.keywords, str):
        raise ValueError("meta must be an object and keywords a string")
    for key in ("role", "session_id", "image_sha256", "superseded_by"):
        if getattr(m, key) is not None and not isinstance(getattr(m, key), str):
            raise ValueError(f"{key} must be a string")
    path = m.meta.get("path")
    if path is not None:
        # An image memory names its file by content; anything else could point outside the store.
        found = _IMAGE_PATH.fullmatch(str(path))
        if not found or found.group(2) != m.image_sha256 or found.group(1) != m.image_sha256[:2]:
            raise ValueError(f"image path {str(path)[:80]!r} is not the content address of the image")


def _check_personality(personality: dict) -> None:
    from personavlm_cli.core.personality import TRAITS

    def vector(v) -> bool:
        return isinstance(v, dict) and all(isinstance(v.get(t), (int, float)) and not isinstance(v.get(t), bool)
                                           for t in TRAITS)

    state, history = personality.get("state"), personality.get("history", [])
    ok = (state is None or vector(state)) and isinstance(history, list) and all(
        isinstance(h, dict) and isinstance(h.get("at"), str) and vector(h.get("before")) and vector(h.get("after"))
        for h in history)
    if not ok:
        raise PersonaError("the archive's personality is invalid (a Big Five vector or a history entry is malformed); "
                           "nothing imported")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:120]


def import_archive(store, archive: tuple[dict, dict[str, bytes]]) -> dict:
    """Write a verified archive (from ``read_archive``) into ``store``; what is there already is kept.

    All or nothing: every memory is checked before anything is written, and the records, the
    personality history and the audit entry are one transaction. Image files are written before
    it, under a job that names them, committed first: a kill before the records commit leaves the
    job, and the next import shreds the files no record uses.
    """
    manifest, data = archive
    records = store.records
    finish_interrupted_imports(store)
    memories = _parse_memories(data)
    try:
        personality = json.loads(data.get("personality.json", b"{}"))
        state = json.loads(data.get("state.json", b"{}"))
        if not isinstance(personality, dict) or not isinstance(state, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise PersonaError(f"the archive's personality or state is invalid ({_short(exc)}); nothing imported") from None
    _check_personality(personality)
    existing = {m.id for m in records.list(include_superseded=True)}
    new = [m for m in memories if m.id not in existing]
    shipped = {name[len("images/"):] for name in data if name.startswith("images/")}
    for m in new:
        # An export skips an image file that was already gone; such a memory comes in as text only
        # (its vector is the text's), never pointing at a file that is not there.
        rel = m.meta.get("path")
        if rel and Path(rel).name not in shipped and not (store.images_dir / rel).is_file():
            m.meta = {k: v for k, v in m.meta.items() if k != "path"}
            m.meta["image_missing"] = True
    files = []
    for name, blob in data.items():
        if name.startswith("images/"):
            dest = store.images_dir / name[len("images/"):][:2] / name[len("images/"):]
            if not dest.exists():
                files.append((dest, blob))
    job = None
    if files:
        with records.transaction():
            job = records.add_job("import_files", {"paths": [str(d.relative_to(store.images_dir)) for d, _ in files]})
    for dest, blob in files:
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = dest.with_name(dest.name + ".part")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    try:
        with records.transaction():
            records.insert(new)
            if personality.get("state") and not records.get_meta("personality"):
                records.set_meta("personality", personality["state"])
                records.set_meta("personality_updates", personality.get("updates", 0))
                for h in personality.get("history", []):
                    records.add_personality(h)
            if state.get("consolidated"):
                done = records.get_meta("consolidated", {}) or {}
                records.set_meta("consolidated", {**state["consolidated"], **done})
            records.audit("import", [m.id for m in new])
            if job is not None:
                records.finish_job(job)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # Rolled back: the files written for it are shredded now, as a kill would have them later.
        finish_interrupted_imports(store)
        raise PersonaError(f"the archive's personality history is invalid ({_short(exc)}); nothing imported") from None
    store.sync_vectors()
    return {"added": len(new), "skipped": len(memories) - len(new), "manifest": manifest}


def finish_interrupted_imports(store) -> int:
    """Shred the image files of imports that were killed before their records were committed."""
    from personavlm_cli.adapters.files import shred

    records = store.records
    removed = 0
    for job in records.jobs(["import_files"]):
        for rel in job["payload"].get("paths", []):
            found = _IMAGE_PATH.fullmatch(str(rel))
            if not found:
                continue
            path = store.images_dir / rel
            for candidate in (path.with_name(path.name + ".part"), path):
                if candidate == path and records.image_in_use(found.group(2)):
                    continue
                if candidate.exists():
                    shred(candidate)
                    removed += 1
        with records.transaction():
            records.finish_job(job["id"])
    return removed
