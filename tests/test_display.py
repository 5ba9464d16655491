"""What the CLI shows: stored and model-made text is shown literally (never Rich markup, never a terminal
control sequence), listings have one layout, and every command the docs name exists.

Fast and in-process: memories are written straight into a record file (no model), and commands run
through ``personavlm_cli.cli.main`` in a captured terminal (``run_in_process``); one runs in a child
process with colour forced on, as in a real terminal.
"""

from __future__ import annotations

import functools
import io
import json
import re
import shlex

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personavlm_cli.cli import common
from personavlm_cli.cli.common import clean, escape_markup, line, one_line, safe, short
from tests.conftest import ROOT, run_cli, run_in_process
from tests.kit import memory

HOSTILE = [
    "In my notes I wrote [/b] by mistake",
    "the model said [/INST] and stopped",
    "read the [link=https://evil.example]docs[/link]",
    "[bold red]shouting[/] and [/] alone",
    "clear \x1b[2J screen, title \x1b]0;pwned\x07, 8-bit CSI \x9b31m, bidi \u202eevil",
    "path C:\\dir\\",
    ":smile: emoji code and \\[escaped] [not a tag",
]
# Bytes a stored text must never get onto the terminal: ESC, BEL, CSI (8-bit), OSC, the bidi override.
RAW = ("\x1b", "\x07", "\x9b", "\x9d", "\u202e")

def _memory(text: str, type: str = "semantic", **extra):
    from personavlm_cli.core.memory import iso, now

    stamp = iso(now())
    return memory(text, type, at=extra.pop("occurred_at", stamp), created_at=stamp, **extra)


def seed(memories, jobs=()):
    """Write memories (and queued jobs) into the test user's record file, as the store would."""
    from personavlm_cli.adapters.records import RecordStore
    from personavlm_cli.core import users
    from personavlm_cli.core.config import Settings

    path = users.open_user_dir(Settings.load({}), "tester", create=True)
    records = RecordStore(path)
    try:
        with records.transaction():
            records.insert(list(memories))
            for kind, payload in jobs:
                records.add_job(kind, payload)
    finally:
        records.close()
    return path


@pytest.fixture
def pv():
    """``pv(*args, width=N)``: run personavlm in this process (``run_in_process``); the consoles are N
    columns wide."""

    def run(*args, width=120, tty=False, **kwargs):
        if tty:
            return on_a_terminal(*args, width=width, **kwargs)
        return run_in_process(*args, env={"COLUMNS": str(width), **kwargs.pop("env", {})}, **kwargs)

    return run


def on_a_terminal(*args, width=120, input=""):
    """Run personavlm in this process with stdout (and stderr) said to be a terminal N columns wide; the
    styles are taken out of what it printed, so the text is what a person reads."""
    from personavlm_cli.cli import main, terminal
    from tests.conftest import Result

    term = terminal.captured(input)
    term._tty.update(stdout=True, stderr=True)
    term._environ = {**__import__("os").environ, "COLUMNS": str(width), "TERM": "xterm"}
    code = main(list(args), environment=term)
    plain = functools.partial(re.sub, "\x1b\\[[0-9;]*m", "")
    return Result(code, plain(terminal.text(term.stdout)), plain(terminal.text(term.stderr)))


def assert_inert(text: str) -> None:
    """Nothing in ``text`` can act on a terminal (the test consoles are not terminals: no styles either)."""
    for raw in RAW:
        assert raw not in text, f"{raw!r} reached the output: {text!r}"
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", text), repr(text)


# --------------------------------------------------------------------------------------------------
# Issue 17, items 1 and 2: markup and control characters in stored text
# --------------------------------------------------------------------------------------------------


def test_markup_in_memory_text_is_shown_literally_by_list_show_and_export(pv, tmp_path):
    seed([_memory(t) for t in HOSTILE])
    listed = pv("memory", "list", width=200)
    assert listed.code == 0, listed
    for text in HOSTILE:
        assert one_line(text) in listed.out, text
    assert_inert(listed.out + listed.err)
    assert "MarkupError" not in listed.err

    for m in json.loads(pv("memory", "list", "--json").out):
        shown = pv("memory", "show", m["id"], width=200)
        assert shown.code == 0, shown
        assert clean(m["text"]) in shown.out
        assert_inert(shown.out + shown.err)

    archive = tmp_path / "[bold]odd [name].pvm"
    exported = pv("memory", "export", str(archive))
    assert exported.code == 0 and "[bold]odd [name].pvm" in exported.err, exported


