"""Inputs stay bounded, destinations are files, numbers mean what they say (issue 27).

Archives bigger than they look are refused whole, in one line, before anything is expanded or created
(the caps are lowered by configuration to keep these tests small); a chat message is cut by bytes before
it is tokenized; `export` never replaces what is not a regular file; config writes keep the user's file.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error
from tests.kit import ScriptedModel
from tests.test_conversation import _conversation

USER = "tester"


def _archive(path: Path, memories: bytes, compression=zipfile.ZIP_DEFLATED) -> Path:
    """An archive whose memories.jsonl is ``memories`` (valid manifest and sha256s: only its size is hostile)."""
    files = {"memories.jsonl": memories, "personality.json": b"{}", "state.json": b"{}"}
    manifest = {"format": "personavlm-archive", "version": 1, "user": USER, "created_at": "2026-01-01T00:00:00+00:00",
                "counts": {"memories": 0, "images": 0, "personality_updates": 0}, "embedding_models": {},
                "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}}
    with zipfile.ZipFile(path, "w", compression=compression, compresslevel=9) as z:
        z.writestr("manifest.json", json.dumps(manifest))
        for name, data in files.items():
            z.writestr(name, data)
    return path


def _user_dir(home: Path) -> Path:
    return home / "data" / "users" / USER


def test_a_zip_bomb_is_refused_from_its_headers_in_one_line_and_creates_nothing(run, isolated_home, tmp_path):
    bomb = _archive(tmp_path / "bomb.pvm", b"\n" * (8 << 20))  # 8 MiB of newlines in about 8 KB
    assert bomb.stat().st_size < 64 << 10
    run("memory", "import", str(bomb))  # the modules a run imports are not what is measured
    tracemalloc.start()
    r = run("memory", "import", str(bomb))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert_one_line_error(r, "too large to import", "expands", "archive.max_ratio", "nothing imported")
    assert peak < 4 << 20, f"refused before decompressing (peak {peak} bytes)"
    assert not _user_dir(isolated_home).exists()
    # The cap on a member's size, lowered by configuration, is read from the headers too.
    r = run("memory", "import", str(bomb), env={"PERSONAVLM_ARCHIVE_MAX_RATIO": "100000",
                                                "PERSONAVLM_ARCHIVE_MAX_MEMBER_MB": "1"})
    assert_one_line_error(r, "too large to import", "memories.jsonl", "archive.max_member_mb")
    assert not _user_dir(isolated_home).exists()


@pytest.mark.parametrize("content", [b"\n" * (24 << 20), (b" " * 60_000 + b"\n") * 400],
                         ids=["newlines", "long-lines-of-spaces"])
def test_a_bomb_let_past_the_ratio_is_streamed_with_memory_flat(run, isolated_home, tmp_path, content):
    """With the ratio allowed, the member is read line by line: memory stays flat, nothing is created."""
    bomb = _archive(tmp_path / "bomb.pvm", content)
    del content
    tracemalloc.start()
    r = run("memory", "import", str(bomb), env={"PERSONAVLM_ARCHIVE_MAX_RATIO": "100000"})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert r.code == 0, r.err
    assert "holds no memories: nothing imported" in r.err
    assert peak < 8 << 20, f"streamed, never held whole (peak {peak} bytes)"
    assert not _user_dir(isolated_home).exists(), "an empty import creates no store"


def test_a_line_over_the_configured_cap_is_refused_while_read(run, isolated_home, tmp_path):
    line = json.dumps({"id": "sem_1", "type": "semantic", "text": "x" * 5000}).encode() + b"\n"
    archive = _archive(tmp_path / "long.pvm", line, compression=zipfile.ZIP_STORED)
    r = run("memory", "import", str(archive), env={"PERSONAVLM_ARCHIVE_MAX_LINE_KB": "4"})
    assert_one_line_error(r, "line 1 is too large", "archive.max_line_kb", "nothing imported")
    assert not _user_dir(isolated_home).exists()


def test_an_empty_archive_creates_no_store(run, isolated_home, tmp_path):
    archive = _archive(tmp_path / "empty.pvm", b"")
    r = run("memory", "import", str(archive))
    assert r.code == 0 and "holds no memories: nothing imported" in r.err, r.err
    assert not _user_dir(isolated_home).exists()
    r = run("profile", "import", str(archive))
    assert r.code == 0, r.err
    assert not _user_dir(isolated_home).exists()


def _with_a_memory(run) -> None:
    from tests.test_display import _memory, seed

    seed([_memory("I drink green tea")])


def test_export_refuses_a_destination_that_is_not_a_regular_file(run, isolated_home, tmp_path):
    _with_a_memory(run)
    assert Path("/dev/full").exists() and stat.S_ISCHR(os.stat("/dev/full").st_mode)
    before = set(os.listdir("/dev"))
    r = run("memory", "export", "/dev/full")
    assert_one_line_error(r, "/dev/full", "a device")
    assert stat.S_ISCHR(os.lstat("/dev/full").st_mode), "the device is still a device"
    assert set(os.listdir("/dev")) == before, "no temporary file left beside it"
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert_one_line_error(run("memory", "export", str(folder)), "a directory")
    link = tmp_path / "link.pvm"
    link.symlink_to(tmp_path / "elsewhere.pvm")
    assert_one_line_error(run("memory", "export", str(link)), "a link")
    assert link.is_symlink() and not (tmp_path / "elsewhere.pvm").exists()
    # A regular file is replaced, through a temporary file of the same directory that is gone after.
    out = tmp_path / "out" / "me.pvm"
    out.parent.mkdir()
    out.write_text("old")
    r = run("memory", "export", str(out))
    assert r.code == 0, r.err
    assert zipfile.is_zipfile(out) and os.listdir(out.parent) == ["me.pvm"]
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600


@pytest.mark.parametrize("args", [("memory", "list", "--limit", "-5"), ("memory", "list", "--limit", "0"),
                                  ("memory", "search", "tea", "--limit", "-1"), ("memory", "search", "tea", "-k", "0")])
def test_negative_and_zero_limits_are_refused(run, args):
    _with_a_memory(run)
    r = run(*args)
    assert r.code == 2 and "Traceback" not in r.err and "--limit" in r.err and "greater than or equal to 1" in r.err, r.err


@pytest.mark.parametrize("written,shown", [("123", "123"), ("0123", "83"), ("yes", "true or false"),
                                           ("1.5", "1.5")])
def test_a_user_name_yaml_reads_as_a_number_is_refused_with_the_quotes_to_write(run, isolated_home, written, shown):
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "config.yaml").write_text(f"user: {written}\n")
    r = run("memory", "list", env={"PERSONAVLM_USER": ""})
    assert_one_line_error(r, "'user' must be text", shown, "in quotes")
    (isolated_home / "config.yaml").write_text(f'user: "{written}"\n')
    rows = {row["key"]: row for row in run("config", "show", "--json").json()}
    assert rows["user"]["value"] in (written, "tester")


def test_model_default_keeps_the_users_comments_and_writes_owner_only_atomically(run, isolated_home):
    isolated_home.mkdir(parents=True, exist_ok=True)
    config = isolated_home / "config.yaml"
    config.write_text("# my settings\nmodel:\n  # a bigger window\n  context: 2048   # tokens\n"
                      "chat:\n  history: false\n")
    config.chmod(0o644)
    r = run("model", "default", "embedded")
    assert r.code == 0, r.err
    text = config.read_text()
    assert "# my settings" in text and "# a bigger window" in text and "context: 2048   # tokens" in text
    assert "history: false" in text
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert sorted(p.name for p in isolated_home.iterdir() if p.is_file()) == ["config.yaml", "models.yaml"]
    assert stat.S_IMODE((isolated_home / "models.yaml").stat().st_mode) == 0o600
    rows = {row["key"]: row for row in run("config", "show", "--json").json()}
    assert rows["model.context"]["value"] == 2048 and rows["model.path"]["value"] is None
    # A file that is not valid YAML is refused, not overwritten.
    config.write_text("model: [unclosed\n")
    r = run("model", "default", "embedded")
    assert r.code != 0 and config.read_text() == "model: [unclosed\n"


def test_a_huge_chat_message_is_cut_by_bytes_before_it_is_tokenized(store):
    class Counting(ScriptedModel):
        longest = 0

        def count_tokens(self, text: str) -> int:
            Counting.longest = max(Counting.longest, len(text.encode()))
            return super().count_tokens(text)

    model = Counting()
    model.n_ctx = 600  # a budget of 300 tokens: at most 300 * 32 bytes are ever tokenized
    conv = _conversation(store, model)
    message = "wörd " * (2 << 20)  # 12 MB
    turn = conv.send(message)
    assert Counting.longest <= 300 * 32
    assert turn.trimmed is not None and turn.trimmed.cut_bytes == len(message.encode())
    assert turn.trimmed.kept == 300
    "".join(turn)
    turn.finish()
    stored = store.records.get(turn.exchange.user_turn.id)
    assert len(stored.text.split()) == 300 and message.startswith(stored.text)


def test_a_megabyte_line_sent_to_chat_is_cut_by_bytes_with_a_notice_and_answered(cli, isolated_home):
    """The real chat with the embedded model: a 1 MB line is cut before it is tokenized, the user is told
    how big it was, and it is answered; what is stored is the beginning of the line."""
    from tests.test_reliability import prepare

    prepare(isolated_home)
    line = "tea " * 250_000
    r = cli("chat", "--no-update", "--context", "512", "--at", "2026-11-08 10:00", input=line + "\n")
    assert r.code == 0, r.err
    assert r.out.strip(), "it still answered"
    notices = [x for x in r.err.splitlines() if x.strip()]
    assert len(notices) == 1 and "1,000,000 bytes" in notices[0] and "cut before reading" in notices[0], r.err
    stored = [m for m in cli("memory", "list", "--json").json() if m.get("role") == "user"]
    assert len(stored) == 1 and line.startswith(stored[0]["text"]) and len(stored[0]["text"]) <= 256 * 32
