"""Issue 17 (items 3-10): hostile archives, hostile settings and a full disk.

Every bad input is refused with one line (a PersonaError in process; one `Error:` line and a non-zero
exit at the CLI), before anything is written, and the store stays usable. Most tests call the core
directly (fast); a few run the CLI in-process (`run_in_process`) where the one line on stderr is what is
proven, and one kills a real import in a child process.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, assert_one_line_error, run_cli, run_in_process
from tests.kit import fake_store

USER = "tester"
NOW = "2026-11-01T10:00:00+00:00"
TRAITS = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def png_bytes(seed: int = 1) -> bytes:
    from PIL import Image

    im = Image.new("RGB", (5 + seed % 7, 4 + seed % 3), ((seed * 37) % 256, (seed * 91) % 256, seed % 256))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def memory(**fields) -> dict:
    base = {"id": "sem_0000000001", "type": "semantic", "text": "I like tea", "occurred_at": NOW,
            "created_at": NOW, "source_ids": [], "meta": {}}
    return {**base, **fields}


def image_memory(data: bytes, ext: str = "png", id: str = "img_0000000001") -> dict:
    sha = hashlib.sha256(data).hexdigest()
    return memory(id=id, type="image", text="a picture", image_sha256=sha, meta={"path": f"{sha[:2]}/{sha}.{ext}"})


def image_member(data: bytes, ext: str = "png") -> dict[str, bytes]:
    return {f"images/{hashlib.sha256(data).hexdigest()}.{ext}": data}


def personality(state=None, updates=0, history=None) -> bytes:
    return json.dumps({"state": state, "updates": updates, "history": history or []}).encode()


def build(path: Path, memories: list | None = None, members: dict | None = None, *, lines: list[str] | None = None,
          personality_json: bytes | None = None, state_json: bytes = b"{}", manifest: dict | None = None,
          raw_members: dict | None = None) -> Path:
    """A well-formed archive (manifest hashes right) around whatever is given: ``memories`` as dicts,
    or raw JSONL ``lines``; ``manifest`` overrides manifest keys; ``raw_members`` are added unlisted."""
    if lines is None:
        lines = [json.dumps(m, ensure_ascii=False) for m in (memories if memories is not None else [memory()])]
    files = {"memories.jsonl": "".join(line + "\n" for line in lines).encode(),
             "personality.json": personality_json if personality_json is not None else personality(),
             "state.json": state_json, **(members or {})}
    head = {"format": "personavlm-archive", "version": 1, "user": "x", "created_at": NOW, "counts": {},
            "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}}
    head.update(manifest or {})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", json.dumps(head))
        for name, data in {**files, **(raw_members or {})}.items():
            z.writestr(name, data)
    return path


def make_store(path: Path):
    return fake_store(path)[0]


def user_dir(home: Path) -> Path:
    return home / "data" / "users" / USER


def refused(path: Path, *needles: str, limits=None):
    from personavlm_cli.adapters.archive import read_archive
    from personavlm_cli.core.errors import PersonaError

    with pytest.raises(PersonaError) as info:
        read_archive(path, limits=limits)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle.lower() in message.lower(), message
    return message


def files_under(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file()) if d.exists() else []


# --------------------------------------------------------------------------------------------------
# item 3: an image member that is not an image
# --------------------------------------------------------------------------------------------------


def test_an_image_member_that_is_not_an_image_is_refused_before_anything_is_written(tmp_path, isolated_home):
    html = b"<html><script>alert(1)</script></html>"
    archive = build(tmp_path / "a.pvm", [memory(), image_memory(html)], image_member(html))
    refused(archive, "not an image", "nothing imported")
    # Also a valid-looking header that does not decode, and an image under a name that is not an image's.
    broken = png_bytes()[:40]
    refused(build(tmp_path / "b.pvm", [image_memory(broken)], image_member(broken)), "nothing imported")
    png = png_bytes()
    refused(build(tmp_path / "c.pvm", [image_memory(png, "html")], image_member(png, "html")), "not an image file name")

    r = run_in_process("memory", "import", str(archive))
    assert_one_line_error(r, "not an image")
    assert not user_dir(isolated_home).exists(), "nothing is created for a refused archive"
    # The store stays usable: a good import afterwards works and every later command reads it (the
    # image import itself is proven in process by test_a_long_import_reports_progress_and_writes_only_used_images).
    r = run_in_process("memory", "import", str(build(tmp_path / "good.pvm", [memory()])))
    assert r.code == 0, r.err
    r = run_in_process("memory", "list", "--json")
    assert r.code == 0, r.err
    assert [m["id"] for m in r.json()] == ["sem_0000000001"]


# --------------------------------------------------------------------------------------------------
# item 4: a malformed personality.json
# --------------------------------------------------------------------------------------------------

GOOD = {t: 3.0 for t in TRAITS}
ENTRY = {"at": NOW, "turn_id": None, "m": 0, "lambda": 0.5, "inferred": {"openness": 4}, "before": GOOD,
         "after": GOOD, "note": ""}


@pytest.mark.parametrize("blob,needle", [
    (personality(GOOD, updates={"x": 1}), "'updates' must be a count"),
    (personality(GOOD, updates=-1), "'updates' must be a count"),
    (personality(GOOD, updates=True), "'updates' must be a count"),
    (personality({**GOOD, "openness": 1e308}), "openness must be a number from 1 to 5"),
    (personality({**GOOD, "openness": 0.5}), "openness must be a number from 1 to 5"),
    (personality({**GOOD, "openness": "high"}), "openness must be a number from 1 to 5"),
    (personality({"openness": 3}), "five traits"),
    (personality({**GOOD, "wit": 3}), "five traits"),
    (b'{"state": {"openness": NaN, "conscientiousness": 3, "extraversion": 3, "agreeableness": 3, '
     b'"neuroticism": 3}, "updates": 0, "history": []}', "nan is not a number json allows"),
    (b'{"state": {"openness": 1e400, "conscientiousness": 3, "extraversion": 3, "agreeableness": 3, '
     b'"neuroticism": 3}, "updates": 0, "history": []}', "out of range"),
    (b'{"state": null, "updates": Infinity, "history": []}', "infinity"),
    (personality(GOOD, history={"a": 1}), "'history' must be a list"),
    (personality(GOOD, history=[{**ENTRY, "m": "1"}]), "'m' must be a count"),
    (personality(GOOD, history=[{**ENTRY, "at": "yesterday"}]), "'at' is not a time"),
    (personality(GOOD, history=[{**ENTRY, "lambda": 7}]), "'lambda'"),
    (personality(GOOD, history=[{**ENTRY, "inferred": {"openness": "high"}}]), "'inferred'"),
    (personality(GOOD, history=[{**ENTRY, "after": [3, 3, 3, 3, 3]}]), "'after' must give the five traits"),
    (personality(GOOD, history=[{**ENTRY, "note": {"x": 1}}]), "'note'"),
    (personality(GOOD, history=[["not", "an", "object"]]), "not an object"),
    (b"[1, 2]", "not an object"),
    (b"\xff\xfe", "personality or state is invalid"),
])
def test_a_malformed_personality_is_refused_with_one_line(tmp_path, blob, needle):
    refused(build(tmp_path / "p.pvm", personality_json=blob), "personality", needle, "nothing imported")


@pytest.mark.parametrize("blob", [b'{"consolidated": {"s": "two"}}', b'{"consolidated": [1]}',
                                  b'{"consolidated": {"s": -1}}', b'"x"'])
def test_a_malformed_state_is_refused_with_one_line(tmp_path, blob):
    refused(build(tmp_path / "s.pvm", state_json=blob), "state", "nothing imported")


def test_a_valid_personality_comes_in_and_later_updates_still_work(tmp_path):
    from personavlm_cli.adapters.archive import read_archive
    from personavlm_cli.core import personality as pem
    from personavlm_cli.core.transfer import import_archive

    after = {**GOOD, "openness": 3.4}
    history = [{**ENTRY, "after": after}, {**ENTRY, "m": 1, "lambda": None, "inferred": None, "turn_id": "turn_1",
                                           "before": after, "after": after, "note": "reset none"}]
    archive = build(tmp_path / "ok.pvm", personality_json=personality(after, 2, history),
                    state_json=b'{"consolidated": {"s_a": 2}}')
    store = make_store(tmp_path / "u")
    import_archive(store, read_archive(archive))
    records = store.records
    assert records.get_meta("personality") == after and records.get_meta("personality_updates") == 2
    # The momentum update reads what was imported: it must be a vector and a count.
    vector, lam, _ = pem.evolve(records.get_meta("personality"), {"openness": 5}, records.get_meta("personality_updates"))
    assert 1 <= vector["openness"] <= 5 and 0 < lam < 1
    store.close()


# --------------------------------------------------------------------------------------------------
# item 5: unreferenced members, size limits, many members, progress
# --------------------------------------------------------------------------------------------------


def test_an_image_member_no_memory_uses_is_refused_and_nothing_is_written(tmp_path, isolated_home):
    png = png_bytes(2)
    archive = build(tmp_path / "a.pvm", [memory()], image_member(png))
    refused(archive, "no memory uses", "nothing imported")
    r = run_in_process("memory", "import", str(archive))
    assert_one_line_error(r, "no memory uses")
    assert files_under(user_dir(isolated_home) / "images") == []
    # Any other member name (an .html, a nested path, a directory entry) is refused by name.
    for name in ("images/page.html", "images/../x.png", "notes.txt", "images/"):
        refused(build(tmp_path / "n.pvm", raw_members={name: b"x"}), "unexpected member")


def test_a_member_declaring_a_huge_size_is_refused_before_it_is_decompressed(tmp_path, isolated_home):
    from personavlm_cli.adapters import archive_read as arch

    # 60 MiB of zeros deflate to ~60 KB: an image member over the 50 MiB image limit, named by its sha.
    zeros = bytes(60 << 20)
    sha = hashlib.sha256(zeros).hexdigest()
    path = build(tmp_path / "big.pvm", [memory()], {f"images/{sha}.png": zeros})
    del zeros
    assert path.stat().st_size < 1 << 20
    started = time.monotonic()
    tracemalloc.start()
    refused(path, "too large", "limit 50 MiB", "nothing imported")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20, f"refused from the zip directory, nothing decompressed (peak {peak} bytes)"
    assert time.monotonic() - started < 2
    r = run_in_process("memory", "import", str(path))
    assert_one_line_error(r, "too large")
    assert not user_dir(isolated_home).exists()
    # The sum of the declared sizes is bounded too, and so are the data members.
    assert arch.MAX_TOTAL_BYTES <= 4 << 30 and arch.MAX_IMAGE_BYTES == 50 << 20


def test_a_member_larger_than_it_declares_is_stopped_at_the_limit_while_read(tmp_path, monkeypatch):
    from personavlm_cli.adapters import archive_read as arch

    # Declared sizes pass; the streamed count is what stops it (a lying directory cannot get past it).
    path = build(tmp_path / "a.pvm", [memory(text="y" * 3000)])
    monkeypatch.setattr(arch, "_limit", lambda name, member_bytes=None: 1 << 40)
    monkeypatch.setattr(arch, "MAX_MEMBER_BYTES", 1024)
    refused(path, "too large", "memories.jsonl")


def test_an_archive_with_too_many_members_is_refused_from_its_directory(tmp_path, monkeypatch):
    from personavlm_cli.adapters import archive_read as arch

    members = {}
    for seed in range(30):
        members.update(image_member(png_bytes(seed + 100) + bytes(seed)))
    path = build(tmp_path / "many.pvm", [memory()], members)
    assert arch.MAX_MEMBERS == 200_004  # 200,000 images and the data members: documented in docs/formats.md
    monkeypatch.setattr(arch, "MAX_MEMBERS", 20)
    started = time.monotonic()
    refused(path, "too many members", "limit 20")
    assert time.monotonic() - started < 0.5, "refused from the zip directory, nothing read"


def test_a_long_import_reports_progress_and_writes_only_used_images(tmp_path):
    from personavlm_cli.adapters.archive import read_archive
    from personavlm_cli.core.transfer import import_archive

    pngs = [png_bytes(seed) for seed in range(12)]
    pngs = list({hashlib.sha256(p).hexdigest(): p for p in pngs}.values())
    mems = [image_memory(p, id=f"img_{i:010d}") for i, p in enumerate(pngs)]
    members = {}
    for p in pngs:
        members.update(image_member(p))
    archive = build(tmp_path / "a.pvm", mems, members)
    calls = []
    store = make_store(tmp_path / "u")
    import_archive(store, read_archive(archive, progress=lambda *a: calls.append(a)),
                   progress=lambda *a: calls.append(a))
    checking = [c for c in calls if c[0] == "checking images"]
    writing = [c for c in calls if c[0] == "writing images"]
    assert [c[1] for c in checking] == list(range(1, len(pngs) + 1)) and checking[-1][2] == len(pngs)
    assert [c[1] for c in writing] == list(range(1, len(pngs) + 1)) and writing[-1][2] == len(pngs)
    assert len(files_under(store.images_dir)) == len(pngs)
    assert not list(store.images_dir.rglob("*.part"))
    store.close()


# --------------------------------------------------------------------------------------------------
# item 6: a killed import's clean-up
# --------------------------------------------------------------------------------------------------

_KILL_AT_INSERT = """
import os, signal, sys
from personavlm_cli.adapters import records
def insert(self, memories):
    os.kill(os.getpid(), signal.SIGKILL)