def test_control_sequences_in_memory_text_are_made_visible(pv):
    seed([_memory(HOSTILE[4])])
    shown = pv("memory", "list", width=200)
    assert "clear \\x1b[2J screen, title \\x1b]0;pwned\\x07, 8-bit CSI \\x9b31m, bidi \\u202eevil" in shown.out
    assert_inert(shown.out)


def test_a_real_terminal_gets_styles_but_no_control_sequence_from_stored_text():
    """A child process with colour forced on, as in a terminal: Rich's own styles, nothing stored."""
    seed([_memory(HOSTILE[4]), _memory(HOSTILE[0])])
    r = run_cli("memory", "list", env={"FORCE_COLOR": "1", "TERM": "xterm-256color"})
    assert r.code == 0, r.err
    assert "\x1b[" in r.out, "styles are on"
    assert "\\x1b[2J" in r.out and "\x1b[2J" not in r.out and "\x1b]0;" not in r.out
    assert "\x9b" not in r.out and "\x07" not in r.out and "\u202e" not in r.out
    assert "[/b]" in r.out


def test_search_and_forget_show_and_erase_hostile_memories(pv):
    seed([_memory(t) for t in HOSTILE])
    found = pv("memory", "search", "notes [/b]", "--explain")
    assert found.code == 0, found
    assert "In my notes I wrote [/b] by mistake" in found.out
    assert_inert(found.out + found.err)

    by_query = pv("memory", "forget", "--query", "In my notes I wrote [/b] by mistake", "--yes")
    assert by_query.code == 0, by_query
    assert "[/b]" in by_query.err and "Erased" in by_query.err
    assert_inert(by_query.err)

    everything = pv("memory", "forget", "--all", "--yes")
    assert everything.code == 0, everything
    assert "[link=https://evil.example]docs[/link]" in everything.err
    assert_inert(everything.err)
    assert json.loads(pv("memory", "list", "--json").out) == []


def test_show_renders_hostile_provenance_metadata_and_versions(pv):
    old = _memory("old [/b] version", id="sem_aaaaaaaaaa")
    new = _memory("new \x1b[2J version", id="sem_bbbbbbbbbb", source_ids=["turn_cccccccccc"],
                  keywords="[/kw] \x1b]0;t\x07",
                  meta={"origin": "[red]edit", "reason": "[/i]\x9b", "merged": [{"at": "2026", "text": "[/m]"}],
                        "reasoning": {"steps": [{"action": "[/a]", "keywords": "\x1b[1m"}]}})
    old.superseded_by, old.valid_to = new.id, new.created_at
    turn = _memory("I said [/INST] \x1b[31m", type="turn", id="turn_cccccccccc", role="user")
    seed([old, new, turn])
    shown = pv("memory", "show", new.id)
    assert shown.code == 0, shown
    for literal in ("new \\x1b[2J version", "[/kw] \\x1b]0;t\\x07", "[red]edit: [/i]\\x9b", "[/m]",
                    "I said [/INST] \\x1b[31m", "old [/b] version", "[/a]"):
        assert literal in shown.out, literal
    assert_inert(shown.out)


def test_error_lines_quote_user_input_literally(pv):
    seed([_memory("x")])
    r = pv("memory", "show", "[/b]\x1b[2J")
    assert r.code != 0
    assert r.err.strip() == "Error: no memory with id '[/b]\\x1b[2J'"


def test_profile_show_renders_learnt_values_literally(pv):
    core = _memory("name: [/b]", type="core", meta={"facts": {"name": "[/b] \x1b[2J", "likes": ["[i]", "\x9b"]}})
    habit = _memory("[link=https://evil.example]runs[/link]", type="procedural", meta={"key": "[/k]"})
    seed([core, habit])
    r = pv("profile", "show")
    assert r.code == 0, r
    assert "name: [/b] \\x1b[2J" in r.out and "likes: [i], \\x9b" in r.out
    assert "[/k]: [link=https://evil.example]runs[/link]" in r.out
    assert_inert(r.out)
    md = pv("profile", "export", "--format", "md")
    assert md.code == 0 and "\x1b" not in md.out and "[/b] \\x1b[2J" in md.out


