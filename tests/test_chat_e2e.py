"""The assistant end to end: the real embedded model, the real store, real image files."""

from __future__ import annotations

import hashlib
import stat

import pytest
from PIL import Image, ImageDraw

from tests.conftest import assert_one_line_error


def make_picture(path, seed: int = 0):
    img = Image.new("RGB", (320, 240), (30 + seed * 40 % 200, 120, 200))
    d = ImageDraw.Draw(img)
    d.ellipse((60, 40, 200, 180), fill=(250, 200, 40))
    d.rectangle((210, 120, 300, 220), fill=(20, 160, 60))
    img.save(path)
    return path


def test_first_chat_answers_with_the_embedded_model_and_keeps_the_timeline(cli, tmp_path, isolated_home):
    r = cli("chat", "--once", "Hello, I am Ada.", "--at", "2026-11-20 10:00")
    assert r.code == 0, r.err
    assert r.out.strip(), "the answer goes to stdout"
    assert "Traceback" not in r.err

    pic = make_picture(tmp_path / "garden.png")
    r = cli("chat", "--once", "What is in this picture?", "-a", str(pic), "--at", "2026-11-20 10:05")
    assert r.code == 0, r.err
    assert r.out.strip()

    listing = cli("memory", "list", "--json").json()
    turns = [m for m in listing if m["type"] == "turn"]
    images = [m for m in listing if m["type"] == "image"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[0]["text"] == "Hello, I am Ada."
    assert turns[0]["occurred_at"].startswith("2026-11-20T10:00")
    assert turns[2]["occurred_at"].startswith("2026-11-20T10:05")
    assert turns[0]["session_id"] == turns[2]["session_id"], "5 minutes apart is the same chat session"
    assert turns[1]["source_ids"] == [turns[0]["id"]]
    for m in listing:
        for key in ("id", "type", "text", "created_at", "occurred_at", "source_ids"):
            assert key in m

    assert len(images) == 1
    sha = hashlib.sha256(pic.read_bytes()).hexdigest()
    assert images[0]["image_sha256"] == sha
    assert images[0]["source_ids"] == [turns[2]["id"]]
    stored = isolated_home / "data" / "users" / "tester" / "images" / sha[:2] / f"{sha}.png"
    assert stored.read_bytes() == pic.read_bytes()
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    user_dir = isolated_home / "data" / "users" / "tester"
    assert stat.S_IMODE(user_dir.stat().st_mode) == 0o700


def test_scripted_chat_from_stdin_answers_each_line_in_order(cli):
    r = cli("chat", "--at", "2026-11-21 09:00", "--no-update",
            input="Hi there\n/remember My cat is called Miso\nWhat is my cat called?\n")
    assert r.code == 0, r.err
    listing = cli("memory", "list", "--json").json()
    users = [m["text"] for m in listing if m.get("role") == "user"]
    assert users == ["Hi there", "What is my cat called?"]
    semantic = [m for m in listing if m["type"] == "semantic"]
    assert [m["text"] for m in semantic] == ["My cat is called Miso"]
    answers = [m for m in listing if m.get("role") == "assistant"]
    assert len(answers) == 2 and all(a["text"] for a in answers)
    for a in answers:  # an answer that ended is whole, not marked as stopped
        assert not cli("memory", "show", a["id"], "--json").json()["meta"].get("interrupted")


def test_memory_list_filters_by_type_time_and_limit(cli):
    cli("chat", "--once", "first", "--at", "2026-01-01 10:00", "--no-update")
    cli("chat", "--once", "second", "--at", "2026-02-01 10:00", "--no-update")
    r = cli("memory", "list", "--type", "turn", "--since", "2026-01-15", "--json")
    assert [m["text"] for m in r.json() if m["role"] == "user"] == ["second"]
    r = cli("memory", "list", "--until", "2026-01-15", "--json")
    assert [m["text"] for m in r.json() if m.get("role") == "user"] == ["first"]
    r = cli("memory", "list", "--limit", "1", "--json")
    assert len(r.json()) == 1 and r.json()[0]["role"] == "assistant"


@pytest.mark.parametrize("case", ["missing", "directory", "not_image", "empty", "truncated"])
def test_bad_image_is_refused_with_one_line_and_nothing_stored(cli, tmp_path, case):
    path = tmp_path / "x.png"
    if case == "directory":
        path = tmp_path / "adir.png"
        path.mkdir()
    elif case == "not_image":
        path.write_text("this is not an image\n")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        good = make_picture(tmp_path / "good.jpg")
        Image.open(good).save(tmp_path / "full.jpg", quality=95)
        data = (tmp_path / "full.jpg").read_bytes()
        path = tmp_path / "cut.jpg"
        path.write_bytes(data[: len(data) // 2])
    r = cli("chat", "--once", "look", "-a", str(path))
    assert_one_line_error(r, str(path.name))
    listing = cli("memory", "list", "--json")
    assert listing.code != 0 or listing.json() == []


def test_bad_model_file_is_refused(cli, tmp_path):
    text = tmp_path / "model.gguf"
    text.write_text("not a model")
    assert_one_line_error(cli("chat", "--once", "hi", "--model", str(text)), "gguf")
    assert_one_line_error(cli("chat", "--once", "hi", "--model", str(tmp_path / "nope.gguf")), "not found")


def test_bad_config_is_refused(cli, isolated_home):
    isolated_home.mkdir(parents=True, exist_ok=True)
    cfg = isolated_home / "config.yaml"
    cfg.write_text("model: [unclosed\n")
    assert_one_line_error(cli("memory", "list"), "yaml")
    cfg.write_text("colour: blue\n")
    assert_one_line_error(cli("config", "show"), "unknown key")
    cfg.write_text("model:\n  context: lots\n")
    assert_one_line_error(cli("chat", "--once", "hi"), "model.context")


@pytest.mark.parametrize("name", ["../evil", "", "a/b", "bad\x07name", ".hidden"])
def test_bad_user_name_is_refused(cli, name):
    assert_one_line_error(cli("memory", "list", "--user", name), "user name")


def test_unknown_user_is_reported(cli):
    assert_one_line_error(cli("memory", "list", "--user", "nobody"), "nobody")
