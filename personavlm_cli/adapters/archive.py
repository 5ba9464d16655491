"""The portable archive: everything a user has, in a documented, versioned, verifiable zip.

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
import math
import os
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from personavlm_cli.core.errors import PersonaError, StoreError, disk_full, is_disk_full
from personavlm_cli.core.memory import (
    MAX_YEAR,
    MIN_YEAR,
    TRAITS,
    TYPES,
    Memory,
    MemoryType,
    from_iso,
    iso,
    now,
)

FORMAT = "personavlm-archive"
VERSION = 1

# Limits, checked before anything is written (docs/formats.md). Sizes are checked twice: as declared in
# the zip's directory (a zip bomb is refused before anything is decompressed) and as actually read
# (members are streamed in 1 MiB pieces and counted, so a member that lies about its size stops there).
MAX_MEMBER_BYTES = 1 << 30      # memories.jsonl, personality.json, state.json: each
MAX_MANIFEST_BYTES = 64 << 20   # manifest.json
MAX_IMAGE_BYTES = 50 << 20      # each image member (the limit of an attached image)
MAX_TOTAL_BYTES = 4 << 30       # all members together
MAX_MEMBERS = 200_004           # 200,000 images and the four data members
MAX_MEMORIES = 1_000_000
MAX_TEXT_CHARS = 256 * 1024     # one memory's text, in characters
MAX_KEYWORDS_CHARS = 4096
MAX_LINE_BYTES = 2 << 20        # one line of memories.jsonl (refused while reading: never all in memory)
MAX_RATIO = 200                 # uncompressed / compressed size of a member over RATIO_FLOOR (a bomb: ~1000)
RATIO_FLOOR = 1 << 20           # members smaller than this may compress as well as they like
_CHUNK = 1 << 20
_NONBLANK = re.compile(rb"[^ \t\r\n]")  # what JSON does not skip between values


@dataclass(frozen=True)
class Limits:
    """What an import may expand to (the settings ``archive.max_member_mb``, ``archive.max_ratio``,
    ``archive.max_line_kb``); None takes the module's default."""

    member_bytes: int | None = None
    ratio: int | None = None
    line_bytes: int | None = None

    def resolved(self) -> Limits:
        return Limits(self.member_bytes or MAX_MEMBER_BYTES, self.ratio or MAX_RATIO,
                      self.line_bytes or MAX_LINE_BYTES)

_IMAGE_MEMBER = re.compile(r"images/([0-9a-f]{64})\.([a-z0-9]{1,5})")
_IMAGE_PATH = re.compile(r"([0-9a-f]{2})/([0-9a-f]{64})\.([a-z0-9]{1,5})")
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_SHA = re.compile(r"[0-9a-f]{64}")
_DATA_MEMBERS = ("memories.jsonl", "personality.json", "state.json")
_ROLES = ("user", "assistant")

Progress = Callable[[str, int, int], None]  # (what, done, total)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _remove_partial(path: Path) -> None:
    """A half-written file may hold memory text: overwrite it before unlinking (fall back to unlink)."""
    from personavlm_cli.adapters.files import shred

    try:
        shred(path)
    except OSError:
        try:
            path.unlink()
        except OSError:
            pass


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


