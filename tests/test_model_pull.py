"""`personavlm model pull` against a local server that behaves like the Hugging Face hub.

The server (http.server on loopback, in a thread) answers the way the hub does: the resolve URL
redirects to a storage URL with the file's sha256 in ``X-Linked-Etag``, its size in
``X-Linked-Size`` and the commit in ``X-Repo-Commit``; the storage URL honours Range with 206; the
tree API lists ``lfs.oid``. The model it serves is a copy of the real embedded GGUF, and the
projector a minimal real GGUF header. Downloads go through huggingface_hub into the hub cache layout
under the data directory's models/ folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import ROOT, assert_one_line_error


def gguf_projector() -> bytes:
    """A minimal, valid GGUF v3 file that says it is a CLIP vision projector (no tensors)."""
    def string(s: str) -> bytes:
        b = s.encode()
        return struct.pack("<Q", len(b)) + b

    kvs = [string("general.architecture") + struct.pack("<I", 8) + string("clip"),
           string("clip.has_vision_encoder") + struct.pack("<I", 7) + struct.pack("<?", True)]
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)


class FakeHub:
    """Files by (repo, name); what was asked for is kept in ``log``."""

    def __init__(self):
        self.files: dict[tuple[str, str], bytes] = {}
        self.wrong_sha: set[str] = set()     # file names whose advertised sha256 is wrong
        self.cut_after: dict[str, int] = {}  # file name -> close the connection after this many bytes, once
        self.stall_after: dict[str, int] = {}  # file name -> send this many bytes, then hang (once)
        self.release = threading.Event()
        self.commit = "c0ffee" * 6 + "c0fe"  # X-Repo-Commit: the revision's commit, 40 hex digits
        self.log: list[tuple[str, str, str | None]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # a client that hangs up is no news
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, repo: str, name: str, data: bytes) -> None:
        self.files[(repo, name)] = data

    def sha(self, name: str, data: bytes) -> str:
        real = hashlib.sha256(data).hexdigest()
        return hashlib.sha256(b"not " + data).hexdigest() if name in self.wrong_sha else real

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(head=True)

            def do_GET(self):
                self._serve(head=False)

            def _serve(self, head: bool):
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                hub.log.append((self.command, path, self.headers.get("Range")))
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
                    repo = "/".join(parts[2:4])
                    listing = [{"type": "file", "path": n, "size": len(d),
                                "oid": hashlib.sha1(b"blob %d\0" % len(d) + d).hexdigest(),
                                "lfs": {"oid": hub.sha(n, d), "size": len(d), "pointerSize": 134}}
                               for (r, n), d in hub.files.items() if r == repo]
                    return self._send(200, json.dumps(listing).encode(), {"Content-Type": "application/json"}, head)
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, name = "/".join(parts[:2]), "/".join(parts[4:])
                    data = hub.files.get((repo, name))
                    if data is None:
                        return self._send(404, b"Entry not found", {"X-Error-Code": "EntryNotFound"}, head)
                    sha = hub.sha(name, data)
                    # As the hub does for LFS files: a redirect to storage that carries the checksum.
                    return self._send(302, b"", {"Location": f"/storage/{repo}/{name}", "X-Linked-Etag": f'"{sha}"',
                                                 "X-Linked-Size": str(len(data)), "ETag": f'"{sha}"',
                                                 "X-Repo-Commit": hub.commit}, head)
                if parts[0] == "storage":
                    repo, name = "/".join(parts[1:3]), "/".join(parts[3:])
                    data = hub.files.get((repo, name))
                    if data is None:
                        return self._send(404, b"", {}, head)
                    return self._storage(name, data, head)
                self._send(404, b"", {}, head)

            def _storage(self, name: str, data: bytes, head: bool):
                start, status, headers = 0, 200, {"Accept-Ranges": "bytes", "ETag": f'"{hub.sha(name, data)}"',
                                          "X-Repo-Commit": hub.commit}
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, head)
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                body = data[start:]
                if head:
                    return self._send(status, body, headers, head=True)
                limit = None
                if name in hub.cut_after:
                    limit = hub.cut_after.pop(name)
                stall = hub.stall_after.pop(name, None)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if stall is not None:
                    self.wfile.write(body[:stall])
                    self.wfile.flush()
                    hub.release.wait(120)
                    self.close_connection = True
                    return
                if limit is not None:
                    self.wfile.write(body[:limit])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _send(self, status: int, body: bytes, headers: dict, head: bool):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        return Handler

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def model_bytes() -> bytes:
    from personavlm_cli.adapters.gguf import embedded_model_path

    return embedded_model_path().read_bytes()


@pytest.fixture
def hub(monkeypatch):
    with FakeHub() as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield h


def _default_sigint() -> None:
    # A test run started in the background inherits SIGINT ignored; a person's Ctrl-C is never ignored.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def models_dir(home: Path) -> Path:
    return home / "data" / "models"


def cache_folder(home: Path, repo: str) -> Path:
    """The repository's folder in the hub cache layout (blobs/, snapshots/<commit>/, refs/)."""
    return models_dir(home) / ("models--" + repo.replace("/", "--"))