records.RecordStore.insert = insert
from personavlm_cli.cli import main
main(sys.argv[1:])
"""


def test_a_killed_imports_files_are_pending_then_cleaned_at_the_next_writer_open(tmp_path, isolated_home):
    from personavlm_cli.adapters.records import RecordStore

    pngs = [png_bytes(seed) for seed in range(3, 9)]
    mems = [image_memory(p, id=f"img_{i:010d}") for i, p in enumerate(pngs)]
    members = {}
    for p in pngs:
        members.update(image_member(p))
    archive = build(tmp_path / "a.pvm", mems, members)
    proc = subprocess.run([sys.executable, "-c", _KILL_AT_INSERT, "memory", "import", str(archive)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    d = user_dir(isolated_home)
    assert len(files_under(d / "images")) == len(pngs), "the kill left the image files behind"

    # A reader sees the owed clean-up as pending work.
    reader = RecordStore(d, readonly=True)
    pending = reader.pending_jobs()
    reader.close()
    assert [j["kind"] for j in pending] == ["import_files"]

    # Any writer open (chat, forget --all, import...) finishes it before doing anything else.
    writer = RecordStore(d)
    assert writer.pending_jobs() == [] and writer.count() == 0
    writer.close()
    assert files_under(d / "images") == []

    # And `memory forget --all` after such a kill leaves no image file (nor does a later list fail).
    subprocess.run([sys.executable, "-c", _KILL_AT_INSERT, "memory", "import", str(archive)], cwd=ROOT,
                   capture_output=True, timeout=120)
    assert len(files_under(d / "images")) == len(pngs)
    r = run_cli("memory", "forget", "--all", "--yes")
    assert files_under(d / "images") == [], r.err
    assert run_cli("memory", "list").code == 0


# --------------------------------------------------------------------------------------------------
# item 7: memory blow-up
# --------------------------------------------------------------------------------------------------


def test_a_huge_memory_is_refused_while_read_without_decompressing_it_all(tmp_path, isolated_home):
    # One memory of 64 MB of text, about 64 KB compressed.
    text = "x" * (64 << 20)
    path = build(tmp_path / "blow.pvm", lines=[json.dumps(memory(text=text))])
    del text
    assert path.stat().st_size < 1 << 20
    from personavlm_cli.adapters.archive import Limits

    refused(path, "expands", "archive.max_ratio", "nothing imported")  # a bomb, from the zip's headers
    started = time.monotonic()
    tracemalloc.start()
    # With the ratio allowed, the line is still refused while it is read.
    refused(path, "line 1 is too large", "nothing imported", limits=Limits(ratio=100_000))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20, f"the line was refused while streaming (peak {peak} bytes)"
    assert time.monotonic() - started < 3
    r = run_in_process("memory", "import", str(path))
    assert_one_line_error(r, "too large")
    assert not user_dir(isolated_home).exists()


def test_a_memory_over_the_text_limit_is_refused(tmp_path):
    from personavlm_cli.adapters.archive import read_archive
    from personavlm_cli.adapters.archive_checks import MAX_TEXT_CHARS
    from personavlm_cli.core.transfer import import_archive

    refused(build(tmp_path / "a.pvm", [memory(text="é" * (MAX_TEXT_CHARS + 1))]), "over the limit", "nothing imported")
    refused(build(tmp_path / "k.pvm", [memory(keywords="k" * 5000)]), "keywords")
    # At the limit it is accepted.
    store = make_store(tmp_path / "u")
    import_archive(store, read_archive(build(tmp_path / "b.pvm", [memory(text="é" * MAX_TEXT_CHARS)])))
    assert len(store.records.get("sem_0000000001").text) == MAX_TEXT_CHARS
    store.close()


# --------------------------------------------------------------------------------------------------
# item 8: a full disk
# --------------------------------------------------------------------------------------------------


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_during_export_is_one_line_and_leaves_no_part_file(tmp_path, isolated_home, monkeypatch, capsys):
    from personavlm_cli.adapters.archive import ZipArchive
    from personavlm_cli.cli import main
    from personavlm_cli.core.errors import DiskFullError
    from personavlm_cli.core.transfer import export_archive

    store = make_store(user_dir(isolated_home))
    store.add([__import__("personavlm_cli.core.memory", fromlist=["Memory"]).Memory(**memory(text="secret tea"))],
              embed=False)
    store.close()
    out = tmp_path / "out" / "me.pvm"
    out.parent.mkdir()
    real = zipfile.ZipFile.writestr

    def writestr(self, name, data, *a, **k):
        if name == "memories.jsonl":
            real(self, name, data, *a, **k)  # the text is in the .part when the disk fills
            _enospc()
        return real(self, name, data, *a, **k)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", writestr)
    from personavlm_cli.adapters.records import RecordStore

    records = RecordStore(user_dir(isolated_home), readonly=True)
    with pytest.raises(DiskFullError, match="no space left on .*free some space; nothing was lost"):
        export_archive(records, user_dir(isolated_home), out, USER, ZipArchive())
    records.close()
    assert list(out.parent.iterdir()) == [], "no archive and no .part left"

    with pytest.raises(SystemExit) as code:
        main(["memory", "export", str(out)])
    assert code.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no space left on" in lines[0] and "nothing was lost" in lines[0], lines
    assert list(out.parent.iterdir()) == []
    # A destination that cannot be written is one line too (not "unexpected").
    monkeypatch.undo()
    from personavlm_cli.core.errors import StoreError

    records = RecordStore(user_dir(isolated_home), readonly=True)
    with pytest.raises(StoreError, match="cannot write the archive .*x.pvm: No such file or directory"):
        export_archive(records, user_dir(isolated_home), tmp_path / "missing" / "x.pvm", USER, ZipArchive())
    records.close()


def test_a_full_disk_in_the_record_file_is_one_line_and_rolls_back(tmp_path):
    from personavlm_cli.adapters.records import RecordStore
    from personavlm_cli.core.errors import DiskFullError
    from personavlm_cli.core.memory import Memory

    d = tmp_path / "u"
    d.mkdir()
    records = RecordStore(d)
    with records.transaction():
        records.insert([Memory(**memory(id="sem_keep", text="kept"))])
    pages = records.db.execute("PRAGMA page_count").fetchone()[0]
    records.db.execute(f"PRAGMA max_page_count={pages + 2}")  # SQLite's own "database or disk is full"
    with pytest.raises(DiskFullError, match=f"no space left on {d}: free some space; nothing was lost"):
        with records.transaction():
            records.insert([Memory(**memory(id=f"sem_{i}", text="z" * 4000)) for i in range(50)])
    assert [m.id for m in records.list()] == ["sem_keep"] and not records.db.in_transaction
    records.close()
    again = RecordStore(d)
    assert [m.id for m in again.list()] == ["sem_keep"]
    assert again.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    again.close()


def test_a_full_disk_while_import_writes_images_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    from personavlm_cli.adapters.archive import read_archive
    from personavlm_cli.core.errors import DiskFullError
    from personavlm_cli.core.transfer import import_archive

    pngs = [png_bytes(seed) for seed in (20, 21, 22)]
    mems = [memory()] + [image_memory(p, id=f"img_{i:010d}") for i, p in enumerate(pngs)]
    members = {}
    for p in pngs:
        members.update(image_member(p))
    checked = read_archive(build(tmp_path / "a.pvm", mems, members))
    store = make_store(tmp_path / "u")
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            _enospc()
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DiskFullError, match="no space left on .*images: free some space; nothing was lost"):
        import_archive(store, checked)
    monkeypatch.undo()
    assert files_under(store.images_dir) == [], "every file written for it (and its .part) is gone"
    assert store.records.count() == 0 and store.records.jobs() == []
    # Space freed: the same import completes.
    import_archive(store, checked)
    assert store.records.count() == len(mems) and len(files_under(store.images_dir)) == len(pngs)
    store.close()


# --------------------------------------------------------------------------------------------------
# item 9: plain one-line errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override,needle", [
    ({"version": "one"}, "invalid format version"),
    ({"version": True}, "invalid format version"),
    ({"version": 0}, "invalid format version"),
    ({"version": 2}, "upgrade personavlm"),
    ({"files": []}, "malformed manifest"),
    ({"files": None}, "malformed manifest"),
    ({"files": {}}, "malformed manifest"),
    ({"files": {"memories.jsonl": 5}}, "malformed manifest"),
    ({"format": ["personavlm-archive"]}, "not a personavlm archive"),
])
def test_malformed_manifests_are_refused_with_one_line(tmp_path, override, needle):
    refused(build(tmp_path / "m.pvm", manifest=override), needle)


def test_manifest_numbers_json_cannot_hold_and_nested_memories_are_one_line(tmp_path, isolated_home):
    from personavlm_cli.adapters.archive_checks import strict_json

    path = tmp_path / "v.pvm"
    files = {"memories.jsonl": (json.dumps(memory()) + "\n").encode()}
    head = json.dumps({"format": "personavlm-archive", "files": {n: hashlib.sha256(d).hexdigest()
                                                                 for n, d in files.items()}, "version": 0})
    for version in ("1e400", "NaN", "-Infinity", "1" * 5000):
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("manifest.json", head.replace('"version": 0', f'"version": {version}'))
            for name, data in files.items():
                z.writestr(name, data)
        refused(path, "personavlm archive" if version != "1" * 5000 else "")
    # Deep nesting is a ValueError of the strict reader, never a RecursionError.
    with pytest.raises(ValueError, match="nested too deeply"):
        strict_json("[" * 100_000 + "]" * 100_000)
    nested = build(tmp_path / "n.pvm", lines=['{"id": ' + "[" * 200_000 + "]" * 200_000 + "}"])
    refused(nested, "line 1 is invalid", "nested too deeply")
    assert_one_line_error(run_in_process("memory", "import", str(nested)), "nested too deeply")


def test_times_out_of_range_are_one_line_errors(isolated_home):
    from personavlm_cli.core.errors import PersonaError
    from personavlm_cli.core.memory import parse_time

    for text in ("0001-01-01 00:00", "0001-01-01", "9999-12-31 23:59", "0001-01-01T00:00:00+14:00"):
        with pytest.raises(PersonaError, match="year must be between 1900 and 9998"):
            parse_time(text, "--at time")
    assert parse_time("2026-11-01 10:00").year == 2026
    r = run_in_process("chat", "--at", "0001-01-01 00:00", "--once", "hello")
    assert_one_line_error(r, "--at time", "year must be between")
    from personavlm_cli.adapters.records import RecordStore

    user_dir(isolated_home).mkdir(parents=True)
    RecordStore(user_dir(isolated_home)).close()
    assert_one_line_error(run_in_process("memory", "list", "--since", "0001-01-01"), "year must be between")


def test_bad_settings_files_and_homes_are_one_line_errors(tmp_path, isolated_home):
    from personavlm_cli.core.config import Settings
    from personavlm_cli.core.errors import ConfigError

    isolated_home.mkdir(parents=True)
    config = isolated_home / "config.yaml"
    env = {"PERSONAVLM_HOME": str(isolated_home)}
    config.write_text("chat:\n  session_gap_minutes: 99999999999999\n")
    with pytest.raises(ConfigError, match="'chat.session_gap_minutes' must be between 1 and 525600"):
        Settings.load(environ=env)
    config.write_bytes("user: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        Settings.load(environ=env)
    assert_one_line_error(run_in_process("memory", "list"), "not UTF-8")
    config.write_text("model:\n" + "  " * 0 + "a: " + "[" * 10_000 + "]" * 10_000 + "\n")
    with pytest.raises(ConfigError):
        Settings.load(environ=env)
    config.unlink()

    with pytest.raises(ConfigError, match="PERSONAVLM_HOME=/etc/passwd is not a directory"):
        Settings.load(environ={"PERSONAVLM_HOME": "/etc/passwd"})
    archive = build(tmp_path / "ok.pvm")
    for command in (("memory", "list"), ("chat", "--once", "hi"), ("memory", "import", str(archive))):
        assert_one_line_error(run_in_process(*command, env={"PERSONAVLM_HOME": "/etc/passwd"}), "not a directory")
    # A home whose data directory cannot be made (a file in the way) is one line too.
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "data").write_text("a file where the data directory goes")
    assert_one_line_error(run_in_process("memory", "import", str(archive), env={"PERSONAVLM_HOME": str(blocked)}),
                          "a file is in the way")


# --------------------------------------------------------------------------------------------------
# item 10: settings and records validated
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("yaml_text,needle", [
    ("model:\n  max_tokens: 0\n", "'model.max_tokens' must be between 1 and"),
    ("model:\n  max_tokens: -5\n", "'model.max_tokens' must be between 1 and"),
    ("model:\n  temperature: -3\n", "'model.temperature' must be between 0 and 5"),
    ("model:\n  temperature: .nan\n", "'model.temperature' must be a finite float"),
    ("model:\n  temperature: .inf\n", "'model.temperature' must be a finite float"),
    ("model:\n  context: -1\n", "'model.context' must be between 0 and"),
    ("model:\n  threads: 0\n", "'model.threads' must be between 1 and 1024"),
    ("chat:\n  recent_turns: -2\n", "'chat.recent_turns' must be between 0 and"),
    ("chat:\n  session_gap_minutes: 0\n", "'chat.session_gap_minutes' must be between 1 and"),
])
def test_out_of_range_settings_are_refused(isolated_home, yaml_text, needle):
    from personavlm_cli.core.config import Settings
    from personavlm_cli.core.errors import ConfigError

    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "config.yaml").write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        Settings.load(environ={"PERSONAVLM_HOME": str(isolated_home)})
    assert needle in str(info.value)
    key = needle.split("'")[1]
    var = "PERSONAVLM_" + key.upper().replace(".", "_")
    value = yaml_text.split(": ")[-1].strip()
    (isolated_home / "config.yaml").unlink()
    with pytest.raises(ConfigError, match=var):
        Settings.load(environ={"PERSONAVLM_HOME": str(isolated_home), var: value})


def test_a_misspelled_personavlm_variable_is_refused_with_a_suggestion(isolated_home):
    from personavlm_cli.core.config import Settings
    from personavlm_cli.core.errors import ConfigError

    home = {"PERSONAVLM_HOME": str(isolated_home)}
    with pytest.raises(ConfigError, match="unknown environment variable PERSONAVLM_MODEL_MAX_TOKEN "
                                          r"\(did you mean PERSONAVLM_MODEL_MAX_TOKENS\?\)"):
        Settings.load(environ={**home, "PERSONAVLM_MODEL_MAX_TOKEN": "5"})
    with pytest.raises(ConfigError, match="unknown environment variable PERSONAVLM_FROBNICATE"):
        Settings.load(environ={**home, "PERSONAVLM_FROBNICATE": "1"})
    ok = Settings.load(environ={**home, "PERSONAVLM_DEBUG": "1", "PERSONAVLM_MODEL_MAX_TOKENS": "64"})
    assert ok["model.max_tokens"] == 64
    assert_one_line_error(run_in_process("memory", "list", env={"PERSONAVLM_MODLE_PATH": "x"}),
                          "did you mean PERSONAVLM_MODEL_PATH")


def test_archives_with_bad_roles_links_or_time_order_are_refused(tmp_path):
    from personavlm_cli.adapters.archive import read_archive
    from personavlm_cli.core.errors import PersonaError
    from personavlm_cli.core.transfer import import_archive

    turn = memory(id="turn_0000000001", type="turn", role="user", session_id="s1")
    cases = {
        "role system": ([{**turn, "role": "system"}], "role 'system' is not user or assistant"),
        "turn without a role": ([{**turn, "role": None}], "must have the role"),
        "role on a fact": ([memory(role="root")], "not user or assistant"),
        "supersedes itself": ([memory(superseded_by="sem_0000000001", valid_to=NOW)], "supersedes itself"),
        "loop": ([memory(id="sem_a", superseded_by="sem_b", valid_to=NOW),
                  memory(id="sem_b", superseded_by="sem_c", valid_to=NOW),
                  memory(id="sem_c", superseded_by="sem_a", valid_to=NOW)], "form a loop"),
        "end before start": ([memory(type="episodic", id="epi_1", occurred_at=NOW,
                                     occurred_end="2026-10-31T10:00:00+00:00")], "occurred_end is before occurred_at"),
        "year 1": ([memory(occurred_at="0001-01-01T00:00:00+00:00")], "out of range"),
        "bad successor id": ([memory(superseded_by="../x")], "superseded_by is not an id"),
        "bad sha": ([memory(image_sha256="abc")], "image_sha256 is not a sha256"),
        "NaN in meta": (None, "nan is not a number"),
    }
    for name, (mems, needle) in cases.items():
        if mems is None:
            path = build(tmp_path / "nan.pvm", lines=['{"id": "sem_1", "type": "semantic", "text": "t", '
                                                      f'"occurred_at": "{NOW}", "created_at": "{NOW}", '
                                                      '"meta": {"w": NaN}}'])
        else:
            path = build(tmp_path / f"{abs(hash(name))}.pvm", mems)
        refused(path, needle, "nothing imported")

    # A dangling superseded_by is checked against the archive and the store it goes into.
    dangling = read_archive(build(tmp_path / "d.pvm", [memory(superseded_by="sem_elsewhere", valid_to=NOW)]))
    store = make_store(tmp_path / "u")
    with pytest.raises(PersonaError, match="superseded by sem_elsewhere, which is neither in the archive nor"):
        import_archive(store, dangling)
    assert store.records.count() == 0
    # ... and is fine when the store holds the successor.
    from personavlm_cli.core.memory import Memory

    store.add([Memory(**memory(id="sem_elsewhere", text="newer"))], embed=False)
    assert import_archive(store, dangling)["added"] == 1
    store.close()


def test_a_real_export_still_imports_after_all_the_checks(tmp_path):
    """Supersede chains, images, turns, episodes and personality history from a real store pass."""
    from personavlm_cli.adapters.archive import ZipArchive, read_archive
    from personavlm_cli.core.memory import Memory
    from personavlm_cli.core.transfer import export_archive, import_archive

    src = make_store(tmp_path / "src")
    png = png_bytes(30)
    sha = hashlib.sha256(png).hexdigest()
    (src.images_dir / sha[:2]).mkdir(parents=True)
    (src.images_dir / sha[:2] / f"{sha}.png").write_bytes(png)
    mems = [Memory(**memory(id="turn_1", type="turn", role="user", session_id="s1")),
            Memory(**memory(id="turn_2", type="turn", role="assistant", session_id="s1")),
            Memory(**image_memory(png, id="img_1")),
            Memory(**memory(id="sem_1", superseded_by="sem_2", valid_to=NOW)),
            Memory(**memory(id="sem_2", superseded_by="sem_3", valid_to=NOW)),
            Memory(**memory(id="sem_3")),
            Memory(**memory(id="sem_closed", valid_to=NOW)),
            Memory(**memory(id="epi_1", type="episodic", occurred_end="2026-11-01T11:00:00+00:00"))]
    with src.records.transaction():
        src.records.insert(mems)
        src.records.set_meta("personality", GOOD)
        src.records.set_meta("personality_updates", 1)
        src.records.add_personality(ENTRY)
        src.records.set_meta("consolidated", {"s1": 2})
    export_archive(src.records, src.user_dir, tmp_path / "a.pvm", "ada", ZipArchive())
    dst = make_store(tmp_path / "dst")
    assert import_archive(dst, read_archive(tmp_path / "a.pvm"))["added"] == len(mems)
    assert [m.to_dict() for m in dst.records.list(include_superseded=True)] == \
        [m.to_dict() for m in src.records.list(include_superseded=True)]
    src.close()
    dst.close()


# --------------------------------------------------------------------------------------------------
# properties: hostile JSON, markup and control characters in archive members
# --------------------------------------------------------------------------------------------------

hostile_text = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["[/b]", "[link=https://evil.example]docs[/link]", "\x1b[2J", "\x1b]0;title\x07", "[/INST]",
                     "\u2028", "\x00", "\ud7ff", "NaN", "1e400", "{}", "[" * 50]),
)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), hostile_text)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    hostile_text, inner, max_size=3), max_leaves=10)


def _dump(value) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=True)


@st.composite
def hostile_members(draw):
    """One member hostile at a time (the memories line, personality.json or state.json), the others well
    formed, so that each member's checks are reached (a bad line refuses the archive before the rest is read)."""
    target = draw(st.sampled_from(["line", "personality", "state"]))
    base = memory(text=draw(hostile_text), keywords=draw(hostile_text))
    line, pers, state = _dump(base), None, "{}"
    if target == "line":
        field = draw(st.sampled_from(sorted(base) + ["role", "superseded_by", "occurred_end", "valid_to",
                                                     "image_sha256", "session_id"]))
        if draw(st.booleans()):
            base[field] = draw(json_value)
        line = draw(st.one_of(st.just(_dump(base)), json_value.map(_dump), hostile_text,
                              st.integers(1, 3000).map(lambda n: "[" * n + "]" * n)))
    elif target == "personality":
        # A well-formed block with one part hostile (the five traits each a reading or a hostile value), or a
        # hostile block as a whole.
        block: dict = {"state": dict.fromkeys(TRAITS, 3.0), "updates": 1, "history": []}
        part = draw(st.sampled_from(["whole", "state", "updates", "history"]))
        if part == "state":
            vector = st.fixed_dictionaries({t: st.one_of(json_value, st.floats(1, 5)) for t in TRAITS})
            block["state"] = draw(st.one_of(vector, st.dictionaries(st.sampled_from(TRAITS), json_value), json_value))
        elif part == "updates":
            block["updates"] = draw(json_value)
        elif part == "history":
            block["history"] = draw(st.one_of(st.lists(json_value, max_size=2), json_value))
        pers = draw(json_value.map(_dump)) if part == "whole" else _dump(block)
    else:
        state = draw(st.one_of(json_value.map(_dump), st.fixed_dictionaries({"consolidated": json_value}).map(_dump),
                               st.fixed_dictionaries({"consolidated": st.dictionaries(hostile_text, json_value,
                                                                                       max_size=3)}).map(_dump)))
    return line, pers, state


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(case=hostile_members())
@example(case=(_dump(memory()), _dump({"state": {**dict.fromkeys(TRAITS, 3), "openness": "high"}}), "{}"))
@example(case=(_dump(memory()), None, _dump({"consolidated": {"s1": "two"}})))
def test_hostile_json_in_archive_members_is_refused_with_one_persona_error_or_imports_cleanly(tmp_path_factory, case):
    from personavlm_cli.adapters.archive import read_archive
    from personavlm_cli.core.errors import PersonaError
    from personavlm_cli.core.transfer import import_archive

    line, pers, state = case
    root = tmp_path_factory.mktemp("h")
    path = build(root / "h.pvm", lines=[line], personality_json=None if pers is None else pers.encode("utf-8",
                 "surrogatepass"), state_json=state.encode("utf-8", "surrogatepass"))
    try:
        checked = read_archive(path)
    except PersonaError as exc:
        assert "\n" not in str(exc) and "\r" not in str(exc)
        return
    store = make_store(root / "u")
    try:
        import_archive(store, checked)
    except PersonaError as exc:
        assert "\n" not in str(exc)
    else:
        # Whatever came in is usable by what reads it later.
        from personavlm_cli.core import personality as pem

        for m in store.records.list(include_superseded=True):
            m.occurred.timestamp()
        vector = store.records.get_meta("personality")
        if vector is not None:
            assert all(type(vector[t]) in (int, float) and 1 <= vector[t] <= 5 for t in TRAITS), vector
            pem.evolve(vector, {"openness": 4}, store.records.get_meta("personality_updates") or 0)
        done = store.records.get_meta("consolidated") or {}  # sessions to turn counts (core/update.py)
        assert all(isinstance(k, str) and type(n) is int for k, n in done.items()), done
    finally:
        store.close()