def test_settings_paths_and_doctor_show_hostile_values_literally(pv, monkeypatch, tmp_path):
    hostile = str(tmp_path / "[/b] \x1b[2J model.gguf")
    monkeypatch.setenv("PERSONAVLM_MODEL_PATH", hostile)
    shown = pv("config", "show", width=250)
    assert shown.code == 0, shown
    assert "[/b] \\x1b[2J model.gguf" in shown.out
    assert_inert(shown.out)
    doctor = pv("doctor", "--no-load", width=250)
    assert doctor.code == 0, doctor
    assert "[/b] \\x1b[2J model.gguf" in doctor.out
    assert_inert(doctor.out + doctor.err)
    monkeypatch.setenv("PERSONAVLM_HOME", str(tmp_path / "[/b]home"))
    paths = pv("config", "path")
    assert paths.code == 0 and "[/b]home" in paths.out


_fragments = st.sampled_from([
    "[", "]", "[/", "[/b]", "[/INST]", "[b]", "[bold red]", "[/]", "[link=https://evil.example]", "[/link]",
    "[@click=x]", "[#ff0000]", "\\", "\\[", ":smile:", "\x1b", "\x1b[2J", "\x1b]0;t\x07", "\x1b]8;;http://x\x1b\\",
    "\x9b", "\x9d", "\x85", "\x07", "\x08", "\r", "\r\n", "\n", "\t", "\x00", "\x7f", "\u202e", "\u2066", "\u2028",
    "\u200d", "👩‍👩‍👧", "é", "中文", " ",
])
hostile_text = st.lists(st.one_of(_fragments, st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)),
                        max_size=25).map("".join)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=hostile_text)
def test_any_stored_text_lists_and_shows_literally_without_control_bytes(pv, text):
    m = _memory(text)
    seed([m])
    listed = pv("memory", "list", width=200)
    assert listed.code == 0, listed
    assert_inert(listed.out + listed.err)
    shown = pv("memory", "show", m.id, width=10_000)
    assert shown.code == 0, shown
    assert_inert(shown.out + shown.err)
    assert " ".join(clean(text).split()) in " ".join(shown.out.split())


@settings(max_examples=300, deadline=None)
@given(text=hostile_text, width=st.integers(5, 120))
def test_the_helpers_render_any_text_literally(text, width):
    from rich.console import Console

    console = Console(file=io.StringIO(), width=10_000, color_system=None, highlight=False, emoji=False)
    console.print(safe(text), line(("a", "bold"), text, (text, "dim")), f"[dim]x[/dim] {escape_markup(short(text, width))}")
    rendered = console.file.getvalue()
    assert_inert(rendered)
    flat = " ".join(rendered.split())
    assert " ".join(clean(text).split()) in flat
    cut = one_line(text)
    cut = cut if len(cut) <= width else cut[: width - 1] + "…"
    assert ("x " + cut).strip() in flat
    assert json.loads(common.json_text({"t": text}))["t"] == text
    assert not re.search("[\x7f-\x9f\u202e]", common.json_text({"t": text}))


def test_the_consoles_neutralise_control_characters_that_bypass_the_helpers(capsys):
    common.out.print("raw \x1b[31m red \x9b", markup=False)
    common.err.print("raw \x1b]0;title\x07", markup=False)
    captured = capsys.readouterr()
    assert "raw \\x1b[31m red \\x9b" in captured.out and "raw \\x1b]0;title" in captured.err  # BEL: dropped
    assert_inert(captured.out + captured.err)


# --------------------------------------------------------------------------------------------------
# Issue 16: CLI polish
# --------------------------------------------------------------------------------------------------


def test_version_prints_the_program_and_its_version(pv):
    import personavlm_cli

    for flag in ("--version", "-V"):
        r = pv(flag)
        assert r.code == 0 and r.out == f"personavlm {personavlm_cli.__version__}\n", r


