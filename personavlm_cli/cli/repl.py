"""Reading lines for the REPL: editing, per-user history, multi-line input, completion.

prompt_toolkit gives line editing, bracketed paste and completion; a `\"\"\"` line opens a
multi-line block that the next `\"\"\"` line closes. Image paths typed or dropped into a message
are recognised and staged as attachments.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from personavlm_cli.cli.chat import SLASH_HELP

_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")


class LineReader:
    def __init__(self, env, session):
        from prompt_toolkit import PromptSession
        from prompt_toolkit.completion import Completer, Completion, PathCompleter
        from prompt_toolkit.history import FileHistory, InMemoryHistory

        self.session = session
        self.user = env.user
        history = InMemoryHistory()
        if env.settings["chat.history"]:
            history = FileHistory(str(env.user_dir() / "input_history"))
        commands = [k.split()[0] for k in SLASH_HELP]
        paths = PathCompleter(expanduser=True)

        class SlashCompleter(Completer):
            def get_completions(self, document, complete_event):
                text = document.text_before_cursor
                if text.startswith("/attach "):
                    from prompt_toolkit.document import Document

                    sub = Document(text[len("/attach "):])
                    yield from paths.get_completions(sub, complete_event)
                elif text.startswith("/") and " " not in text:
                    for c in commands:
                        if c.startswith(text):
                            yield Completion(c, start_position=-len(text))

        self.prompt = PromptSession(history=history, completer=SlashCompleter(), complete_while_typing=False,
                                    enable_history_search=True)

    def _label(self) -> str:
        staged = self.session.staged
        extra = f" [+{len(staged)} image{'s' if len(staged) > 1 else ''}]" if staged else ""
        return f"{self.user}{extra}> "

    def read(self) -> str:
        line = self.prompt.prompt(self._label())
        if line.strip() == '"""':
            lines = []
            while True:
                more = self.prompt.prompt("... ")
                if more.strip() == '"""':
                    break
                lines.append(more)
            return "\n".join(lines)
        if not line.startswith("/"):
            line = self.pick_up_images(line)
        return line

    def pick_up_images(self, line: str) -> str:
        """Stage image files named in a message (typed or dropped, quoted or not); keep the words."""
        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        for word in words:
            if word.lower().endswith(_IMAGE_EXT):
                path = Path(word).expanduser()
                if path.is_file():
                    self.session.stage(path)
                    line = re.sub(re.escape(word) + r"|'" + re.escape(word) + "'", path.name, line, count=1)
        return line
