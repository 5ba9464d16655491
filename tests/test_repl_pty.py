"""The REPL in a real pseudo-terminal (pexpect): streaming, Tab completion, attachments, Ctrl-C, Ctrl-D.

Each test runs the real `personavlm chat` with the embedded model. What the terminal shows is
rebuilt from the raw output by a small terminal emulator (``Screen``), so the assertions are about
the screen a person would see: every answer once, nothing lost, nothing doubled.
"""

from __future__ import annotations

import os
import re
import select
import signal
import stat
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.test_chat_e2e import make_picture

pexpect = pytest.importorskip("pexpect")

COLS, ROWS = 110, 50
PROMPT_READY = "\x1b[?2004h"  # prompt_toolkit turns bracketed paste on each time it starts a prompt
ANSWER_STARTS = re.compile(r"\r\x1b\[2K[^\x1b\u2800-\u28ff]")  # the spinner is cleared, then text comes
SLOW = 300  # seconds: the machine that runs the tests may be busy


class Screen:
    """Just enough of a VT100/xterm to replay what prompt_toolkit, Rich and the chat write.

    Rows are kept forever (scrollback included); the cursor moves relative to where it is, which is
    how prompt_toolkit draws a non-full-screen prompt.
    """

    def __init__(self, cols: int = COLS):
        self.cols = cols
        self.rows: list[list[str]] = [[]]
        self.r = self.c = 0
        self.autowrap = True
        self.pending_wrap = False

    def _line(self) -> list[str]:
        while len(self.rows) <= self.r:
            self.rows.append([])
        return self.rows[self.r]

    def _put(self, ch: str) -> None:
        if self.pending_wrap and self.autowrap:
            self.r += 1
            self.c = 0
        self.pending_wrap = False
        line = self._line()
        while len(line) < self.c:
            line.append(" ")
        if self.c < len(line):
            line[self.c] = ch
        else:
            line.append(ch)
        if self.c >= self.cols - 1:
            self.pending_wrap = True
        else:
            self.c += 1

    def feed(self, data: str) -> None:
        i, n = 0, len(data)
        while i < n:
            ch = data[i]
            if ch == "\x1b":
                m = re.compile(r"\x1b\[([?>=]?)([0-9;]*)([@-~])").match(data, i)
                if m:
                    self._csi(m.group(1), m.group(2), m.group(3))
                    i = m.end()
                    continue
                m = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)").match(data, i)
                i = m.end() if m else i + 2
                continue
            if ch == "\r":
                self.c, self.pending_wrap = 0, False
            elif ch == "\n":
                self.r += 1
                self.pending_wrap = False
                self._line()
            elif ch == "\b":
                self.c, self.pending_wrap = max(0, self.c - 1), False
            elif ch == "\t":
                self.c = min(self.cols - 1, (self.c // 8 + 1) * 8)
            elif ch >= " ":
                self._put(ch)
            i += 1

    def _csi(self, private: str, params: str, final: str) -> None:
        nums = [int(p) if p else 0 for p in params.split(";")] if params else []
        n = (nums[0] if nums else 0) or 1
        if private == "?":
            if 7 in nums and final in "hl":
                self.autowrap = final == "h"
            return
        self.pending_wrap = False
        if final == "A":
            self.r = max(0, self.r - n)
        elif final == "B":
            self.r += n
        elif final == "C":
            self.c = min(self.cols - 1, self.c + n)
        elif final == "D":
            self.c = max(0, self.c - n)
        elif final == "G":
            self.c = min(self.cols - 1, n - 1)
        elif final == "K":
            line, mode = self._line(), (nums[0] if nums else 0)
            if mode == 0:
                del line[self.c:]
            elif mode == 1:
                line[: self.c + 1] = [" "] * min(len(line), self.c + 1)
            else:
                line.clear()
        elif final == "J":
            mode = nums[0] if nums else 0
            if mode == 0:
                del self._line()[self.c:]
                del self.rows[self.r + 1:]

    def text(self) -> str:
        return "\n".join("".join(row).rstrip() for row in self.rows).strip("\n")


def _flat(text: str) -> str:
    """Text without whitespace or Markdown marks, to find an answer whatever the wrapping and styling."""
    return re.sub(r"[\s*`#_>•▌─-]+", "", text.replace("^C", ""))  # the terminal echoes Ctrl-C as ^C


class Chat:
    """A `personavlm chat` in a pseudo-terminal, with everything it printed kept."""

    def __init__(self, *args: str):
        env = {**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1", "PYTHONUNBUFFERED": "1",
               "COLUMNS": str(COLS), "LINES": str(ROWS)}
        env.pop("NO_COLOR", None)
        self.raw: list[str] = []
        self.child = pexpect.spawn(sys.executable, ["-m", "personavlm_cli", "chat", *args], env=env, cwd=str(ROOT), use_poll=True,
                                   encoding="utf-8", codec_errors="replace", timeout=SLOW, dimensions=(ROWS, COLS),
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.child.logfile_read = self

    # pexpect writes what it reads here
    def write(self, data: str) -> None:
        self.raw.append(data)

    def flush(self) -> None:
        pass

    def screen(self) -> str:
        s = Screen()
        s.feed("".join(self.raw))
        return s.text()

    def prompt(self, timeout: float = SLOW) -> None:
        self.child.expect_exact(PROMPT_READY, timeout=timeout)
        self.child.expect_exact("tester", timeout=timeout)

    def until_screen_shows(self, needle: str, timeout: float = 60) -> None:
        """Wait until the rebuilt screen shows ``needle`` (for what is drawn with cursor moves)."""
        deadline = time.monotonic() + timeout
        while needle not in self.screen():
            if time.monotonic() > deadline:
                raise AssertionError(f"the screen never showed {needle!r}:\n{self.screen()}")
            try:
                self.child.expect(r"[\s\S]", timeout=0.5)
            except pexpect.TIMEOUT:
                pass

    def say(self, text: str) -> None:
        self.child.sendline(text)
        self.prompt()

    def close(self) -> int | None:
        if self.child.isalive():
            self.child.expect(pexpect.EOF, timeout=SLOW)
        self.child.close()
        return self.child.exitstatus


def _user_dir(home):
    return home / "data" / "users" / "tester"


def test_a_chat_in_a_terminal_streams_attaches_with_tab_stops_with_ctrl_c_and_quits_with_ctrl_d(
        cli, tmp_path, isolated_home):
    pics = tmp_path / "xyz"
    pics.mkdir()
    pic = make_picture(pics / "picture.png")
    (pics / "pilot.txt").write_text("not an image: Tab completion after /attach leaves it out\n")

    chat = Chat("--no-update", "--at", "2026-11-20 10:00")
    chat.prompt()
    chat.say("Hello, my name is Ada.")

    # Tab completes the path (only images and folders are offered), Enter stages it.
    chat.child.send(f"/attach {pics}/pi")
    chat.child.send("\t")
    chat.until_screen_shows(f"tester> /attach {pics}/picture.png")
    chat.child.sendline("")
    chat.child.expect_exact("Attached picture.png")
    chat.prompt()
    chat.child.expect_exact("[picture.png]")  # the prompt shows what is staged
    chat.say("What is in this picture?")

    # A long answer, stopped by Ctrl-C shortly after it starts streaming.
    for _attempt in range(3):
        chat.child.sendline("Write a very long story, at least 800 words, about a dragon who learns to bake bread.")
        chat.child.expect(ANSWER_STARTS)
        if chat.child.expect_exact([PROMPT_READY, pexpect.TIMEOUT], timeout=0.7) == 1:
            break  # still streaming
        chat.child.expect_exact("tester")  # it finished too soon: ask again
    else:
        pytest.fail("the model never streamed a long answer")
    chat.child.sendintr()
    chat.child.expect_exact("answer stopped")
    chat.prompt()
    chat.child.sendline("/stats")
    chat.child.expect_exact("last answer")
    chat.child.expect_exact("(stopped)")
    chat.child.expect_exact("context:")
    chat.prompt()
    chat.child.sendeof()
    assert chat.close() == 0
    screen = chat.screen()
    print(screen)  # shown by pytest when the test fails; also useful with -s

    listing = cli("memory", "list", "--json").json()
    turns = [m for m in listing if m["type"] == "turn"]
    users = [t for t in turns if t["role"] == "user"]
    answers = [t for t in turns if t["role"] == "assistant"]
    assert [u["text"] for u in users[:2]] == ["Hello, my name is Ada.", "What is in this picture?"]
    assert len(answers) == len(users)
    images = [m for m in listing if m["type"] == "image"]
    assert len(images) == 1 and images[0]["source_ids"] == [users[1]["id"]]
    assert images[0]["image_sha256"] and images[0]["text"].startswith("Image picture.png")

    stopped = cli("memory", "show", answers[-1]["id"], "--json").json()
    assert stopped["meta"].get("interrupted") is True
    for a in answers[:-1]:
        assert not cli("memory", "show", a["id"], "--json").json()["meta"].get("interrupted")

    # What the terminal shows: each answer (the stopped one as far as it got) once, nothing lost.
    flat = _flat(screen)
    for a in answers:
        if a["text"].strip():
            assert flat.count(_flat(a["text"])) == 1, (a["text"], screen)
    assert "tester [picture.png]> What is in this picture?" in screen
    assert "answer stopped" in screen
    assert "Traceback" not in screen

    # The input history is the user's own: owner-only.
    history = _user_dir(isolated_home) / "input_history"
    assert "Hello, my name is Ada." in history.read_text()
    assert stat.S_IMODE(history.stat().st_mode) == 0o600
    assert pic.exists()


def test_two_ctrl_c_at_an_empty_prompt_quit_with_status_130():
    chat = Chat("--no-update", "--at", "2026-11-20 11:00")
    chat.prompt()
    chat.child.send("some words")
    chat.child.expect_exact("some words")
    chat.child.sendintr()  # with text typed: clears the line, does not count
    time.sleep(0.3)
    chat.child.sendintr()
    chat.child.expect_exact("Ctrl-C again")
    chat.prompt()
    chat.child.sendintr()
    assert chat.close() == 130


def test_multi_line_block_bracketed_paste_and_a_dropped_image_path(cli, tmp_path):
    pic = make_picture(tmp_path / "my photo.png", seed=3)
    chat = Chat("--no-update", "--at", "2026-11-20 12:00", "--plain")
    chat.prompt()
    chat.child.sendline('"""')
    chat.child.sendline("first line")
    chat.child.sendline("second line")
    chat.child.sendline('"""')
    chat.prompt()
    # A paste (bracketed by the terminal) keeps its line breaks and is one message.
    chat.child.send("\x1b[200~pasted one\npasted two\x1b[201~")
    chat.child.send("\r")
    chat.prompt()
    # A path dropped into the terminal arrives quoted; it is attached and replaced by the file's name.
    chat.say(f"Look at this '{pic}' please")
    chat.child.sendline("/exit")
    assert chat.close() == 0

    listing = cli("memory", "list", "--json").json()
    users = [m for m in listing if m["type"] == "turn" and m["role"] == "user"]
    assert [u["text"] for u in users] == ["first line\nsecond line", "pasted one\npasted two",
                                          "Look at this my photo.png please"]
    images = [m for m in listing if m["type"] == "image"]
    assert len(images) == 1 and images[0]["source_ids"] == [users[2]["id"]]


# -- the pieces, without a terminal --------------------------------------------------------------

def _replay(pieces, width=40, styled=True):
    import io

    from personavlm_cli.cli.answer import AnswerWriter

    buf = io.StringIO()
    w = AnswerWriter(buf, styled=styled, width=width)
    for p in pieces:
        w.write(p)
    w.end()
    screen = Screen(cols=width)
    screen.feed(buf.getvalue().replace("\n", "\r\n"))  # the terminal's onlcr
    return buf.getvalue(), screen.text()


def _chunks(text, size=3):
    return [text[i:i + size] for i in range(0, len(text), size)]


def test_streamed_markdown_is_restyled_once_and_long_lines_wrap_at_words_without_loss():
    answer = ("# Bread\n"
              "Here is **how** to bake it with `rye`:\n"
              "- mix the flour and the water\n"
              "* knead for ten minutes, then let the dough rest in a warm place for an hour or two\n"
              "```\n"
              "oven = 220\n"
              "```\n"
              "Enjoy!")
    raw, screen = _replay(_chunks(answer))
    assert screen.splitlines() == [
        "Bread",
        "Here is how to bake it with rye:",
        "• mix the flour and the water",
        "* knead for ten minutes, then let the",  # wrapped: never redrawn, so kept as streamed
        "dough rest in a warm place for an hour",
        "or two",
        "```",
        "oven = 220",
        "```",
        "Enjoy!",
    ]
    assert "\x1b[1m" in raw  # bold was drawn


def test_plain_output_is_the_answer_exactly():
    answer = "Some **bold** text\n- a list\nand a very long line that goes on and on past the edge of the terminal"
    raw, _ = _replay(_chunks(answer, 5), styled=False)
    assert raw == answer + "\n"


def test_wide_or_uncertain_characters_are_never_redrawn():
    raw, screen = _replay(["**日本** and 😀 stay as written\n", "**ok**"], width=60)
    assert screen.splitlines() == ["**日本** and 😀 stay as written", "ok"]


def test_image_paths_in_a_message_are_picked_up(tmp_path):
    from personavlm_cli.cli.repl import pick_up_images

    a = make_picture(tmp_path / "a.png")
    b = make_picture(tmp_path / "my b.jpg")
    text, found = pick_up_images(f"compare {a} with '{b}' and {tmp_path}/missing.png")
    assert found == [a, b]
    assert text == f"compare a.png with my b.jpg and {tmp_path}/missing.png"
    escaped = str(b).replace(" ", "\\ ")
    assert pick_up_images(f"{escaped}") == ("my b.jpg", [b])
    assert pick_up_images(f"file://{a}")[1] == [a]
    assert pick_up_images("no pictures here.png") == ("no pictures here.png", [])


def test_triple_quote_blocks():
    from personavlm_cli.cli.repl import open_block, strip_block

    assert open_block('"""') and open_block('"""\nfirst') and not open_block('"""\nfirst\n"""')
    assert not open_block("plain") and not open_block('"""one line"""')
    assert strip_block('"""\nfirst\nsecond\n"""') == "first\nsecond"
    assert strip_block('"""inline"""') == "inline"


def test_words_move_whole_to_the_next_row_and_nothing_is_lost_at_the_edge():
    # The last column is kept free (no pending-wrap state); a word longer than a row just wraps.
    _, screen = _replay(["abcd ef", "ghi", "\nxy abcdefghijklmnop q", " rs", "tu"], width=10)
    assert screen.splitlines() == ["abcd", "efghi", "xy abcdefg", "hijklmnop", "q rstu"]
    # Shown as it comes: a word's first part is on the screen before the rest arrives.
    import io

    from personavlm_cli.cli.answer import AnswerWriter

    buf = io.StringIO()
    w = AnswerWriter(buf, styled=True, width=40)
    w.write("Once upon a ti")
    assert buf.getvalue() == "Once upon a ti"


def test_a_terminal_nobody_sized_wraps_at_80_columns():
    """A pty whose size was never set (`script` in a pipeline, some CI runners) reports 0 columns; the
    answer is still written, wrapped as on an 80-column terminal (it divided by zero once)."""
    from personavlm_cli.cli.answer import AnswerWriter

    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert os.get_terminal_size(tty.fileno()).columns == 0
            w = AnswerWriter(tty, styled=True)
            assert w.width() == 80
            w.write("word " * 40)
            w.end()
            tty.flush()
        shown = ""
        while shown.count("word") < 40 and select.select([master], [], [], 5)[0]:  # a pty hands out a line at a time
            shown += os.read(master, 65536).decode(errors="replace")
        assert shown.count("word") == 40, shown
    finally:
        os.close(master)
        os.close(slave)


def test_text_typed_while_the_answer_is_prepared_waits_for_the_next_prompt_and_quit_is_at_once():
    """Typed-ahead text is not echoed onto the spinner line; it shows at the next prompt. Ctrl-D with
    learning pending returns at once, with one line saying what is left."""
    chat = Chat("--at", "2026-11-20 12:00")
    chat.prompt()
    chat.child.sendline("Write a long poem about the sea, at least 300 words.")
    chat.child.expect_exact("Thinking")  # the spinner runs: echo is off
    chat.child.send("typed-ahead")
    chat.prompt()
    chat.until_screen_shows("tester> typed-ahead")
    screen = chat.screen()
    assert screen.count("typed-ahead") == 1, screen
    chat.child.send("\x15")  # clear the line
    chat.child.sendeof()
    start = time.monotonic()
    assert chat.close() == 0
    assert time.monotonic() - start < SLOW
    assert "left to learn" in chat.screen() or "Nothing" not in chat.screen()