def pulled(home: Path, repo: str, name: str, hub: FakeHub) -> Path:
    return cache_folder(home, repo) / "snapshots" / hub.commit / name


def test_pull_a_recommended_vision_model_downloads_verifies_and_registers_both_files(run, hub, model_bytes,
                                                                                    isolated_home):
    from personavlm_cli.core.models import RECOMMENDED

    rec = RECOMMENDED["smolvlm2-2.2b"]
    hub.add(rec.repo, rec.file, model_bytes)
    hub.add(rec.repo, rec.mmproj, gguf_projector())

    r = run("model", "pull", "smolvlm2-2.2b")
    assert r.code == 0, r.err
    folder = pulled(isolated_home, rec.repo, "", hub)
    assert (folder / rec.file).read_bytes() == model_bytes
    assert (folder / rec.mmproj).read_bytes() == gguf_projector()
    assert not list(cache_folder(isolated_home, rec.repo).rglob("*.part")), "nothing half-done is left behind"
    assert "checksum verified" in r.err and f"{rec.repo}/{rec.file}: " in r.err, "the size is said first"

    rows = {row["name"]: row for row in run("model", "list", "--json").json()}
    row = rows["smolvlm2-2.2b"]
    assert row["path"] == str(folder / rec.file) and row["mmproj"] == str(folder / rec.mmproj)
    assert row["vision"] is True and row["architecture"] == "llama" and row["size"] == len(model_bytes)
    assert row["default"] is False

    # Pulling again finds the files in place and verified: nothing is downloaded twice.
    before = sum(1 for m, p, _ in hub.log if m == "GET" and p.startswith("/storage/"))
    r = run("model", "pull", "smolvlm2-2.2b", "--default")
    assert r.code == 0, r.err
    assert sum(1 for m, p, _ in hub.log if m == "GET" and p.startswith("/storage/")) == before
    rows = {row["name"]: row for row in run("model", "list", "--json").json()}
    assert rows["smolvlm2-2.2b"]["default"] is True


def test_pull_a_repository_file_by_name(run, hub, model_bytes):
    hub.add("someone/Tiny-GGUF", "tiny-Q4_1.gguf", model_bytes)
    r = run("model", "pull", "someone/Tiny-GGUF", "tiny-Q4_1.gguf", "--name", "tiny")
    assert r.code == 0, r.err
    rows = {row["name"]: row for row in run("model", "list", "--json").json()}
    assert rows["tiny"]["vision"] is False and rows["tiny"]["quantization"] == "Q4_1"
    assert ("HEAD", "/someone/Tiny-GGUF/resolve/main/tiny-Q4_1.gguf", None) in hub.log


def test_an_interrupted_pull_resumes_where_it_stopped(run, hub, model_bytes, isolated_home):
    repo, name = "someone/Tiny-GGUF", "tiny.gguf"
    hub.add(repo, name, model_bytes)
    hub.stall_after[name] = len(model_bytes) // 2
    dest = pulled(isolated_home, repo, name, hub)
    part = cache_folder(isolated_home, repo) / "blobs" / (hashlib.sha256(model_bytes).hexdigest() + ".part")

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "personavlm_cli", "model", "pull", repo, name],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    deadline = time.monotonic() + 120
    while not (part.exists() and part.stat().st_size >= 10 << 20):  # the hub client writes 10 MiB pieces
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the download never started"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, stderr = proc.communicate(timeout=60)
    hub.release.set()
    assert proc.returncode == 130, stderr
    assert "resume" in stderr and "Traceback" not in stderr
    half = part.stat().st_size
    assert 0 < half < len(model_bytes) and not dest.exists()

    r = run("model", "pull", repo, name)
    assert r.code == 0, r.err
    assert dest.read_bytes() == model_bytes and not part.exists()
    ranges = [rng for m, p, rng in hub.log if m == "GET" and p.startswith("/storage/")]
    assert ranges == [None, f"bytes={half}-"], "the second run asked only for the rest"
    assert any(row["name"] == "tiny" for row in run("model", "list", "--json").json())


