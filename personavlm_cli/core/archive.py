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
import zipfile
from pathlib import Path

from personavlm_cli.core.errors import PersonaError
from personavlm_cli.core.memory import Memory, iso, now

FORMAT = "personavlm-archive"
VERSION = 1


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
    for m in memories:
        if m.image_sha256 and m.meta.get("path"):
            src = Path(user_dir) / "images" / m.meta["path"]
            if src.exists():
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
            if z.testzip() is not None:
                raise PersonaError(f"archive {file} is corrupt (a checksum does not match)")
            manifest = json.loads(z.read("manifest.json"))
            data = {name: z.read(name) for name in z.namelist() if name != "manifest.json"}
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError, zipfile.LargeZipFile) as exc:
        raise PersonaError(f"archive {file} is corrupt or not a personavlm archive ({type(exc).__name__})") from None
    if manifest.get("format") != FORMAT:
        raise PersonaError(f"{file} is not a personavlm archive")
    if int(manifest.get("version", 0)) > VERSION:
        raise PersonaError(f"archive {file} has format version {manifest['version']}; upgrade personavlm")
    listed = manifest.get("files", {})
    if set(listed) != set(data):
        raise PersonaError(f"archive {file} has been altered (its files do not match its manifest)")
    for name, digest in listed.items():
        if _sha(data[name]) != digest:
            raise PersonaError(f"archive {file} has been altered ({name} does not match its sha256)")
    return manifest, data


def import_archive(store, archive: tuple[dict, dict[str, bytes]]) -> dict:
    """Write a verified archive (from ``read_archive``) into ``store``; what is there already is kept."""
    manifest, data = archive
    records = store.records
    memories = [Memory.from_dict(json.loads(line)) for line in data["memories.jsonl"].decode().splitlines() if line]
    for name, blob in data.items():
        if name.startswith("images/"):
            sha = Path(name).stem
            dest = store.images_dir / sha[:2] / Path(name).name
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                tmp = dest.with_suffix(".part")
                fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(blob)
                os.replace(tmp, dest)
    personality = json.loads(data.get("personality.json", b"{}"))
    state = json.loads(data.get("state.json", b"{}"))
    existing = {m.id for m in records.list(include_superseded=True)}
    new = [m for m in memories if m.id not in existing]
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
    store.sync_vectors()
    return {"added": len(new), "skipped": len(memories) - len(new), "manifest": manifest}
