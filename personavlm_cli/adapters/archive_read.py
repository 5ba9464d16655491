"""Reading a portable archive: the zip's directory bounded before anything is expanded, every member
streamed in 1 MiB pieces and counted (its size, sha256 and compression ratio enforced while read),
memories.jsonl parsed one line at a time, every member checked (``adapters/archive_checks.py``). What
comes back (``Checked``) is the whole archive, verified; nothing of it is written yet. Copying its
image members out (``copy_images``) checks each one again as it is written.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

from personavlm_cli.adapters.archive_checks import (
    IMAGE_MEMBER,
    _check_image,
    _check_images_used,
    _check_links,
    _check_manifest,
    _parse_memory_line,
    _parse_personality_and_state,
    _shown,
    strict_json,
)
from personavlm_cli.core.errors import PersonaError
from personavlm_cli.core.memory import Memory

# Limits, checked before anything is written (docs/formats.md). Sizes are checked twice: as declared in
# the zip's directory (a zip bomb is refused before anything is decompressed) and as actually read
# (members are streamed in 1 MiB pieces and counted, so a member that lies about its size stops there).
MAX_MEMBER_BYTES = 1 << 30      # memories.jsonl, personality.json, state.json: each
MAX_MANIFEST_BYTES = 64 << 20   # manifest.json
MAX_IMAGE_BYTES = 50 << 20      # each image member (the limit of an attached image)
MAX_TOTAL_BYTES = 4 << 30       # all members together
MAX_MEMBERS = 200_004           # 200,000 images and the four data members
MAX_MEMORIES = 1_000_000
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

    def resolved(self) -> _Resolved:
        return _Resolved(self.member_bytes or MAX_MEMBER_BYTES, self.ratio or MAX_RATIO,
                         self.line_bytes or MAX_LINE_BYTES)


class _Resolved(NamedTuple):
    """``Limits`` with every default filled in."""

    member_bytes: int
    ratio: int
    line_bytes: int


_DATA_MEMBERS = ("memories.jsonl", "personality.json", "state.json")

Progress = Callable[[str, int, int], None]  # (what, done, total)


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
    """``(manifest, files)`` from ``read_archive``, with the parsed and checked contents attached (the
    ``CheckedArchive`` of core/ports.py)."""

    memories: list[Memory]
    personality: dict[str, Any]
    state: dict[str, Any]
    file: Path

    @property
    def manifest(self) -> dict[str, Any]:
        return self[0]

    @property
    def images(self) -> list[str]:
        """The image files it carries, by name (``<sha256>.<ext>``)."""
        return [name[len("images/"):] for name, member in self[1].items() if isinstance(member, ImageMember)]

    def check_links(self, known: set[str]) -> None:
        """Every ``superseded_by`` names a memory of the archive or one of ``known`` (the store's ids)."""
        _check_links(self.memories, known=known)

    def copy_images(self, files: list[tuple[Path, str]], progress: Progress | None = None) -> None:
        copy_images(self, files, progress)



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
    bounds = (limits or Limits()).resolved()
    try:
        with zipfile.ZipFile(file) as z:
            manifest, data, memories = _read_members(z, file, progress, bounds)
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
                  limits: _Resolved) -> tuple[dict, dict, list | None]:
    infos = z.infolist()
    names = [i.filename for i in infos]
    if len(names) > MAX_MEMBERS:
        raise PersonaError(f"archive {file} has too many members ({len(names)}, limit {MAX_MEMBERS}); "
                           "nothing imported")
    if len(names) != len(set(names)):
        raise PersonaError(f"archive {file} has been altered (a member appears twice)")
    for name in names:
        if name != "manifest.json" and name not in _DATA_MEMBERS and not IMAGE_MEMBER.fullmatch(name):
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
        manifest = strict_json(cast(bytes, _stream(z, by_name["manifest.json"], MAX_MANIFEST_BYTES, file, keep=True)[2]))
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
        if cast(re.Match[str], IMAGE_MEMBER.fullmatch(name)).group(1) != digest:  # checked above: it matches
            raise PersonaError(f"archive {file} has been altered ({name} is not named by its sha256)")
        _check_image(file, name, cast(bytes, blob))  # kept: keep=True
        data[name] = ImageMember(name=name, sha256=digest, size=n, file=file)
        if progress is not None:
            progress("checking images", i, len(images))
    return manifest, data, memories


def copy_images(archive: Checked, files: list[tuple[Path, str]], progress: Progress | None = None) -> None:
    """Copy these image members (destination, image file name) out of the zip, each checked again
    against its sha256 as it is written."""
    file = archive.file
    members = archive[1]
    with zipfile.ZipFile(file) as z:
        for i, (dest, name) in enumerate(files, 1):
            member = members[f"images/{name}"]
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

