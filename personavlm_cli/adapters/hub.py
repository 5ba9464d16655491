"""Downloads from the Hugging Face hub, with the standard library only (urllib).

Files come from ``{endpoint}/{repo}/resolve/{revision}/{file}``; the endpoint is ``HF_ENDPOINT`` (the
variable huggingface_hub reads; a mirror or a test server), else https://huggingface.co.
``HF_HUB_OFFLINE=1`` forbids downloads, and ``HF_TOKEN`` is sent for gated or private repositories,
to the endpoint's own host only (never to the storage host it redirects to).

A download goes to ``FILE.part`` and resumes from there (HTTP Range) after a dropped connection, a
Ctrl-C or a crash; ``FILE.part.json`` remembers which version of the file the part belongs to, so a
part of an older version is never continued. The finished file is verified against the sha256 the
hub publishes (``X-Linked-Etag`` on the resolve response for LFS files, or ``lfs.oid`` in the tree
API ``{endpoint}/api/models/{repo}/tree/{revision}``) before it replaces anything; a file that does
not match is deleted.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from personavlm_cli.core.errors import PersonaError

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20
TIMEOUT_S = 30
RETRIES = 3
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
    url: str
    size: int | None
    sha256: str | None
    git_sha1: str | None = None  # small files that are not in LFS carry their git blob id instead


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


def resolve_url(repo: str, filename: str, revision: str = "main") -> str:
    return (f"{endpoint()}/{check_repo(repo)}/resolve/{urllib.parse.quote(revision, safe='')}/"
            f"{urllib.parse.quote(check_filename(filename))}")


# -- HTTP --------------------------------------------------------------------------------------------


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - urllib's hook
        return None  # 3xx comes back as HTTPError; redirects are followed by _open, on our terms


_opener = urllib.request.build_opener(_NoRedirects)


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


def _open(url: str, method: str = "GET", headers: dict | None = None, follow: bool = True,
          max_redirects: int = 8):
    """Open ``url``; returns (response, headers of each redirect on the way).

    Redirects are followed here so that a token goes only to the endpoint's own host.
    """
    hops = []
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    home = _host(endpoint())
    for _ in range(max_redirects + 1):
        h = {"User-Agent": "personavlm", "Accept-Encoding": "identity", **(headers or {})}
        if token and _host(url) == home:
            h["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(url, method=method, headers=h)
        try:
            return _opener.open(req, timeout=TIMEOUT_S), hops
        except urllib.error.HTTPError as e:
            location = e.headers.get("Location") if e.headers else None
            if e.code in (301, 302, 303, 307, 308) and location:
                hops.append(e.headers)
                e.close()
                if not follow:
                    return None, hops
                url = urllib.parse.urljoin(url, location)
                continue
            raise
    raise DownloadError(f"too many redirects from {_host(url)}")


def _http_problem(e: urllib.error.HTTPError, what: str) -> DownloadError:
    if e.code == 404:
        return DownloadError(f"{what} was not found on {_host(e.url or endpoint())} (404)")
    if e.code in (401, 403):
        return DownloadError(f"{what} needs permission (HTTP {e.code}): the repository may be gated or private; "
                             "accept its terms on the hub and set HF_TOKEN")
    return DownloadError(f"{what}: the hub answered HTTP {e.code} {e.reason}")


def _net_problem(e: BaseException) -> str:
    reason = getattr(e, "reason", None) or e
    if isinstance(reason, socket.timeout) or isinstance(e, TimeoutError):
        return "timed out"
    text = str(reason) or type(reason).__name__
    return " ".join(text.split())[:200]


def _etag(value: str | None) -> str | None:
    if not value:
        return None
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    return v.strip('"').lower() or None


# -- what the hub says about a file -------------------------------------------------------------------


def remote_info(repo: str, filename: str, revision: str = "main") -> RemoteFile:
    """The file's URL, size and checksum, from the resolve endpoint's headers or the tree API."""
    if offline():
        raise DownloadError("downloads are off: HF_HUB_OFFLINE is set (unset it to download)")
    url = resolve_url(repo, filename, revision)
    what = f"{repo}/{filename}"
    try:
        resp, hops = _open(url, method="HEAD", follow=False)
    except urllib.error.HTTPError as e:
        raise _http_problem(e, what) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise DownloadError(f"cannot reach {_host(url)}: {_net_problem(e)}") from None
    headers = hops[0] if hops else resp.headers
    if resp is not None:
        resp.close()
    linked = _etag(headers.get("X-Linked-Etag"))
    etag = _etag(headers.get("ETag"))
    size_text = headers.get("X-Linked-Size") or (headers.get("Content-Length") if resp is not None else None)
    size = int(size_text) if size_text and size_text.isdigit() else None
    sha256 = next((t for t in (linked, etag) if t and _HEX64.match(t)), None)
    git_sha1 = etag if etag and _HEX40.match(etag) else None
    if sha256 is None:
        entry = _tree_entry(repo, filename, revision)
        if entry is not None:
            lfs = entry.get("lfs") or {}
            oid = str(lfs.get("oid") or lfs.get("sha256") or "").lower()
            if _HEX64.match(oid):
                sha256 = oid
                size = int(lfs.get("size") or entry.get("size") or 0) or size
            elif _HEX40.match(str(entry.get("oid") or "").lower()):
                git_sha1 = str(entry["oid"]).lower()
                size = int(entry.get("size") or 0) or size
    return RemoteFile(repo, filename, revision, url, size, sha256, None if sha256 else git_sha1)


def _tree_entry(repo: str, filename: str, revision: str) -> dict | None:
    folder = filename.rpartition("/")[0]
    url = (f"{endpoint()}/api/models/{repo}/tree/{urllib.parse.quote(revision, safe='')}"
           + (f"/{urllib.parse.quote(folder)}" if folder else ""))
    try:
        resp, _ = _open(url)
        with resp:
            listing = json.loads(resp.read(16 << 20).decode("utf-8"))
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError):
        return None
    if not isinstance(listing, list):
        return None
    return next((e for e in listing if isinstance(e, dict) and e.get("path") == filename), None)


# -- downloading -------------------------------------------------------------------------------------


def _part_paths(dest: Path) -> tuple[Path, Path]:
    return dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")


def partial_size(dest: Path) -> int:
    part, _ = _part_paths(dest)
    return part.stat().st_size if part.exists() else 0


def _chunks(read: Callable[[int], bytes]) -> Iterator[bytes]:
    """Pieces of up to CHUNK bytes from ``read`` (a file's or an HTTP response's) until it has no more."""
    return iter(lambda: read(CHUNK), b"")


def file_digest(path: Path, algo: str = "sha256", progress: Progress | None = None, prefix: bytes = b"") -> str:
    h = hashlib.new(algo)
    h.update(prefix)
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        for chunk in _chunks(f.read):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress("verify", done, total)
    return h.hexdigest()


def verify(path: Path, remote: RemoteFile, progress: Progress | None = None) -> None:
    """Raise DownloadError unless the file is the one the hub published (by sha256, or git blob id)."""
    if remote.sha256:
        got = file_digest(path, "sha256", progress)
        if got != remote.sha256:
            raise DownloadError(f"checksum mismatch for {remote.filename}: expected sha256 {remote.sha256[:16]}…, "
                                f"got {got[:16]}…; the download was removed")
    elif remote.git_sha1:
        got = file_digest(path, "sha1", progress, prefix=f"blob {path.stat().st_size}\0".encode())
        if got != remote.git_sha1:
            raise DownloadError(f"checksum mismatch for {remote.filename}: expected git blob {remote.git_sha1[:16]}…, "
                                f"got {got[:16]}…; the download was removed")
    else:
        raise DownloadError(f"the hub published no checksum for {remote.filename}, so it cannot be verified; "
                            "not using it")


def download(remote: RemoteFile, dest: Path, progress: Progress | None = None, retries: int = RETRIES,
             backoff_s: float = 1.0) -> Path:
    """Download ``remote`` to ``dest`` (resuming ``dest.part``), verify it, and move it into place.

    A file already at ``dest`` that verifies is kept as it is. Ctrl-C leaves the part for the next run.
    """
    if not (remote.sha256 or remote.git_sha1):
        raise DownloadError(f"the hub published no checksum for {remote.filename}, so it cannot be verified; "
                            "not downloading it")
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    part, meta = _part_paths(dest)
    if dest.exists() and (remote.size is None or dest.stat().st_size == remote.size):
        try:
            verify(dest, remote, progress)
            return dest
        except DownloadError:
            pass  # another version, or damaged: download it again
    identity = {"url": remote.url, "sha256": remote.sha256, "git_sha1": remote.git_sha1, "size": remote.size}
    if part.exists():
        try:
            previous = json.loads(meta.read_text())
        except (OSError, ValueError):
            previous = None
        if previous != identity:
            part.unlink()  # a part of another version of the file (or of unknown origin)
    meta.write_text(json.dumps(identity))
    have = part.stat().st_size if part.exists() else 0
    if remote.size is not None:
        free = shutil.disk_usage(dest.parent).free
        if remote.size - have > free:
            raise DownloadError(f"not enough disk space for {remote.filename} in {dest.parent}: needs "
                                f"{(remote.size - have) / 1e9:.1f} GB, {free / 1e9:.1f} GB free")

    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if remote.size is not None and have > remote.size:
            part.unlink()
            have = 0
        if remote.size is not None and have == remote.size:
            break
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            resp, _ = _open(remote.url, headers=headers)
            with resp:
                status = resp.status
                if have and status == 206:
                    m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range") or "")
                    if not m or int(m.group(1)) != have:  # not the range asked for: start over
                        part.unlink(missing_ok=True)
                        continue
                    mode = "ab"
                else:
                    have, mode = 0, "wb"  # the server sent the whole file
                with open(part, mode) as f:
                    if progress:
                        progress("download", have, remote.size)
                    for chunk in _chunks(resp.read):
                        f.write(chunk)
                        have += len(chunk)
                        if progress:
                            progress("download", have, remote.size)
            if remote.size is None or have >= remote.size:
                break
            raise http.client.IncompleteRead(b"", remote.size - have)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:
                part.unlink(missing_ok=True)  # the part does not fit the file: start over
                failures += 1
                if failures > retries:
                    raise DownloadError(f"the hub refused to resume {remote.filename} (HTTP 416)") from None
                continue
            raise _http_problem(e, f"{remote.repo}/{remote.filename}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            failures += 1
            if failures > retries:
                got = partial_size(dest)
                of = f" of {remote.size}" if remote.size else ""
                raise DownloadError(f"download of {remote.filename} stopped after {got}{of} bytes "
                                    f"({_net_problem(e)}); run the same command again to resume") from None
            time.sleep(min(backoff_s * 2 ** (failures - 1), 10.0))

    try:
        verify(part, remote, progress)
    except DownloadError:
        part.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    meta.unlink(missing_ok=True)
    return dest
