"""The chat's slash commands (``/remember``, ``/forget``, ``/memories``, ``/profile``, ``/personality``,
``/why``, ``/stats``, ...): what each one asks of the core, and how its answer is shown. ``ChatSession``
(``cli/chat.py``) takes them as a mixin; the REPL's completion lists ``SLASH_HELP``."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from personavlm_cli.cli.common import count, err, out, short
from personavlm_cli.cli.common import line as styled
from personavlm_cli.cli.env import is_tty
from personavlm_cli.core.errors import PersonaError
from personavlm_cli.core.memory import MemoryType

if TYPE_CHECKING:
    from personavlm_cli.cli.env import Env


SLASH_HELP = {
    "/attach PATH": "stage an image for the next message",
    "/remember TEXT": "store a memory exactly as written",
    "/forget ID|TEXT": "erase a memory, or every memory that holds TEXT (listed first), and what came of it",
    "/memories [QUERY]": "list recent memories, or search them",
    "/profile": "show the core profile, habits and goals, and personality",
    "/personality [TRAIT=VALUE ...]": "show the Big Five, or override traits for the next answer",
    "/why": "the last answer's reasoning steps and the memories it used",
    "/stats": "tokens, speed and context use of the last answer",
    "/help": "this list",
    "/exit": "quit (Ctrl-D also quits)",
    "/quit": "quit, as /exit",
}


class SlashCommands:
    """The slash commands of a ``ChatSession``, which holds what they use."""

    env: Env
    conversation: Any
    assistant: Any
    stats: Any

    def stage(self, path: Path) -> None:
        """Attach an image to the next message: ``ChatSession`` (cli/chat.py) defines it; declared here
        because ``/image`` calls it."""
        raise NotImplementedError("ChatSession.stage")

    # -- slash commands ---------------------------------------------------------------------------

    def _print_stats(self) -> None:
        st = self.stats
        if st is None:
            out.print("  no answer yet")
            return
        speed = f" ({st.tokens_per_s} tokens/s)" if st.tokens_per_s else ""
        cut = " [yellow](stopped)[/yellow]" if st.interrupted else ""
        out.print(f"  last answer: {st.answer_tokens} tokens in {st.seconds} s{speed}, "
                  f"first token after {st.first_token_s} s{cut}")
        if st.context_used is not None:
            pct = 100 * st.context_used / max(1, st.context)
            cached = ""
            if st.cached_tokens is not None and st.prompt_tokens is not None:  # what the backend reported
                cached = (f" ({st.cached_tokens} reused from the cache, "
                          f"{max(0, st.prompt_tokens - st.cached_tokens)} new)")
            out.print(f"  context: {st.context_used} of {st.context} tokens used ({pct:.0f}%): "
                      f"prompt {st.prompt_tokens}{cached}, answer {st.answer_tokens}")
        else:
            out.print(f"  context: {st.context} tokens")
        out.print(f"  memories recalled into the prompt: {st.recalled}")
        if st.turns_left_out:
            out.print(f"  left out of the prompt: {st.turns_left_out} older turns (still in memory)")
        pending, dropped = self.conversation.learning_status()
        out.print(f"  learning: {count(pending, 'update')} pending; {count(dropped, 'statement')} not supported "
                  "by your own words dropped so far")
        t = self.conversation.totals
        out.print(f"  this chat: {t['answers']} answers, {t['tokens']} tokens, {t['seconds']:.1f} s")
        out.print(f"  session {st.session} · {st.time}")

    def command(self, line: str) -> bool:
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        try:
            if name in ("/exit", "/quit"):
                return False
            if name == "/help":
                for k, v in SLASH_HELP.items():
                    out.print(styled("  ", (k, "bold"), "  ", v))
            elif name == "/attach":
                if not arg:
                    raise PersonaError("usage: /attach PATH")
                path = Path(_unquote(arg)).expanduser()
                self.stage(path)
                err.print(styled((f"Attached {path.name}", "green"), " (sent with your next message)"))
            elif name == "/remember":
                if not arg:
                    raise PersonaError("usage: /remember TEXT")
                self._remember(arg)
            elif name == "/forget":
                self._forget(arg)
            elif name == "/memories":
                self._memories(arg)
            elif name == "/profile":
                from personavlm_cli.cli.profile import render_profile

                render_profile(self.env.store())
            elif name == "/personality":
                self._personality(arg)
            elif name == "/why":
                self._why()
            elif name == "/stats":
                self._print_stats()
            else:
                raise PersonaError(f"unknown command {name} (try /help)")
        except PersonaError as exc:
            err.print(styled(("Error:", "red"), " ", str(exc)))
        return True

    def _remember(self, text: str) -> None:
        kept, new = self.conversation.remember(text)
        if not new:
            err.print(f"[green]Already known[/green] ({kept.id}); merged.")
        elif kept.meta.get("supersedes"):
            old = kept.meta["supersedes"]
            err.print(styled(("Remembered", "green"), f" {kept.id}; it replaces "
                           f"{old if isinstance(old, str) else ', '.join(old)}."))
        else:
            err.print(f"[green]Remembered[/green] {kept.id}")

    def _forget(self, arg: str) -> None:

        from personavlm_cli.cli.memory_forget import show_text_plan, text_plan_question
        from personavlm_cli.core import forgetting
        from personavlm_cli.core.memory import type_of_id

        store = self.env.store()
        if not arg:
            raise PersonaError("usage: /forget ID or /forget TEXT")
        queue = self.conversation.queue
        if type_of_id(arg) and store.records.get(arg):
            with self.env.model_lock:
                job = forgetting.forget_ids(store, [arg], queue=queue)
        else:
            # Literally the words given (case aside), never what only means the same: every memory that
            # holds them is listed with what goes with it, before the question.
            with self.env.model_lock:
                job = forgetting.forget_text(store, arg, queue=queue)
            if job.nothing:
                err.print(styled(f"Nothing matches '{short(arg)}': nothing was forgotten."))
                return
            show_text_plan(err, job.plan)
            if not self._confirm(text_plan_question(job.plan)):
                err.print("Nothing was forgotten.")
                return
        with self.env.model_lock, err.status("Erasing (rebuilding the vector index)…", spinner="dots"):
            erased = job.erase()
        self.assistant.forget_view()  # the profile in the system text is read again
        err.print(f"[green]Forgot {count(len(erased), 'memory')}.[/green]")

    def _confirm(self, question: str) -> bool:
        """Ask yes/no at the terminal; a chat without one (a script, a pipe) never confirms."""
        if not (is_tty(sys.stdin) and is_tty(sys.stderr)):
            err.print(styled(question, " ", ("(no terminal to ask: use /forget ID)", "dim")))
            return False
        try:
            from prompt_toolkit import prompt

            answer = prompt(f"{question} [y/N] ")
        except (EOFError, KeyboardInterrupt):
            return False
        return answer.strip().lower() in ("y", "yes")

    def _memories(self, query: str) -> None:
        store = self.env.store()
        if query:
            from personavlm_cli.core.recall import Query, recall

            with self.env.model_lock:
                hits = recall(store, Query(text=query), k=8)
            items = [h.memory for h in hits]
        else:
            shown = [MemoryType.SEMANTIC, MemoryType.EPISODIC, MemoryType.PROCEDURAL, MemoryType.CORE, MemoryType.IMAGE]
            items = store.records.list(types=shown, newest_first=True, limit=10)
        for m in items:
            out.print(styled("  ", (m.id, "cyan"), " ", (f"{m.occurred_at[:16].replace('T', ' ')} {m.type}", "dim"), " ",
                           short(m.text)))
        if not items:
            out.print("  nothing relevant: no memory shares a word with it or means nearly the same" if query
                      else "  no memories yet")

    def _personality(self, arg: str) -> None:
        from personavlm_cli.core import personality as pem

        if not arg:
            from personavlm_cli.cli.profile import profile_data, trait_line

            data = profile_data(self.env.store().records, "")
            for t in pem.TRAITS:
                out.print(trait_line(t, data["big_five"][t], data["confidence"][t]), markup=False)
            return
        override: dict[str, float] = {}
        for item in arg.split():
            given, _, value = item.partition("=")
            trait = {t[0]: t for t in pem.TRAITS}.get(given.lower()[:1]) if len(given) == 1 else given.lower()
            if trait is None or trait not in pem.TRAITS:
                raise PersonaError(f"unknown trait in '{item}' (use {', '.join(pem.TRAITS)})")
            try:
                number = float(value)
            except ValueError:
                number = float("nan")
            if not 1 <= number <= 5:  # said, not clamped: "openness=9" is a typo, not a 5
                raise PersonaError(f"'{item}': the value must be a number from 1 to 5")
            override[trait] = number
        self.assistant.personality_override = override
        err.print("Personality override for the next answer: " + ", ".join(f"{k}={v}" for k, v in override.items()))

    def _why(self) -> None:
        ex = self.assistant.last
        if ex is None or ex.reasoning is None:
            out.print("  no answer yet")
            return
        print_reasoning(ex, console=out)

def memory_standing(m) -> str:
    """Why a memory is not the user's current word: past (until when, and why) or the assistant's."""
    from personavlm_cli.core.learning import changes

    if changes.is_assistants(m):
        return "what I told you (my words, not yours): ranked below your own"
    until = changes.until_text(m)
    if until:
        past = (m.meta or {}).get("past") or {}
        reason = past.get("reason") or "superseded"
        by = past.get("by") or m.superseded_by
        return f"treated as past, until {until}: {reason}" + (f" (by {by})" if by else "")
    return ""


def print_reasoning(ex, console=None) -> None:
    """Exactly what produced the answer shown: each step, and the memories the prompt held."""

    console = console or err
    r = ex.reasoning
    if r is None:
        return
    if getattr(r, "profile", None):
        console.print(styled(("profile sent with the message:", "dim"), " ", short("; ".join(r.profile), 90)))
    for i, step in enumerate(r.steps, 1):
        window = ""
        if step.start_time or step.end_time:
            window = f" window {step.start_time or '…'} → {step.end_time or '…'}"
        forced = " (forced)" if step.forced else ""
        console.print(styled((f"step {i}: {step.action}{forced}", "dim"), " ", short(step.think, 90)))
        if step.action == "retrieve":
            console.print(styled(("  keywords:", "dim"), " ", short(step.keywords, 90), window))
            for mid in step.retrieved:
                m = next((x for x in r.used if x.id == mid), None)
                if m is not None:
                    hit = r.hits.get(m.id)
                    why = ("(" + ", ".join(sorted(hit.signals)) + ")") if hit and hit.signals else ""
                    console.print(styled("    ", (m.id, "cyan"), " ", (m.occurred_at[:16].replace("T", " "), "dim"), " ",
                                       short(m.text, 70), " ", (why, "dim")))
                    standing = memory_standing(m)
                    if standing:
                        console.print(styled("      ", (standing, "yellow")))
            if i - 1 in r.nothing_relevant:
                console.print("    (nothing relevant: no memory shares a word with it or means nearly the same)")
            elif not step.retrieved:
                console.print("    (nothing new found)")
    if not r.used:
        console.print("[dim]  no memories were recalled into this answer's prompt[/dim]")
    else:
        console.print(f"[dim]  the answer's prompt held {count(len(r.used), 'recalled memory')}[/dim]")


def _unquote(text: str) -> str:
    try:
        parts = shlex.split(text)
    except ValueError:
        return text
    return parts[0] if len(parts) == 1 else text