def test_a_dropped_connection_is_resumed_within_the_same_pull(run, hub, model_bytes, isolated_home):
    hub.add("someone/Tiny-GGUF", "tiny.gguf", model_bytes)
    hub.cut_after["tiny.gguf"] = 15 << 20
    r = run("model", "pull", "someone/Tiny-GGUF", "tiny.gguf", "--name", "tiny")
    assert r.code == 0, r.err
    ranges = [rng for m, p, rng in hub.log if m == "GET" and p.startswith("/storage/")]
    # The hub client hands over 10 MiB pieces: it resumes after the last whole piece it received.
    assert ranges == [None, f"bytes={10 << 20}-"]
    assert pulled(isolated_home, "someone/Tiny-GGUF", "tiny.gguf", hub).read_bytes() == model_bytes


def test_a_checksum_mismatch_is_refused_and_the_bad_file_removed(run, hub, model_bytes, isolated_home):
    hub.add("someone/Tiny-GGUF", "tiny.gguf", model_bytes)
    hub.wrong_sha.add("tiny.gguf")
    r = run("model", "pull", "someone/Tiny-GGUF", "tiny.gguf")
    assert r.code == 1 and "Traceback" not in r.err, r
    said, error = r.err.strip().splitlines()  # the size, said before the download; then one error line
    assert "93.8 MB" in said and "checksum mismatch" in error and "tiny.gguf" in error
    folder = cache_folder(isolated_home, "someone/Tiny-GGUF")
    assert not [p for p in folder.rglob("*") if p.is_file()], "neither the file nor its .part is kept"
    assert [row["name"] for row in run("model", "list", "--json").json()] == ["embedded"]


def test_pull_refusals_are_one_line(run, hub, monkeypatch):
    assert_one_line_error(run("model", "pull", "no-such-model"), "no-such-model")
    assert_one_line_error(run("model", "pull", "someone/Tiny-GGUF"), "file")
    assert_one_line_error(run("model", "pull", "someone/Tiny-GGUF", "missing.gguf"), "not found", "404")
    assert_one_line_error(run("model", "pull", "someone/Tiny-GGUF", "../escape.gguf"), "not a file name")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_one_line_error(run("model", "pull", "qwen2.5-vl-3b"), "HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    assert_one_line_error(run("model", "pull", "qwen2.5-vl-3b"), "cannot reach")


def test_pull_without_a_name_lists_the_recommended_models(run):
    r = run("model", "pull")
    assert r.code == 0
    for name in ("qwen2.5-vl-3b", "qwen2.5-vl-7b", "gemma-3-4b-it", "smolvlm2-2.2b"):
        assert name in r.out


def test_rm_delete_files_removes_only_what_pull_downloaded(run, hub, model_bytes, isolated_home, tmp_path):
    hub.add("someone/Tiny-GGUF", "tiny.gguf", model_bytes)
    assert run("model", "pull", "someone/Tiny-GGUF", "tiny.gguf", "--name", "tiny", "--default").code == 0
    own = tmp_path / "mine.gguf"
    own.write_bytes(model_bytes)
    assert run("model", "add", str(own), "--name", "mine").code == 0
    r = run("model", "rm", "tiny", "--delete-files")
    assert r.code == 0, r.err
    assert not pulled(isolated_home, "someone/Tiny-GGUF", "tiny.gguf", hub).exists()
    assert not list((cache_folder(isolated_home, "someone/Tiny-GGUF") / "blobs").iterdir()), "the blob is gone too"
    assert run("model", "rm", "mine", "--delete-files").code == 0
    assert own.exists(), "a file the user registered is never deleted"
    rows = run("model", "list", "--json").json()
    assert [row["name"] for row in rows] == ["embedded"] and rows[0]["default"] is True
    assert run("config", "show").code == 0