def test_pending_updates_are_a_readable_listing_and_valid_json(pv):
    turn = _memory("I adopted a cat named [/b] Miso", type="turn", role="user", session_id="s1")
    seed([turn], jobs=[("turn", {"user": turn.id, "assistant": None}), ("session", {"session": "s1"})])
    r = pv("memory", "list", "--pending")
    assert r.code == 0, r
    assert "{'" not in r.out and "payload" not in r.out, "no raw Python dicts"
    assert "I adopted a cat named [/b] Miso" in r.out and turn.id in r.out and "s1" in r.out
    assert "2 pending updates" in r.err
    jobs = json.loads(pv("memory", "list", "--pending", "--json").out)
    assert [j["kind"] for j in jobs] == ["turn", "session"] and jobs[0]["payload"]["user"] == turn.id
    listed = pv("memory", "list")
    assert "2 updates pending" in listed.err


@pytest.mark.parametrize("width", [60, 120, 200])
def test_listings_are_one_line_per_memory_cut_at_the_terminal_not_wrapped(pv, width):
    long = "My sister lives in Nice and " + "she likes long walks by the sea " * 12
    seed([_memory(long), _memory("short one"), _memory("another [/b] one")])
    r = pv("memory", "list", width=width, tty=True)
    lines = r.out.rstrip("\n").split("\n")
    assert len(lines) == 4, r.out  # the header and one line per memory
    assert all(len(x.rstrip()) <= width for x in lines)
    long_line = next(x for x in lines if "My sister" in x)
    assert long_line.rstrip().endswith("…")
    assert "short one" in r.out and "another [/b] one" in r.out
    assert long in pv("memory", "show", json.loads(pv("memory", "list", "--json").out)[0]["id"], width=1000).out
    found = pv("memory", "search", "sister", "-k", "1", width=width, tty=True)
    assert found.out.count("\n") == 1 and found.out.rstrip().endswith("…"), found.out


def test_in_a_pipe_each_memory_is_one_whole_line_of_tab_separated_columns(pv):
    """`memory list | grep WORD` finds a word at the end of a long memory (issue 29, section 4)."""
    long = "My sister lives in Nice and " + "she likes long walks by the sea " * 12 + "with her dog Pistache"
    seed([_memory(long), _memory("two\tcolumns\nand lines"), _memory(HOSTILE[4])])
    r = pv("memory", "list", width=40)
    assert r.code == 0, r
    rows = [x.split("\t") for x in r.out.splitlines()]
    assert len(rows) == 3 and all(len(x) == 4 for x in rows), r.out  # no header: every line is a memory
    assert [x for x in r.out.splitlines() if "Pistache" in x], "the whole text, not cut at 40 columns"
    by_text = {x[3]: x for x in rows}
    assert one_line(long) in by_text and "two columns and lines" in by_text
    assert all(x[1] == "semantic" and x[0].startswith("sem") for x in rows)
    assert_inert(r.out)
    assert "3 memories" in r.err
    found = pv("memory", "search", "Pistache", "-k", "1", width=40)
    assert found.code == 0, found
    hit = found.out.rstrip("\n").split("\t")
    assert len(hit) == 5 and hit[4] == one_line(long) and float(hit[3]) > 0
    assert json.loads(pv("memory", "list", "--json").out)[0]["text"] in (long, "two\tcolumns\nand lines",
                                                                      HOSTILE[4]), "--json is unchanged"


def test_model_list_never_breaks_a_path(pv, tmp_path):
    from personavlm_cli.adapters.gguf import embedded_model_path

    for width in (40, 80):
        r = pv("model", "list", width=width)
        assert r.code == 0, r
        assert str(embedded_model_path()) in r.out.splitlines()[1], r.out


def test_boolean_flags_show_no_value_in_help(pv):
    for command in (["chat"], ["memory", "list"], ["memory", "forget"], ["doctor"], []):
        r = pv(*command, "--help", width=120)
        assert r.code == 0, r
        assert "<bool>" not in r.out, r.out
        assert "list[" not in r.out, r.out
    chat = pv("chat", "--help", width=120).out
    assert re.search(r"--once\s+<str>", chat) and re.search(r"--attach\s+-a\s+<Path>", chat)