def export_archive(records, user_dir: Path, file: Path, user: str, models: dict | None = None,
                   progress=None) -> dict:
    """Write the archive to ``file`` through a temporary file of the same directory (owner-only), renamed
    over it once complete; ``file`` must be new or a regular file."""
    file = Path(file)
    check_destination(file)
    memories = records.list(include_superseded=True)
    files: dict[str, bytes] = {
        "memories.jsonl": "".join(json.dumps(m.to_dict(), ensure_ascii=False) + "\n" for m in memories).encode(),
        "personality.json": json.dumps({
            "state": records.get_meta("personality"), "updates": records.get_meta("personality_updates") or 0,
            "history": records.personality_history(),
            "evidence": records.get_meta("personality_evidence")}, ensure_ascii=False, indent=1).encode(),
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
            elif _IMAGE_PATH.fullmatch(str(m.meta["path"])) and records.remote:
                # A server store: the bytes live in the record database (this machine's cache may lack them).
                blob = records.image_blob(m.image_sha256)
                if blob is not None and _sha(blob[1]) == m.image_sha256:
                    images[f"images/{src.name}"] = blob[1]
    manifest = {
        "format": FORMAT, "version": VERSION, "user": user, "created_at": iso(now()),
        "counts": {"memories": len(memories), "images": len(images),
                   "personality_updates": len(records.personality_history())},
        "embedding_models": models or {"text": "all-MiniLM-L6-v2-onnx-int8", "image": "open_clip ViT-B-32"},
        "files": {name: _sha(data) for name, data in files.items()},
    }
    for name, path in images.items():
        manifest["files"][name] = _sha(path if isinstance(path, bytes) else path.read_bytes())
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


# --- reading and checking ---------------------------------------------------------------------


@dataclass(frozen=True)
class ImageMember:
    """An image member of a checked archive: its size, sha256 (= its name) and decoding were verified
    by ``read_archive``; the bytes stay in the zip (read again, and checked again, when written)."""

    name: str
    sha256: str
    size: int
    file: Path = field(compare=False)

    def open(self, z: zipfile.ZipFile):
        return z.open(self.name)


class Checked(tuple):
    """``(manifest, files)`` from ``read_archive``, with the parsed and checked contents attached."""

    memories: list
    personality: dict
    state: dict
    file: Path


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def strict_json(raw: bytes | str):
    """json.loads without NaN, Infinity or numbers that overflow to them; deep nesting is a ValueError."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nested too deeply") from None


class _MemoryLines:
    """memories.jsonl parsed line by line while the member is streamed: one line at a time in memory (a
    line over the limit is refused as soon as it is), each line checked into a ``Memory``. Blank stretches
    are skipped at C speed (a bomb of newlines or spaces costs no Python loop per line). A problem other
    than a long line is kept, not raised, so that a member that fails its sha256 is reported as altered."""

    def __init__(self, line_limit: int):
        self.limit, self.line = line_limit, 0
        self.tail = bytearray()   # the text of the current line so far (once it has any)
        self.blank = 0            # the blank bytes of the current line before its text
        self.memories: list[Memory] = []
        self.seen: set[str] = set()
        self.problem: PersonaError | None = None

    def __call__(self, chunk: bytes) -> None:
        pos, n = 0, len(chunk)
        while pos < n and self.problem is None:
            if not self.tail:  # between lines, or in a blank one: skip to the next text
                found = _NONBLANK.search(chunk, pos)
                stop = found.start() if found else n
                if stop > pos:
                    self._blank(chunk, pos, stop)
                    pos = stop
                    continue
            end = chunk.find(b"\n", pos)
            if end == -1:
                self.tail += chunk[pos:]
                if self.blank + len(self.tail) > self.limit:
                    self._refuse_long(self.line + 1)
                return
            self.tail += chunk[pos:end]
            piece, self.tail = bytes(self.tail), bytearray()
            size, self.blank = self.blank + len(piece), 0
            self._line(piece, size)
            pos = end + 1

    def _blank(self, chunk: bytes, start: int, stop: int) -> None:
        """chunk[start:stop] holds only blanks: count the lines it ends, check their lengths."""
        ends = chunk.count(b"\n", start, stop)
        if not ends:
            self.blank += stop - start
        else:
            if self.blank + chunk.find(b"\n", start, stop) - start > self.limit:
                self._refuse_long(self.line + 1)
            if stop - start > self.limit:  # only then can a whole line inside it be too long
                lengths = list(map(len, chunk[start:stop].split(b"\n")[1:-1]))
                if lengths and max(lengths) > self.limit:
                    self._refuse_long(self.line + 2 + next(i for i, k in enumerate(lengths) if k > self.limit))
            self.line += ends
            self.blank = stop - chunk.rfind(b"\n", start, stop) - 1
        if self.blank > self.limit:
            self._refuse_long(self.line + 1)

    def finish(self) -> list[Memory]:
        if self.problem is None and self.tail:
            piece = bytes(self.tail)
            self._line(piece, self.blank + len(piece))
            self.tail = bytearray()
        if self.problem is not None:
            raise self.problem
        return self.memories

    def _refuse_long(self, n: int) -> None:
        # At once, as the member is read: the rest of a hostile line is never decompressed.
        raise PersonaError(f"the archive's memory on line {n} is too large (over {_size(self.limit)}, "
                                    "archive.max_line_kb); nothing imported")

    def _line(self, raw: bytes, size: int) -> None:
        self.line += 1
        if size > self.limit:
            self._refuse_long(self.line)
        if not raw.strip():
            return
        try:
            # Split on "\n" only: str.splitlines() also splits on U+2028, U+0085 and others, which
            # json.dumps(ensure_ascii=False) leaves unescaped inside a memory's text.
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.problem = PersonaError("the archive's memories.jsonl is not UTF-8 text")
            return
        try:
            self._add(_parse_memory_line(line, self.line))
        except PersonaError as exc:
            self.problem = exc

    def _add(self, m: Memory) -> None:
        if m.id in self.seen:
            raise PersonaError(f"the archive has memory {m.id} twice; nothing imported")
        self.seen.add(m.id)
        self.memories.append(m)
        if len(self.memories) > MAX_MEMORIES:
            raise PersonaError(f"the archive has more than {MAX_MEMORIES} memories; nothing imported")


def _stream(z: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, file: Path, keep: bool,
            on_chunk: Callable[[bytes], None] | None = None, ratio: int | None = None) -> tuple[str, int, bytes | None]:
    """Read one member in pieces: (sha256, bytes actually read, the bytes if ``keep``). What the zip's
    headers declared is enforced while reading: the size, the limit, and the compression ratio."""
    digest, n, parts = hashlib.sha256(), 0, []
    ratio = ratio or MAX_RATIO
    with z.open(info) as fh:
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            n += len(chunk)
            if n > limit:
                raise PersonaError(f"archive {file} is too large to import ({info.filename} is over "
                                   f"{_size(limit)}); nothing imported")
            if n > info.file_size:
                raise PersonaError(f"archive {file} has been altered ({info.filename} is larger than its "
                                   "header says); nothing imported")
            if n > RATIO_FLOOR and n > ratio * max(info.compress_size, 1):
                raise _bomb(file, info, ratio)
            digest.update(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
            if keep:
                parts.append(chunk)
    return digest.hexdigest(), n, b"".join(parts) if keep else None


def _size(n: int) -> str:
    return f"{n >> 30} GiB" if n >= 1 << 30 else f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} bytes"


def _bomb(file: Path, info: zipfile.ZipInfo, ratio: int) -> PersonaError:
    times = info.file_size // max(info.compress_size, 1)
    expands = times if times > ratio else f"over {ratio}"
    return PersonaError(f"archive {file} is too large to import: {info.filename} expands {expands} "
                        f"times its compressed size (limit {ratio}, archive.max_ratio; a zip bomb?); nothing imported")


def _limit(name: str, member_bytes: int | None = None) -> int:
    if name == "manifest.json":
        return MAX_MANIFEST_BYTES
    if name in _DATA_MEMBERS:
        return member_bytes or MAX_MEMBER_BYTES
    return MAX_IMAGE_BYTES


def read_archive(file: Path, progress: Progress | None = None, limits: Limits | None = None) -> Checked:
    """Open and check an archive completely (nothing is written): returns (manifest, files), where
    files maps data members to their bytes (memories.jsonl: parsed while read, in ``.memories``) and
    image members to ``ImageMember``. Every member is bounded before it is expanded (``limits``: its
    size and compression ratio from the zip's headers, enforced again while reading; one line of
    memories.jsonl at a time). Raises PersonaError (one line) if anything is off."""
    file = Path(file)
    if not file.is_file():
        raise PersonaError(f"archive not found: {file}")
    limits = (limits or Limits()).resolved()
    try:
        with zipfile.ZipFile(file) as z:
            manifest, data, memories = _read_members(z, file, progress, limits)
    except PersonaError:
        raise
    except MemoryError:
        raise PersonaError(f"archive {file} is too large to import (out of memory); nothing imported") from None
    except (zipfile.BadZipFile, zlib.error, KeyError, ValueError, OSError, EOFError, zipfile.LargeZipFile,
            NotImplementedError, RuntimeError, OverflowError) as exc:
        raise PersonaError(f"archive {file} is corrupt or not a personavlm archive ({type(exc).__name__})") from None
    if memories is None:
        raise PersonaError(f"archive {file} has no memories.jsonl")
    personality, state = _parse_personality_and_state(data)
    _check_links(memories, known=None)
    _check_images_used(file, memories, data)
    out = Checked((manifest, data))
    out.memories, out.personality, out.state, out.file = memories, personality, state, file
    return out


def _read_members(z: zipfile.ZipFile, file: Path, progress: Progress | None,
                  limits: Limits) -> tuple[dict, dict, list | None]:
    infos = z.infolist()
    names = [i.filename for i in infos]
    if len(names) > MAX_MEMBERS:
        raise PersonaError(f"archive {file} has too many members ({len(names)}, limit {MAX_MEMBERS}); "
                           "nothing imported")
    if len(names) != len(set(names)):
        raise PersonaError(f"archive {file} has been altered (a member appears twice)")
    for name in names:
        if name != "manifest.json" and name not in _DATA_MEMBERS and not _IMAGE_MEMBER.fullmatch(name):
            raise PersonaError(f"archive {file} has an unexpected member {_shown(name)}")
    big = next((i for i in infos if i.file_size > _limit(i.filename, limits.member_bytes)), None)
    if big is not None:
        raise PersonaError(f"archive {file} is too large to import ({big.filename} declares "
                           f"{big.file_size} bytes, limit {_size(_limit(big.filename, limits.member_bytes))}"
                           f"{', archive.max_member_mb' if big.filename in _DATA_MEMBERS else ''}); nothing imported")
    bomb = next((i for i in infos if i.file_size > RATIO_FLOOR
                 and i.file_size > limits.ratio * max(i.compress_size, 1)), None)
    if bomb is not None:  # from the headers, before anything is decompressed
        raise _bomb(file, bomb, limits.ratio)
    if sum(i.file_size for i in infos) > MAX_TOTAL_BYTES:
        raise PersonaError(f"archive {file} is too large to import (in total, limit {_size(MAX_TOTAL_BYTES)}); "
                           "nothing imported")
    if "manifest.json" not in names:
        raise PersonaError(f"{file} is not a personavlm archive (no manifest.json)")
    by_name = {i.filename: i for i in infos}
    try:
        manifest = strict_json(_stream(z, by_name["manifest.json"], MAX_MANIFEST_BYTES, file, keep=True)[2])
    except (ValueError, UnicodeDecodeError):
        raise PersonaError(f"{file} is not a personavlm archive (its manifest is not valid JSON)") from None
    listed = _check_manifest(manifest, file)
    members = [n for n in names if n != "manifest.json"]
    if set(listed) != set(members):
        raise PersonaError(f"archive {file} has been altered (its files do not match its manifest)")
    data: dict = {}
    memories = None
    images = [n for n in members if n not in _DATA_MEMBERS]
    for name in members:
        if name not in _DATA_MEMBERS:
            continue
        lines = _MemoryLines(limits.line_bytes) if name == "memories.jsonl" else None
        digest, _n, blob = _stream(z, by_name[name], limits.member_bytes, file, keep=lines is None,
                                   on_chunk=lines, ratio=limits.ratio)
        if digest != listed[name]:
            raise PersonaError(f"archive {file} has been altered ({name} does not match its sha256)")
        if lines is not None:
            memories = lines.finish()
        else:
            data[name] = blob
    for i, name in enumerate(images, 1):
        digest, n, blob = _stream(z, by_name[name], MAX_IMAGE_BYTES, file, keep=True, ratio=limits.ratio)
        if digest != listed[name]:
            raise PersonaError(f"archive {file} has been altered ({name} does not match its sha256)")
        if _IMAGE_MEMBER.fullmatch(name).group(1) != digest:
            raise PersonaError(f"archive {file} has been altered ({name} is not named by its sha256)")
        _check_image(file, name, blob)
        data[name] = ImageMember(name=name, sha256=digest, size=n, file=file)
        if progress is not None:
            progress("checking images", i, len(images))
    return manifest, data, memories


def _check_manifest(manifest, file: Path) -> dict:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PersonaError(f"{file} is not a personavlm archive")
    version = manifest.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PersonaError(f"archive {file} has an invalid format version ({_shown(version)}): "
                           f"expected a whole number such as {VERSION}")
    if version > VERSION:
        raise PersonaError(f"archive {file} has format version {version if version < 10**6 else 'too new'}; "
                           "upgrade personavlm")
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed or not all(
            isinstance(k, str) and isinstance(v, str) and _SHA.fullmatch(v) for k, v in listed.items()):
        raise PersonaError(f"archive {file} has a malformed manifest ('files' must map each member to its sha256)")
    return listed


def _check_image(file: Path, name: str, blob: bytes) -> None:
    """An image member must decode as an image of a supported format, under the attachment limits."""
    from personavlm_cli.adapters import images as img
    from personavlm_cli.core.errors import ImageError

    ext = _IMAGE_MEMBER.fullmatch(name).group(2)
    if ext not in set(img.EXTENSIONS.values()):
        raise PersonaError(f"archive {file}: {name} is not an image file name (.{ext}); nothing imported")
    try:
        im = img._open(blob, name)
        try:
            img._decode_first_frame(im, name)
        finally:
            im.close()
    except ImageError as exc:
        raise PersonaError(f"archive {file}: {exc}; nothing imported") from None


def _shown(value) -> str:
    text = repr(value) if not isinstance(value, str) else "'" + value + "'"
    text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_memory_line(line: str, n: int) -> Memory:
    """One line of memories.jsonl, checked as the record file will need it; raises PersonaError."""
    try:
        raw = strict_json(line)
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        m = Memory.from_dict(raw)
        _check_memory(m)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise PersonaError(f"the archive's memory on line {n} is invalid ({_short(exc)}); nothing imported") from None
    return m


def _time(value: str, key: str):
    when = from_iso(value)
    if not MIN_YEAR <= when.year <= MAX_YEAR:
        raise ValueError(f"{key} is out of range (years {MIN_YEAR}-{MAX_YEAR})")
    when.timestamp()
    return when


def _check_memory(m: Memory) -> None:
    for key in ("id", "type", "text", "occurred_at", "created_at"):
        if not isinstance(getattr(m, key), str):
            raise ValueError(f"{key} must be a string")
    if m.type not in TYPES:
        raise ValueError(f"unknown type {_shown(m.type)}")
    if not _ID.fullmatch(m.id):
        raise ValueError("bad id")
    if len(m.text) > MAX_TEXT_CHARS:
        raise ValueError(f"its text is {len(m.text)} characters, over the limit of {MAX_TEXT_CHARS}")
    start = _time(m.occurred_at, "occurred_at")
    _time(m.created_at, "created_at")
    if m.occurred_end is not None:
        if not isinstance(m.occurred_end, str):
            raise ValueError("occurred_end must be a string")
        if _time(m.occurred_end, "occurred_end") < start:
            raise ValueError("occurred_end is before occurred_at")
    if m.valid_to is not None:
        if not isinstance(m.valid_to, str):
            raise ValueError("valid_to must be a string")
        _time(m.valid_to, "valid_to")
    if not isinstance(m.source_ids, list) or not all(isinstance(x, str) and _ID.fullmatch(x) for x in m.source_ids):
        raise ValueError("source_ids must be a list of ids")
    if not isinstance(m.meta, dict) or not isinstance(m.keywords, str):
        raise ValueError("meta must be an object and keywords a string")
    if len(m.keywords) > MAX_KEYWORDS_CHARS:
        raise ValueError(f"its keywords are over the limit of {MAX_KEYWORDS_CHARS} characters")
    for key in ("role", "session_id", "image_sha256", "superseded_by"):
        if getattr(m, key) is not None and not isinstance(getattr(m, key), str):
            raise ValueError(f"{key} must be a string")
    if m.role is not None and m.role not in _ROLES:
        raise ValueError(f"role {_shown(m.role)} is not user or assistant")
    if m.type == MemoryType.TURN and m.role is None:
        raise ValueError("a turn must have the role user or assistant")
    if m.session_id is not None and len(m.session_id) > 256:
        raise ValueError("session_id is too long")
    if m.superseded_by is not None and not _ID.fullmatch(m.superseded_by):
        raise ValueError("superseded_by is not an id")
    if m.superseded_by == m.id:
        raise ValueError("it supersedes itself")
    if m.image_sha256 is not None and not _SHA.fullmatch(m.image_sha256):
        raise ValueError("image_sha256 is not a sha256")
    path = m.meta.get("path")
    if path is not None:
        # An image memory names its file by content; anything else could point outside the store.
        found = _IMAGE_PATH.fullmatch(str(path))
        if not found or found.group(2) != m.image_sha256 or found.group(1) != m.image_sha256[:2]:
            raise ValueError(f"image path {str(path)[:80]!r} is not the content address of the image")


def _check_links(memories: list[Memory], known: set[str] | None) -> None:
    """Version links: no loop among the archive's memories; with ``known`` (the store's ids) given,
    every ``superseded_by`` names a memory of the archive or of the store."""
    successor = {m.id: m.superseded_by for m in memories if m.superseded_by is not None}
    ids = {m.id for m in memories}
    if known is not None:
        for m in memories:
            if m.superseded_by is not None and m.superseded_by not in ids and m.superseded_by not in known:
                raise PersonaError(f"the archive's memory {m.id} is superseded by {m.superseded_by}, which is "
                                   "neither in the archive nor in the store; nothing imported")
    done: set[str] = set()
    for first in successor:
        path: set[str] = set()
        at = first
        while at in successor and at not in done:
            if at in path:
                raise PersonaError(f"the archive's versions of memory {at} form a loop (superseded_by leads "
                                   "back to itself); nothing imported")
            path.add(at)
            at = successor[at]
        done |= path


def _check_images_used(file: Path, memories: list[Memory], data: dict) -> None:
    used = {Path(str(m.meta["path"])).name for m in memories if m.meta.get("path")}
    for name in data:
        if name.startswith("images/") and name[len("images/"):] not in used:
            raise PersonaError(f"archive {file} has an image member no memory uses ({name}); nothing imported")


def _is_number(v, low: float, high: float) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high)


def _parse_personality_and_state(data: dict) -> tuple[dict, dict]:
    try:
        personality = strict_json(data.get("personality.json", b"{}"))
        state = strict_json(data.get("state.json", b"{}"))
        if not isinstance(personality, dict) or not isinstance(state, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise PersonaError(f"the archive's personality or state is invalid ({_short(exc)}); nothing imported") from None
    problem = _personality_problem(personality)
    if problem:
        raise PersonaError(f"the archive's personality is invalid ({problem}); nothing imported")
    consolidated = state.get("consolidated", {})
    if consolidated is None:
        consolidated = {}
    if not isinstance(consolidated, dict) or not all(
            isinstance(k, str) and len(k) <= 256 and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 53
            for k, v in consolidated.items()):
        raise PersonaError("the archive's state is invalid ('consolidated' must map sessions to turn counts); "
                           "nothing imported")
    return personality, {**state, "consolidated": consolidated}


def _personality_problem(personality: dict) -> str | None:
    """What is wrong with the personality block (types and ranges), or None."""

    def vector_problem(v, what: str) -> str | None:
        if not isinstance(v, dict) or set(v) != set(TRAITS):
            return f"{what} must give the five traits"
        bad = next((t for t in TRAITS if not _is_number(v[t], 1, 5)), None)
        return f"{what}: {bad} must be a number from 1 to 5" if bad else None

    state = personality.get("state")
    if state is not None and (problem := vector_problem(state, "the state")):
        return problem
    updates = personality.get("updates", 0)
    if updates is None:
        updates = 0
    if not isinstance(updates, int) or isinstance(updates, bool) or not 0 <= updates < 1 << 53:
        return "'updates' must be a count"
    history = personality.get("history", [])
    if history is None:
        history = []
    if not isinstance(history, list):
        return "'history' must be a list"
    for i, h in enumerate(history, 1):
        where = f"history entry {i}"
        if not isinstance(h, dict):
            return f"{where} is not an object"
        try:
            if not isinstance(h.get("at"), str):
                raise ValueError
            _time(h["at"], "at")
        except (ValueError, OverflowError):
            return f"{where}: 'at' is not a time"
        if h.get("turn_id") is not None and not (isinstance(h["turn_id"], str) and _ID.fullmatch(h["turn_id"])):
            return f"{where}: 'turn_id' is not an id"
        m = h.get("m")
        if not isinstance(m, int) or isinstance(m, bool) or not 0 <= m < 1 << 53:
            return f"{where}: 'm' must be a count"
        if h.get("lambda") is not None and not _is_number(h["lambda"], 0, 1):
            return f"{where}: 'lambda' must be a number from 0 to 1"
        inferred = h.get("inferred")
        if inferred is not None and not (isinstance(inferred, dict) and set(inferred) <= set(TRAITS)
                                         and all(_is_number(v, 1, 5) for v in inferred.values())):
            return f"{where}: 'inferred' must map traits to numbers from 1 to 5"
        for key in ("before", "after"):
            if problem := vector_problem(h.get(key), f"{where} '{key}'"):
                return problem
        if not isinstance(h.get("note", ""), str) or len(h.get("note", "")) > MAX_KEYWORDS_CHARS:
            return f"{where}: 'note' must be a short text"
    return _evidence_problem(personality.get("evidence"))


def _evidence_problem(evidence) -> str | None:
    """What is wrong with the evidence block (the totals and the sentences' spans), or None."""
    if evidence is None:
        return None
    if not isinstance(evidence, dict) or not isinstance(evidence.get("totals"), dict) \
            or not isinstance(evidence.get("items", []), list):
        return "'evidence' must hold 'totals' and a list of 'items'"
    for t, total in evidence["totals"].items():
        if t not in TRAITS or not isinstance(total, dict) or not _is_number(total.get("weight"), 0, 1e9) \
                or not _is_number(total.get("sum"), -1e9, 1e9):
            return f"evidence totals: '{_short(t)}' must be a trait with a weight and a sum"
    for i, e in enumerate(evidence.get("items", []), 1):
        where = f"evidence item {i}"
        if not isinstance(e, dict) or e.get("trait") not in TRAITS:
            return f"{where} must name a trait"
        start, end = e.get("start"), e.get("end")
        if not (isinstance(start, int) and isinstance(end, int) and not isinstance(start, bool)
                and not isinstance(end, bool) and 0 <= start <= end < 1 << 40):
            return f"{where}: 'start' and 'end' must be a span"
        if not all(_is_number(e.get(k), lo, hi) for k, lo, hi in (("direction", -1, 1), ("weight", 0, 1),
                                                                   ("moved", -4, 4))):
            return f"{where}: 'direction', 'weight' and 'moved' must be numbers in range"
        if e.get("turn_id") is not None and not (isinstance(e["turn_id"], str) and _ID.fullmatch(e["turn_id"])):
            return f"{where}: 'turn_id' is not an id"
        if not isinstance(e.get("marker", ""), str) or len(e.get("marker", "")) > MAX_KEYWORDS_CHARS \
                or not isinstance(e.get("at", ""), str):
            return f"{where}: 'marker' and 'at' must be short texts"
    return None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text[:120]


# --- writing ----------------------------------------------------------------------------------


def import_archive(store, archive, progress: Progress | None = None) -> dict:
    """Write a checked archive (from ``read_archive``) into ``store``; what is there already is kept.

    All or nothing: everything is checked before anything is written (``read_archive``, then the
    links against the store), and the records, the personality history and the audit entry are one
    transaction. Image files are written before it, under a job that names them, committed first: a
    kill before the records commit leaves the job, and the next writer open shreds the files no
    record uses. A full disk is its own one-line error, with every file written for it removed.
    """
    if not isinstance(archive, Checked):  # a bare (manifest, files) tuple: check it the same way
        raise TypeError("import_archive takes what read_archive returns")
    manifest, data = archive
    records = store.records
    finish_interrupted_imports(store)
    memories, personality, state = archive.memories, archive.personality, archive.state
    existing = {m.id for m in records.list(include_superseded=True)}
    _check_links(memories, known=existing)
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
    for name, member in data.items():
        if isinstance(member, ImageMember):
            base = name[len("images/"):]
            dest = store.images_dir / base[:2] / base
            if not dest.exists():
                files.append((dest, member))
    job = None
    try:
        if files:
            with records.transaction():
                job = records.add_job("import_files", {"paths": [str(d.relative_to(store.images_dir)) for d, _ in files]})
            _write_images(archive.file, files, progress)
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
                finish_interrupted_imports(store)
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
    return {"added": len(new), "skipped": len(memories) - len(new), "manifest": manifest}


def _write_images(file: Path, files: list, progress: Progress | None) -> None:
    """Copy the image members out of the zip (each checked again against its sha256 as it is written)."""
    with zipfile.ZipFile(file) as z:
        for i, (dest, member) in enumerate(files, 1):
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = dest.with_name(dest.name + ".part")
            digest, n = hashlib.sha256(), 0
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh, member.open(z) as src:
                while chunk := src.read(_CHUNK):
                    n += len(chunk)
                    if n > MAX_IMAGE_BYTES:
                        break
                    digest.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            if digest.hexdigest() != member.sha256 or n != member.size:
                _remove_partial(tmp)
                raise PersonaError(f"archive {file} changed while it was imported ({member.name}); nothing imported")
            os.replace(tmp, dest)
            if progress is not None:
                progress("writing images", i, len(files))


def finish_interrupted_imports(store) -> int:
    """Shred the image files of imports that were killed before their records were committed
    (every writer open does it too: ``RecordStore.finish_interrupted_imports``)."""
    return store.records.finish_interrupted_imports(store.images_dir)
