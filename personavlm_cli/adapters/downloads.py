"""Downloads from the Hugging Face hub through ``huggingface_hub`` (GGUF models, projectors, CLIP weights).

The hub's own client does the HTTP (redirects, the token sent to the hub only, retries with
backoff, resuming a dropped connection within a download) and the cache layout (``blobs/<etag>``,
``snapshots/<commit>/<file>``, ``refs/<revision>``) that open_clip, transformers and llama.cpp's
``-hf`` read. Two things it does not do, and this module adds:

- resuming across runs: ``huggingface_hub`` 2.x downloads to a per-process temporary file and
  deletes it on any failure, so a Ctrl-C at 90 % of a 4 GB model starts again from zero. Here the
  bytes go to ``blobs/<etag>.part`` (the etag names the file's version, so a part of another version
  is never continued) through the hub client's own ``http_get`` with ``resume_size``;
- checking the content: the finished part must match the sha256 the hub publishes (the ETag of an
  LFS file; a git blob id for small files) before it becomes the blob; else it is deleted.

Then ``hf_hub_download`` finds the blob in place and writes the snapshot link and the ref itself.
``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` are read at call time (the hub client reads them
once, at its import); offline, a file already in the cache is found and nothing else is asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from personavlm_cli.core.errors import PersonaError

DEFAULT_ENDPOINT = "https://huggingface.co"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

Progress = Callable[[str, int, "int | None"], None]  # (phase: "download" | "verify", done, total)


class DownloadError(PersonaError):
    """The hub cannot be reached, does not have the file, or the file did not verify."""


@dataclass(frozen=True)
class RemoteFile:
    repo: str
    filename: str
    revision: str
    url: str          # where the bytes are (the hub's storage URL after its redirect)
    size: int | None
    etag: str         # the version: sha256 for LFS files, a git blob id for small ones
    commit: str


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    return (os.environ.get("HF_HUB_OFFLINE") or "").strip().lower() in ("1", "true", "yes", "on")


def check_repo(repo: str) -> str:
    if not _REPO.match(repo or "") or ".." in repo:
        raise DownloadError(f"'{repo}' is not a hub repository name (expected OWNER/NAME)")
    return repo


def check_filename(filename: str) -> str:
    parts = (filename or "").split("/")
    if not filename or filename.startswith("/") or "\\" in filename or any(p in ("", ".", "..") for p in parts) \
            or any(ord(ch) < 32 for ch in filename):
        raise DownloadError(f"'{filename}' is not a file name in a repository")
    return filename


@contextlib.contextmanager
def _hub() -> Iterator[object]:
    """The hub client with this run's offline setting (it froze the environment's at its import) and
    its progress bars and retry warnings off the terminal (ours report instead)."""
    import logging

    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_PROGRESS_BARS
    constants.HF_HUB_OFFLINE = offline()
    constants.HF_HUB_DISABLE_PROGRESS_BARS = True
    log = logging.getLogger("huggingface_hub")
    level = log.level
    log.setLevel(logging.ERROR + 1)
    try:
        yield constants
    finally:
        constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_PROGRESS_BARS = saved
        log.setLevel(level)


def _problem(e: BaseException, what: str) -> DownloadError:
    """One line for what the hub client raised."""
    from huggingface_hub import errors

    name = type(e).__name__
    if isinstance(e, (errors.EntryNotFoundError, errors.RevisionNotFoundError, errors.RepositoryNotFoundError)) \
            and getattr(getattr(e, "response", None), "status_code", 404) == 404:
        return DownloadError(f"{what} was not found on {_host(endpoint())} (404)")
    if isinstance(e, errors.GatedRepoError) or getattr(getattr(e, "response", None), "status_code", 0) in (401, 403):
        return DownloadError(f"{what} needs permission: the repository may be gated or private; accept its terms "
                             "on the hub and set HF_TOKEN")
    if isinstance(e, errors.OfflineModeIsEnabled):
        return DownloadError("downloads are off: HF_HUB_OFFLINE is set (unset it to download)")
    text = " ".join(str(e).split())[:200] or name
    if any(k in name for k in ("Connect", "Timeout", "Network", "Protocol")) or "connect" in text.lower():
        return DownloadError(f"cannot reach {_host(endpoint())}: {text}")
    status = getattr(getattr(e, "response", None), "status_code", None)
    return DownloadError(f"{what}: the hub answered {f'HTTP {status}' if status else name}: {text}")


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).netloc


# -- what the hub says about a file -------------------------------------------------------------------


def remote_info(repo: str, filename: str, revision: str = "main") -> RemoteFile:
    """The file's size, version (etag) and commit, from the hub's answer to a HEAD of its resolve URL."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    check_repo(repo)
    check_filename(filename)
    if offline():
        raise DownloadError("downloads are off: HF_HUB_OFFLINE is set (unset it to download)")
    what = f"{repo}/{filename}"
    with _hub():
        try:
            meta = get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision, endpoint=endpoint()),
                                        endpoint=endpoint(), retry_on_errors=False)
        except Exception as e:  # the hub client's errors become one line
            raise _problem(e, what) from None
    etag = (meta.etag or "").lower()
    if not (_HEX64.match(etag) or _HEX40.match(etag)):
        raise DownloadError(f"the hub published no checksum for {filename}, so it cannot be verified; not using it")
    if not meta.commit_hash:
        raise DownloadError(f"the hub did not say which commit {what} belongs to")
    return RemoteFile(repo, filename, revision, meta.location, meta.size, etag, meta.commit_hash)