# --------------------------------------------------------------------------------------------------
# Every command a doc or a message names exists
# --------------------------------------------------------------------------------------------------

_STOP = re.compile(r"\s(?:#|\||;|&&|>)|\)|$")


def _named_commands() -> list[tuple[str, str]]:
    """(where, command line) for each `personavlm ...` in README.md, docs/*.md (but the generated
    usage page) and the program's own messages and help."""
    found = []
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "personavlm_cli").rglob("*.py"))]
    for path in sources:
        if path.name == "usage.md":
            continue
        text = path.read_text(encoding="utf-8")
        where = str(path.relative_to(ROOT))
        for m in re.finditer(r"`(?:\.venv/bin/)?personavlm( [^`\n]*)?`", text):  # inline code
            found.append((where, "personavlm" + (m.group(1) or "")))
        if path.suffix == ".md":  # `memory show ID`, `profile export --archive`: a command without the prefix
            for m in re.finditer(r"`((?:memory|profile|model|config|users|eval) [a-z][^`\n]*)`", text):
                found.append((where, "personavlm " + m.group(1)))
            for block in re.findall(r"```(?:sh|bash|shell|console)?\n(.*?)```", text, re.S):
                for raw in block.splitlines():
                    for m in re.finditer(r"(?:^|[\s|;(])(?:\S*/)?personavlm((?: [^\n]*)?)$", raw):
                        rest = m.group(1)
                        found.append((where, "personavlm" + rest[:_STOP.search(rest).start()]))
    return found


@functools.lru_cache(maxsize=1)
def _root_command():
    import typer

    from personavlm_cli.cli import app

    return typer.main.get_command(app)


def _check(command_line: str) -> str | None:
    """None if the command and its options exist, else what is wrong."""
    try:
        words = shlex.split(command_line)[1:]
    except ValueError:
        words = command_line.split()[1:]
    cmd = _root_command()
    ctx = cmd.make_context("personavlm", [], resilient_parsing=True)
    descending = True
    for word in words:
        if word in ("...", "…") or word.startswith("<"):
            break
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            opts = {o for p in cmd.params for o in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))}
            opts |= {"--help", "-h"}
            if name not in opts:
                return f"`{ctx.command_path}` has no option {name}"
            continue
        if descending and hasattr(cmd, "get_command"):
            if word.isupper():  # a placeholder: COMMAND, NAME
                break
            # `memory list/forget/search` names three commands
            subs = [cmd.get_command(ctx, w) for w in word.split("/")] if "/" in word else [cmd.get_command(ctx, word)]
            if None in subs:
                return f"no command `{ctx.command_path} {word}`"
            sub, word = subs[0], word.split("/")[0]
            ctx = sub.make_context(word, [], parent=ctx, resilient_parsing=True)
            cmd = sub
        else:
            descending = False  # an argument: options may still follow
    return None


def test_every_command_the_docs_and_messages_name_exists():
    named = _named_commands()
    assert len(named) > 40 and any("memory forget" in c for _, c in named), named
    problems = sorted({f"{where}: {c!r}: {why}" for where, c in named if (why := _check(c))})
    assert not problems, "\n".join(problems)


def test_the_command_checker_catches_what_does_not_exist():
    assert _check("personavlm doctor --download-clip")
    assert _check("personavlm memory frobnicate")
    assert _check("personavlm logs --frobnicate")
    assert _check("personavlm logs") is None
    assert _check("personavlm memory list --pending --json") is None
    assert _check('personavlm chat -a photo.jpg --once "hi"') is None
    assert _check("personavlm model pull qwen2.5-vl-3b") is None
    assert _check("personavlm --version") is None
    assert _check("personavlm memory list/forget/search") is None
    assert _check("personavlm memory list/frob")


def test_config_show_no_longer_recommends_a_missing_command(pv):
    r = pv("config", "show", width=400)
    assert r.code == 0 and "--download-clip" not in r.out
    assert "--download-clip" not in (ROOT / "docs" / "configuration.md").read_text()
