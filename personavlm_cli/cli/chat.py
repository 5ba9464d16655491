"""`personavlm chat`: the REPL, one-shot messages, and scripted chats from stdin."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from personavlm_cli.cli.common import UserOpt, count, err, log_to_file, make_env, out, short
from personavlm_cli.cli.common import line as styled
from personavlm_cli.cli.env import Env, is_tty
from personavlm_cli.cli.slash import SLASH_HELP, SlashCommands, print_reasoning
from personavlm_cli.core.errors import ExitStatus, PersonaError, StoreError


class AnswerFailed(PersonaError):
    """The model failed on a message: the message is stored, no answer is (core/conversation.py)."""


def chat(
    user: UserOpt = None,
    once: Annotated[str | None, typer.Option("--once", help="Send one message, print only the answer, exit.")] = None,
    attach: Annotated[list[Path] | None, typer.Option("--attach", "-a", help="Attach an image (repeatable).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="GGUF file or registered model name.")] = None,
    mmproj: Annotated[str | None, typer.Option("--mmproj", help="Vision projector GGUF for a vision model.")] = None,
    gpu_layers: Annotated[str | None, typer.Option("--gpu-layers", help="auto, all or a number.")] = None,
    context: Annotated[int | None, typer.Option("--context", help="Context window in tokens.")] = None,
    at: Annotated[str | None, typer.Option("--at", help="Pretend the time is 'YYYY-MM-DD HH:MM' (replays, tests).")] = None,
    show_reasoning: Annotated[bool, typer.Option("--show-reasoning", help="Print the reasoning steps to stderr.")] = False,
    force_retrieve: Annotated[bool, typer.Option("--force-retrieve", help="Always search memory before answering.")] = False,
    no_update: Annotated[bool, typer.Option("--no-update", help="Do not learn from this chat (no memory extraction).")] = False,
    plain: Annotated[bool, typer.Option("--plain", help="Plain output: no Markdown styling, colours or spinners "
                                        "(always so when stdout is not a terminal).")] = False,
):
    """Chat with your assistant: a REPL, or --once, or one message per line from stdin.

    In the REPL: /help lists the commands, \"\"\" opens a multi-line message, Tab completes commands
    and /attach paths, Ctrl-C stops an answer (twice at an empty prompt quits), Ctrl-D quits.

    If the model fails (unreachable, refused, timed out, an empty answer), your message is kept, no answer
    is stored, one line says what failed and the chat goes on; --once then exits 1.

    What you say about yourself is learnt right after each answer. Quitting never waits for the rest of
    the learning (personality): it runs in the background of your next chat, or now with
    `personavlm memory update`.
    """
    from personavlm_cli.core.assistant import parse_at

    at_time = parse_at(at) if at else None  # validate before loading anything
    if once is not None and not "".join(ch for ch in once if ch.isprintable()).strip():
        raise PersonaError("empty message: nothing sent")
    env = make_env(user, **{"model.path": model, "model.mmproj": mmproj, "model.gpu_layers": gpu_layers,
                            "model.context": context})
    try:
        session = ChatSession(env, pinned_time=at_time, show_reasoning=show_reasoning,
                              force_retrieve=force_retrieve, learn=not no_update, plain=plain)
        for path in attach or []:
            session.stage(path)
        if once is not None:
            session.start(quiet=True)
            try:
                finished = session.send(once)  # a failing model: one Error line, exit 1, the message kept
            finally:
                session.finish(consolidate=False)
            if not finished:
                raise typer.Exit(ExitStatus.INTERRUPTED)
        elif not is_tty(sys.stdin):
            session.start(quiet=True)
            env.flush_in_background()  # the vector outbox, while the chat is open (core/outbox.py)
            stopped = False
            failed = 0
            for number, text in enumerate(sys.stdin, 1):
                text = text.rstrip("\n")
                if not text.strip():
                    continue
                try:
                    if not session.handle(text):
                        break
                except PersonaError as exc:  # one line failed (a full disk, a failing model): say which, go on
                    failed += 1
                    said = f" line {number}: {exc}" if isinstance(exc, AnswerFailed) else f" line {number} not stored: {exc}"
                    err.print(styled(("Error:", "red"), said))
                    continue
                if session.interrupted:
                    stopped = True  # Ctrl-C stops a scripted chat, not only the answer
                    break
            session.finish(consolidate=True)
            if stopped:
                raise typer.Exit(ExitStatus.INTERRUPTED)
            if failed:
                raise typer.Exit(ExitStatus.ERROR)
        else:
            session.start(quiet=False)
            env.flush_in_background()
            code = session.repl()
            session.finish(consolidate=True)
            if code:
                raise typer.Exit(code)
    finally:
        env.close()


class ChatSession(SlashCommands):
    """The terminal side of a chat: keys, spinners, notices and rendering. The turn itself, from the
    message to the queued update, is ``core.conversation``'s."""

    def __init__(self, env: Env, pinned_time=None, show_reasoning=False, force_retrieve=False, learn=True,
                 plain=False):
        self.env = env
        self.pinned_time = pinned_time
        self.show_reasoning = show_reasoning
        self.force_retrieve = force_retrieve
        self.learn = learn and env.settings["memory.update"]
        self.plain = plain
        # Styled answers only in a terminal; plain text whenever stdout is not one.
        self.styled = not plain and is_tty(sys.stdout)
        self.spinners = not plain and is_tty(sys.stderr)
        if plain:
            out.no_color = True
            err.no_color = True
        self.staged: list[Path] = []
        self.conversation = None
        self.assistant = None
        self.stats = None
        self.interrupted = False
        self._trim_shown = False

    # -- lifecycle --------------------------------------------------------------------------------

    def now(self):
        from personavlm_cli.core.memory import now

        return self.pinned_time or now()

    def start(self, quiet: bool) -> None:
        from personavlm_cli.cli.repl import Spinner
        from personavlm_cli.core.assistant import Assistant
        from personavlm_cli.core.capability import choose_extractor, choose_prompt_style
        from personavlm_cli.core.conversation import Conversation

        env = self.env
        store = env.store(write=True)
        log_to_file(env)  # background warnings go to the user's log, never onto the chat
        with Spinner("Loading the model…", enabled=self.spinners):
            model = env.model()
        if not quiet and is_tty(sys.stderr) and model.load_info is not None:
            err.print(styled((model.load_info.summary_line(), "dim")))
        if not env.settings["model.path"] and env.settings["model.kind"] == "llama-cpp":
            self._embedded_notice(store, quiet)
        with env.model_lock:
            store.sync_vectors()
            # Build the shared parts here, before the update thread can race to build them twice.
            _ = store.vectors, store.text_encoder
        s = env.settings
        from personavlm_cli.cli.clip import start_background

        self._reembed_stop = threading.Event()  # images moving to new CLIP weights (cli/clip.py), if any
        self._reembed = start_background(store, s, self._reembed_stop)
        self.assistant = Assistant(store, model, env.user, profile=s["model.prompt_profile"],
                                   session_gap_minutes=s["chat.session_gap_minutes"],
                                   recent_turns=s["chat.recent_turns"], model_lock=env.model_lock,
                                   vision=model.vision, mode=s["chat.retrieval"],
                                   model_search=s["chat.model_search"], answer_tokens=s["model.max_tokens"],
                                   prompt_style=choose_prompt_style(s["model.prompt_style"], model))
        self.conversation = Conversation(
            self.assistant, learn=self.learn, extractor=choose_extractor(s["memory.extractor"], model),
            sampling={"max_tokens": s["model.max_tokens"], "temperature": s["model.temperature"]},
            force_retrieve=self.force_retrieve, clock=self.now)
        worker = None
        if self.learn:
            # The update thread's own context, loaded here and not in the thread: llama-cpp-python
            # points file descriptors 1 and 2 at /dev/null while it loads a model, and a prompt or a
            # line printed meanwhile from this thread would vanish.
            with Spinner("Loading the model…", enabled=self.spinners):
                worker = model.fork()
        self.conversation.open(worker)

    def _embedded_notice(self, store, quiet: bool) -> None:
        if store.records.get_meta("embedded_notice_shown"):
            return
        store.records.set_meta("embedded_notice_shown", True)
        err.print("[yellow]Using the embedded SmolLM2-135M model: tiny, for trying personavlm out. "
                  "For real use, pass --model PATH or run `personavlm model pull`.[/yellow]")

    def finish(self, consolidate: bool) -> None:
        """Quit at once, whatever learning is pending; one line says what is left."""
        if self.conversation is None:
            return
        if getattr(self, "_reembed", None) is not None:  # stops after its batch; the next chat continues
            self._reembed_stop.set()
            self._reembed.join(timeout=30)
        closing = self.conversation.close(consolidate)
        if closing.error is not None:
            err.print(styled(("Background learning stopped with an error (see `personavlm logs`): "
                              + short(closing.error, 200), "yellow")))
        if closing.pending:
            they = "they run" if closing.pending > 1 else "it runs"
            err.print(f"[dim]{count(closing.pending, 'update')} left to learn from this chat: {they} in the "
                      "background of your next chat, or now with `personavlm memory update`.[/dim]")

    # -- messages ---------------------------------------------------------------------------------

    def stage(self, path) -> None:
        from personavlm_cli.adapters.images import inspect_image

        inspect_image(Path(path))  # refuse a bad file now, with its own message
        self.staged.append(Path(path))

    def handle(self, line: str) -> bool:
        """One input line: a slash command or a message. False means quit."""
        if line.startswith("/") and not line.startswith("//"):
            return self.command("".join(ch for ch in line if ch == "\t" or ch.isprintable()))
        self.send(line[1:] if line.startswith("//") else line)
        return True

    def send(self, text: str) -> bool:
        """Send one message and stream the answer. False when Ctrl-C stopped it (the partial answer is
        kept, marked as interrupted)."""
        from personavlm_cli.cli.answer import AnswerWriter
        from personavlm_cli.cli.repl import Spinner

        self.interrupted = False
        text = "".join(ch for ch in text if ch in "\n\t" or ch.isprintable())
        if not text.strip():
            err.print("[yellow]Empty message: nothing sent.[/yellow]")
            return True
        spinner = Spinner("Thinking…", enabled=self.spinners)
        writer = AnswerWriter(sys.stdout, styled=self.styled)
        turn = None
        notices: list[str] = []
        with _sigint_once():
            try:
                spinner.start()
                images, self.staged = self.staged, []
                turn = self.conversation.send(text, images)
                notices = self._notices(turn)
                first = True
                for piece in turn:
                    if first:
                        first = False
                        spinner.stop()
                        self._say(notices)
                        notices = []
                        if self.show_reasoning:
                            print_reasoning(turn.exchange)
                    writer.write(piece)
            except KeyboardInterrupt:
                self.interrupted = True
                spinner.stop()
                if turn is not None:
                    turn.interrupt()  # the partial answer is kept, marked as interrupted
                if writer.started:
                    writer.end(interrupted=True)
                mark = ("(answer stopped; the partial answer is kept)" if turn is not None
                        else "(stopped before the answer began)")
                err.print(styled((mark, "yellow")))
            except PersonaError as exc:
                if turn is None or turn.failure is not exc:
                    raise
                spinner.stop()
                turn.interrupt()  # a failed model: the message is kept, no answer is stored
                if writer.started:
                    writer.end(interrupted=True)
                self.stats = turn.stats
                self.conversation.ended(turn)
                kept = ("the part shown is kept, marked interrupted" if turn.exchange.assistant_turn is not None
                        else "nothing was stored as an answer")
                raise AnswerFailed(f"{exc} (your message is kept; {kept})") from None
            else:
                stats = turn.finish()
                spinner.stop()
                self._say(notices)
                writer.end()
                limit = self.conversation.sampling.get("max_tokens")
                if limit and stats is not None and (stats.answer_tokens or 0) >= limit:
                    err.print(styled((f"(the answer stopped at the {limit}-token limit: model.max_tokens in the "
                                      "config file, or PERSONAVLM_MODEL_MAX_TOKENS, allows longer ones)", "dim")))
                self.env.tell_notices()  # the vector server down or back (core/store.py)
            finally:
                spinner.stop()
                if turn is not None and not turn.done:
                    # An error cut the answer: what came is stored, marked, while the store is open.
                    turn.interrupt()
                if writer.started and not writer.ended:  # an error cut the answer: end its line
                    writer.end(interrupted=True)
        if turn is not None:
            self.stats = turn.stats
            self.conversation.ended(turn)
        return not self.interrupted

    def _notices(self, turn) -> list[str]:
        """What the user should know about this turn, said once the answer starts."""
        n_ctx = self.assistant.model.n_ctx
        notices = []
        if turn.trimmed is not None and turn.trimmed.cut_bytes:
            notices.append(f"[yellow]Your message ({turn.trimmed.cut_bytes:,} bytes) was longer than the context "
                           f"allows ({n_ctx} tokens): it was cut before reading, and only its first "
                           f"{turn.trimmed.kept} tokens were kept and stored.[/yellow]")
        elif turn.trimmed is not None:
            notices.append(f"[yellow]Your message was longer than the context allows ({turn.trimmed.tokens} tokens "
                           f"for a {n_ctx}-token context); only its first {turn.trimmed.kept} tokens were kept "
                           "and stored.[/yellow]")
        if turn.images_unseen:
            notices.append("[yellow]This model cannot see images: the image is stored and remembered, "
                           "but the answer does not see it (use a vision model: `personavlm model pull`)."
                           "[/yellow]")
        notices.extend(styled((n, "yellow")) for n in self.assistant.store.take_notices())
        if not turn.turns_left_out:
            self._trim_shown = False
        elif not self._trim_shown:  # said once, until the conversation fits again
            self._trim_shown = True
            notices.append(f"[yellow]Context full: the {count(turn.turns_left_out, 'oldest turn')} of this "
                           f"conversation no longer fit in the {n_ctx}-token context and were left out (they "
                           "stay in memory).[/yellow]")
        return notices

    @staticmethod
    def _say(notices: list[str]) -> None:
        for notice in notices:
            err.print(notice)
        notices.clear()

    # -- the REPL ---------------------------------------------------------------------------------

    def repl(self) -> ExitStatus:
        """Read and answer until Ctrl-D or /exit (0), or two Ctrl-C at an empty prompt (130)."""

        from personavlm_cli.cli.repl import LineReader, pick_up_images

        history = self.env.user_dir() / "input_history" if self.env.settings["chat.history"] else None
        reader = LineReader(self, self.env.user, history_file=history, styled=not self.plain, commands=SLASH_HELP)
        err.print('[dim]Type a message; /help for commands; """ for several lines; Tab completes; '
                  "Ctrl-C stops an answer; Ctrl-D quits.[/dim]")
        interrupts = 0
        while True:
            try:
                try:
                    line = reader.read()
                except KeyboardInterrupt:
                    interrupts += 1
                    if interrupts >= 2:
                        return ExitStatus.INTERRUPTED
                    err.print("[dim](Ctrl-C again or Ctrl-D to quit)[/dim]")
                    continue
                except EOFError:
                    return ExitStatus.OK
                interrupts = 0
                if not line.strip():
                    continue
                if not line.startswith("/") or line.startswith("//"):
                    line, found = pick_up_images(line)
                    try:
                        for path in found:
                            self.stage(path)
                    except PersonaError as exc:
                        self.staged = [p for p in self.staged if p not in found]
                        err.print(styled(("Error:", "red"), f" {exc} (nothing sent)"))
                        continue
                    if found:
                        rest = line
                        for path in found:
                            rest = rest.replace(path.name, "", 1)
                        if not rest.strip():  # only dropped files: staged, like /attach
                            names = ", ".join(p.name for p in found)
                            err.print(styled((f"Attached {names}", "green"), " (sent with your next message)"))
                            continue
                try:
                    if not self.handle(line):
                        return ExitStatus.OK
                except PersonaError as exc:  # one message failed; the chat goes on
                    err.print(styled(("Error:", "red"), " ", str(exc)))
                    if isinstance(exc, StoreError) and not line.startswith("/"):
                        err.print(styled(("Your message is kept in the input history: press Up to send it "
                                          "again once the store is back.", "yellow")))
            except KeyboardInterrupt:  # during a slash command, or between answer and prompt
                interrupts = 0
                err.print("[yellow](stopped)[/yellow]")


@contextmanager
def _sigint_once():
    """While an answer is being produced, the first Ctrl-C raises KeyboardInterrupt and any further
    one is ignored until the partial answer is stored and the prompt is back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum, frame):
        nonlocal fired
        if fired:
            return
        fired = True
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