def cached(repo: str, filename: str, revision: str = "main", cache_dir: Path | None = None) -> Path | None:
    """The file in the hub cache (``cache_dir``, else the standard one), or None; asks no one."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=str(cache_dir) if cache_dir else None, revision=revision)
    return Path(found) if isinstance(found, str) else None


# -- downloading -------------------------------------------------------------------------------------


def storage_folder(repo: str, cache_dir: Path | None) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    root = Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)
    return root / repo_folder_name(repo_id=repo, repo_type="model")


def part_path(remote: RemoteFile, cache_dir: Path | None) -> Path:
    return storage_folder(remote.repo, cache_dir) / "blobs" / f"{remote.etag}.part"


def partial_size(remote: RemoteFile, cache_dir: Path | None) -> int:
    part = part_path(remote, cache_dir)
    return part.stat().st_size if part.exists() else 0


def file_digest(path: Path, algo: str = "sha256", progress: Progress | None = None, prefix: bytes = b"") -> str:
    h = hashlib.new(algo)
    h.update(prefix)
    total, done = path.stat().st_size, 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress("verify", done, total)
    return h.hexdigest()


def verify(path: Path, remote: RemoteFile, progress: Progress | None = None) -> None:
    """Raise DownloadError unless ``path`` is the file the hub published (sha256, or git blob id)."""
    if _HEX64.match(remote.etag):
        got, kind = file_digest(path, "sha256", progress), "sha256"
    else:
        got, kind = file_digest(path, "sha1", progress, prefix=f"blob {path.stat().st_size}\0".encode()), "git blob"
    if got != remote.etag:
        raise DownloadError(f"checksum mismatch for {remote.filename}: expected {kind} {remote.etag[:16]}…, "
                            f"got {got[:16]}…; the download was removed")


def _reporter(progress: Progress | None, total: int | None):
    """A tqdm stand-in for the hub client's ``http_get``: every update goes to ``progress``."""

    class Report:
        def __init__(self, *args, initial: int = 0, **kwargs):
            self.n = initial
            if progress:
                progress("download", self.n, total)

        def update(self, n: int = 1) -> None:
            self.n += n
            if progress:
                progress("download", self.n, total)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            return None

        def close(self) -> None:
            return None

    return Report


def download(remote: RemoteFile, cache_dir: Path | None = None, progress: Progress | None = None) -> Path:
    """Download ``remote`` into the hub cache (``cache_dir``, else the standard one), resuming a part a
    previous run left, verify it, and return the snapshot path. A Ctrl-C or a lost connection keeps
    the part for the next run; a file already in the cache is not fetched again."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    folder = storage_folder(remote.repo, cache_dir)
    blob = folder / "blobs" / remote.etag
    part = part_path(remote, cache_dir)
    what = f"{remote.repo}/{remote.filename}"
    if not blob.exists():
        part.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.exists() else 0
        if remote.size is not None and have > remote.size:
            part.unlink()
            have = 0
        with _hub():
            try:
                with open(part, "ab") as f:
                    http_get(remote.url, f, resume_size=have, expected_size=remote.size,
                             displayed_filename=remote.filename, tqdm_class=_reporter(progress, remote.size),
                             headers=build_hf_headers() if _host(remote.url) == _host(endpoint()) else None)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # the hub client raises many kinds: sorted below
                got = partial_size(remote, cache_dir)
                if "Consistency check failed" in str(e) or (remote.size and got > remote.size):
                    part.unlink(missing_ok=True)
                    raise DownloadError(f"the hub sent {remote.filename} with the wrong size; the download was "
                                        "removed, run the same command again") from None
                of = f" of {remote.size}" if remote.size else ""
                problem = _problem(e, what)
                raise DownloadError(f"download of {remote.filename} stopped after {got}{of} bytes ({problem}); "
                                    "run the same command again to resume") from None
        try:
            verify(part, remote, progress)
        except DownloadError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, blob)
    with _hub():
        try:  # the blob is in place: the hub client writes the snapshot link and the ref
            path = hf_hub_download(remote.repo, remote.filename, revision=remote.revision,
                                   cache_dir=str(cache_dir) if cache_dir else None, endpoint=endpoint())
        except Exception as e:  # the hub client raises many kinds: one line
            raise _problem(e, what) from None
    return Path(path)


def fetch(repo: str, filename: str, revision: str = "main", cache_dir: Path | None = None,
          progress: Progress | None = None, announce: Callable[[RemoteFile], None] | None = None) -> Path:
    """``remote_info`` then ``download``; offline, the cached file (or one line saying why not)."""
    if offline():
        found = cached(repo, filename, revision, cache_dir)
        if found is not None:
            return found
        raise DownloadError(f"{repo}/{filename} is not in the cache and downloads are off: HF_HUB_OFFLINE is set "
                            "(unset it to download)")
    remote = remote_info(repo, filename, revision)
    if announce:
        announce(remote)
    return download(remote, cache_dir, progress)


def delete_file(path: Path) -> None:
    """Delete a downloaded file: the snapshot link and, when no other snapshot links to it, its blob."""
    path = Path(path)
    target = path.resolve()
    path.unlink(missing_ok=True)
    if target != path and target.exists():
        snapshots = target.parent.parent / "snapshots"
        others = [p for p in snapshots.rglob("*") if p.is_symlink() and p.resolve() == target] \
            if snapshots.is_dir() else []
        if not others:
            target.unlink()
