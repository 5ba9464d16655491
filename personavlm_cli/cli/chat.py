"""`personavlm chat`: the REPL, one-shot messages, and scripted chats from stdin."""

from __future__ import annotations

import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from personavlm_cli.cli.common import UserOpt, count, err, log_to_file, make_env, out, short
from personavlm_cli.cli.common import line as styled
from personavlm_cli.cli.env import Env, is_tty
from personavlm_cli.core.errors import PersonaError

SLASH_HELP = {
    "/attach PATH": "stage an image for the next message",
    "/remember TEXT": "store a memory exactly as written",
    "/forget ID|TEXT": "erase a memory (and what was derived from it)",
    "/memories [QUERY]": "list recent memories, or search them",
    "/profile": "show the core profile, habits and goals, and personality",
    "/personality [TRAIT=VALUE ...]": "show the Big Five, or override traits for the next answer",
    "/why": "the last answer's reasoning steps and the memories it used",
    "/stats": "tokens, speed and context use of the last answer",
    "/help": "this list",
    "/exit": "quit (Ctrl-D also quits)",
}


def chat(
    user: UserOpt = None,
    once: Annotated[Optional[str], typer.Option("--once", help="Send one message, print only the answer, exit.")] = None,
    attach: Annotated[Optional[list[Path]], typer.Option("--attach", "-a", help="Attach an image (repeatable).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="GGUF file or registered model name.")] = None,
    mmproj: Annotated[Optional[str], typer.Option("--mmproj", help="Vision projector GGUF for a vision model.")] = None,
    gpu_layers: Annotated[Optional[str], typer.Option("--gpu-layers", help="auto, all or a number.")] = None,
    context: Annotated[Optional[int], typer.Option("--context", help="Context window in tokens.")] = None,
    at: Annotated[Optional[str], typer.Option("--at", help="Pretend the time is 'YYYY-MM-DD HH:MM' (replays, tests).")] = None,
    show_reasoning: Annotated[bool, typer.Option("--show-reasoning", help="Print the reasoning steps to stderr.")] = False,
    force_retrieve: Annotated[bool, typer.Option("--force-retrieve", help="Always search memory before answering.")] = False,
    no_update: Annotated[bool, typer.Option("--no-update", help="Do not learn from this chat (no memory extraction).")] = False,
    plain: Annotated[bool, typer.Option("--plain", help="Plain output: no Markdown styling, colours or spinners "
                                        "(always so when stdout is not a terminal).")] = False,
):
    """Chat with your assistant: a REPL, or --once, or one message per line from stdin.

    In the REPL: /help lists the commands, \"\"\" opens a multi-line message, Tab completes commands
    and /attach paths, Ctrl-C stops an answer (twice at an empty prompt quits), Ctrl-D quits.

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
            finished = session.send(once)
            session.finish(consolidate=False)
            if not finished:
                raise typer.Exit(130)
        elif not is_tty(sys.stdin):
            session.start(quiet=True)
            stopped = False
            failed = 0
            for number, text in enumerate(sys.stdin, 1):
                text = text.rstrip("\n")
                if not text.strip():
                    continue
                try:
                    if not session.handle(text):
                        break
                except PersonaError as exc:  # one line failed (a full disk, say): say which, go on
                    failed += 1
                    err.print(styled(("Error:", "red"), f" line {number} not stored: {exc}"))
                    continue
                if session.interrupted:
                    stopped = True  # Ctrl-C stops a scripted chat, not only the answer
                    break
            session.finish(consolidate=True)
            if stopped:
                raise typer.Exit(130)
            if failed:
                raise typer.Exit(1)
        else:
            session.start(quiet=False)
            code = session.repl()
            session.finish(consolidate=True)
            if code:
                raise typer.Exit(code)
    finally:
        env.close()


class ChatSession:
    def __init__(self, env: Env, pinned_time=None, show_reasoning=False, force_retrieve=False, learn=True,
                 plain=False):
        self.env = env
        self.pinned_time = pinned_time
        self.show_reasoning = show_reasoning
        self.force_retrieve = force_retrieve
        self.learn = learn and env.settings["memory.update"]
        self.plain = plain
        # Styled answers only in a terminal; plain text whenever stdout is a file or a pipe.
        self.styled = not plain and is_tty(sys.stdout)
        self.spinners = not plain and is_tty(sys.stderr)
        if plain:
            out.no_color = True
            err.no_color = True
        self.staged: list[Path] = []
        self._worker_model = None
        self.assistant = None
        self.updates = None
        self.background = None
        self.stats: dict = {}
        self.totals = {"answers": 0, "tokens": 0, "seconds": 0.0}
        self.interrupted = False
        self._trim_shown = 0
        self.stats_trim: dict = {}

    # -- lifecycle --------------------------------------------------------------------------------

    def now(self):
        from personavlm_cli.core.memory import now

        return self.pinned_time or now()

    def start(self, quiet: bool) -> None:
        from personavlm_cli.cli.repl import Spinner
        from personavlm_cli.core.assistant import Assistant
        from personavlm_cli.core.capability import choose_extractor, choose_prompt_style
        from personavlm_cli.core.update import BackgroundUpdates, UpdateStage

        env = self.env
        store = env.store(write=True)
        log_to_file(env)  # background warnings go to the user's log, never onto the chat
        with Spinner("Loading the model…", enabled=self.spinners):
            model = env.model()
        if not quiet and is_tty(sys.stderr) and getattr(model, "load_info", None) is not None:
            err.print(styled((model.load_info.summary_line(), "dim")))
        if not env.settings["model.path"] and env.settings["model.kind"] == "llama-cpp":
            self._embedded_notice(store, quiet)
        with env.model_lock:
            store.sync_vectors()
            # Build the shared parts here, before the update thread can race to build them twice.
            store.vectors, store.text_encoder  # noqa: B018
        s = env.settings
        self.assistant = Assistant(store, model, env.user, profile=s["model.prompt_profile"],
                                   session_gap_minutes=s["chat.session_gap_minutes"],
                                   recent_turns=s["chat.recent_turns"], model_lock=env.model_lock,
                                   vision=getattr(model, "vision", False), mode=s["chat.retrieval"],
                                   model_search=s["chat.model_search"], answer_tokens=s["model.max_tokens"],
                                   prompt_style=choose_prompt_style(s["model.prompt_style"], model))
        self.updates = UpdateStage(store, model, env.user, env.model_lock, enabled=self.learn,
                                   extractor=choose_extractor(s["memory.extractor"], model))
        if self.learn:
            # The update thread's own context, loaded here and not in the thread: llama-cpp-python
            # points file descriptors 1 and 2 at /dev/null while it loads a model, and a prompt or a
            # line printed meanwhile from this thread would vanish.
            fork = getattr(model, "fork", None)
            with Spinner("Loading the model…", enabled=self.spinners):
                self._worker_model = fork() if fork is not None else model
            current, _ = self.assistant.session_for(self.now())
            self.updates.enqueue_unconsolidated(except_session=current)
            self.background = BackgroundUpdates(self._worker_stage).start()
            self.background.poke()

    def _worker_stage(self):
        """The update thread's stage: its own record connection, and its own model context (a fork
        over the same weights), so background work never evicts the answers' KV cache."""
        from personavlm_cli.core.update import UpdateStage

        worker_model = self._worker_model
        interrupt = getattr(worker_model, "interrupt", None)
        if interrupt is not None:
            self.env.model_lock.on_wait.append(interrupt)
        return UpdateStage(self.env._store.fork(), worker_model, self.env.user, self.env.model_lock,
                           enabled=self.learn, extractor=self.updates.extractor)

    def _embedded_notice(self, store, quiet: bool) -> None:
        if store.records.get_meta("embedded_notice_shown"):
            return
        store.records.set_meta("embedded_notice_shown", True)
        err.print("[yellow]Using the embedded SmolLM2-135M model: tiny, for trying personavlm out. "
                  "For real use, pass --model PATH or run `personavlm model pull`.[/yellow]")

    def finish(self, consolidate: bool) -> None:
        """Quit at once, whatever learning is pending: the queue is durable, and the next chat's
        background thread (or `personavlm memory update`) finishes it. One line says what is left."""

        if self.assistant is None:
            return
        stopped = True
        if self.background is not None:
            stopped = self.background.stop()
            if self.background.error is not None:
                err.print(styled(("Background learning stopped with an error (see `personavlm logs`): "
                                + short(str(self.background.error), 200), "yellow")))
        worker = getattr(self, "_worker_model", None)
        if worker is not None and worker is not self.assistant.model and stopped:
            worker.close()
        if not self.learn:
            return
        if consolidate:
            last = self.assistant.last_turn()
            if last is not None:
                self.updates.enqueue_session(last.session_id)
        pending = self.updates.pending()
        if pending:
            err.print(f"[dim]{count(len(pending), 'update')} left to learn from this chat: they run in the background "
                      "of your next chat, or now with `personavlm memory update`.[/dim]")

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
        from personavlm_cli.cli.repl import AnswerWriter, Spinner

        self.interrupted = False
        text = "".join(ch for ch in text if ch in "\n\t" or ch.isprintable())
        if not text.strip():
            err.print("[yellow]Empty message: nothing sent.[/yellow]")
            return True
        model = self.assistant.model
        s = self.env.settings
        at = self.now()
        notices: list[str] = []
        spinner = Spinner("Thinking…", enabled=self.spinners)
        writer = AnswerWriter(sys.stdout, styled=self.styled)
        ex = stream = None
        start = time.perf_counter()
        first = None
        with _sigint_once():
            try:
                spinner.start()
                budget = max(256, model.n_ctx // 2)
                with self.env.model_lock:  # the update thread may be using the model
                    n_message = model.count_tokens(text)
                    too_long = n_message > budget
                    if too_long:
                        text = _trim_to_tokens(model, text, budget)
                if too_long:
                    notices.append(f"[yellow]Your message was longer than the context allows ({n_message} tokens "
                                   f"for a {model.n_ctx}-token context); only its first {budget} tokens were kept "
                                   "and stored.[/yellow]")
                images, self.staged = self.staged, []
                if images and not getattr(model, "vision", False):
                    notices.append("[yellow]This model cannot see images: the image is stored and remembered, "
                                   "but the answer does not see it (use a vision model: `personavlm model pull`)."
                                   "[/yellow]")
                ex, stream = self.assistant.respond(
                    text, at, images, force_retrieve=self.force_retrieve,
                    updates=self.updates if self.learn else None,
                    sampling={"max_tokens": s["model.max_tokens"], "temperature": s["model.temperature"]})
                trimmed = self._trim_notice(ex.turns_left_out, model.n_ctx)
                if trimmed:
                    notices.append(trimmed)
                for piece in stream:
                    if first is None:
                        first = time.perf_counter()
                        spinner.stop()
                        for notice in notices:
                            err.print(notice)
                        notices = []
                        if self.show_reasoning:
                            _print_reasoning(ex)
                    writer.write(piece)
            except KeyboardInterrupt:
                self.interrupted = True
                spinner.stop()
                if stream is not None:
                    stream.close()  # the core stores the partial answer, marked as interrupted
                if writer.started:
                    writer.end(interrupted=True)
                mark = ("(answer stopped; the partial answer is kept)" if ex is not None
                        else "(stopped before the answer began)")
                err.print(styled((mark, "yellow")))
            else:
                spinner.stop()
                for notice in notices:
                    err.print(notice)
                writer.end()
            finally:
                spinner.stop()
                if stream is not None:
                    # An error cut the answer: the core stores what came, marked, while the store is
                    # still open (not later, when the generator is collected). A no-op once it ended.
                    stream.close()
                if writer.started and not writer.ended:  # an error cut the answer: end its line
                    writer.end(interrupted=True)
        end = time.perf_counter()
        if ex is not None:
            self._record_stats(ex, model, start, first, end, writer.text)
        if self.background is not None:
            self.background.poke()
        return not self.interrupted

    def _trim_notice(self, left_out: int, n_ctx: int) -> str | None:
        """Say once that the oldest turns of this conversation no longer fit (they stay in memory)."""
        self.stats_trim = {"turns_left_out": left_out}
        if not left_out:
            self._trim_shown = 0
            return None
        if self._trim_shown:
            return None
        self._trim_shown = 1
        return (f"[yellow]Context full: the {count(left_out, 'oldest turn')} of this conversation no longer fit "
                f"in the {n_ctx}-token context and were left out (they stay in memory).[/yellow]")

    def _record_stats(self, ex, model, start, first, end, text) -> None:
        from personavlm_cli.core.memory import prompt_time

        answer = ex.answer or text
        usage = dict(getattr(model, "last_usage", None) or {})
        tokens = usage.get("completion_tokens")
        if tokens is None:
            try:
                with self.env.model_lock:
                    tokens = model.count_tokens(answer)
            except Exception:  # noqa: BLE001 - stats must never break a chat
                tokens = None
        gen_s = end - (first or end)
        prompt = usage.get("prompt_tokens")
        self.stats = {
            "answer_tokens": tokens,
            "seconds": round(end - start, 2),
            "first_token_s": round((first or end) - start, 3),
            "tokens_per_s": round(tokens / gen_s, 1) if tokens and gen_s > 0.05 else None,
            "context_used": (prompt + (tokens or 0)) if prompt is not None else None,
            "context": model.n_ctx,
            "prompt_tokens": prompt,
            "cached_tokens": usage.get("cached_tokens"),
            "recalled": len(ex.reasoning.used) if ex.reasoning else 0,
            "interrupted": ex.interrupted,
            "turns_left_out": self.stats_trim.get("turns_left_out", 0),
            "session": ex.user_turn.session_id,
            "time": prompt_time(ex.user_turn.occurred),
        }
        self.totals["answers"] += 1
        self.totals["tokens"] += tokens or 0
        self.totals["seconds"] += end - start

    def _print_stats(self) -> None:
        st = self.stats
        if not st:
            out.print("  no answer yet")
            return
        speed = f" ({st['tokens_per_s']} tokens/s)" if st["tokens_per_s"] else ""
        cut = " [yellow](stopped)[/yellow]" if st["interrupted"] else ""
        out.print(f"  last answer: {st['answer_tokens']} tokens in {st['seconds']} s{speed}, "
                  f"first token after {st['first_token_s']} s{cut}")
        if st["context_used"] is not None:
            pct = 100 * st["context_used"] / max(1, st["context"])
            cached = f" ({st['cached_tokens']} reused from the cache)" if st.get("cached_tokens") else ""
            out.print(f"  context: {st['context_used']} of {st['context']} tokens used ({pct:.0f}%): "
                      f"prompt {st['prompt_tokens']}{cached}, answer {st['answer_tokens']}")
        else:
            out.print(f"  context: {st['context']} tokens")
        out.print(f"  memories recalled into the prompt: {st.get('recalled', 0)}")
        if st["turns_left_out"]:
            out.print(f"  left out of the prompt: {st['turns_left_out']} older turns (still in memory)")
        dropped = self.env.store().records.get_meta("learning_dropped") or 0
        pending = len(self.updates.pending()) if self.updates is not None else 0
        out.print(f"  learning: {count(pending, 'update')} pending; {count(int(dropped), 'statement')} not supported "
                  "by your own words dropped so far")
        t = self.totals
        out.print(f"  this chat: {t['answers']} answers, {t['tokens']} tokens, {t['seconds']:.1f} s")
        out.print(f"  session {st['session']} · {st['time']}")

    # -- slash commands ---------------------------------------------------------------------------

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
        from personavlm_cli.core import learning
        from personavlm_cli.core.store import new_memory

        at = self.now()
        session, _ = self.assistant.session_for(at)
        last = self.assistant.last_turn()
        if last is None or last.session_id != session:
            session = None
        memory = new_memory("semantic", text, at, keywords=learning.keywords_of(text), session_id=session,
                            meta={"origin": "/remember"})
        with self.env.model_lock:
            kept = self.updates.integrate_semantic(memory)
            if kept.id == memory.id:
                self.updates.update_profile(learning.profile_of(text), memory)  # "my name is ..." and the like
        if kept.id != memory.id:
            err.print(f"[green]Already known[/green] ({kept.id}); merged.")
        elif memory.meta.get("supersedes"):
            old = memory.meta["supersedes"]
            err.print(styled(("Remembered", "green"), f" {memory.id}; it replaces "
                           f"{old if isinstance(old, str) else ', '.join(old)}."))
        else:
            err.print(f"[green]Remembered[/green] {memory.id}")

    def _forget(self, arg: str) -> None:

        from personavlm_cli.core import forgetting
        from personavlm_cli.core.memory import type_of_id

        store = self.env.store()
        if not arg:
            raise PersonaError("usage: /forget ID or /forget TEXT")
        if type_of_id(arg) and store.records.get(arg):
            ids = [arg]
        else:
            with self.env.model_lock:
                found = forgetting.matching(store, arg)
            if not found:
                err.print(styled(f"Nothing matches '{short(arg)}': nothing was forgotten."))
                return
            err.print(styled(f"{count(len(found), 'memory')} match '{short(arg)}':"))
            for m in found:
                mark = " (older version)" if m.superseded_by else ""
                err.print(styled("  ", (m.id, "cyan"), " ", (f"{m.type}{mark}", "dim"), " ", short(m.text, 70)))
            if not self._confirm(f"Forget {'it' if len(found) == 1 else 'them'} and what was learnt from "
                                 f"{'it' if len(found) == 1 else 'them'}?"):
                err.print("Nothing was forgotten.")
                return
            ids = [m.id for m in found]
        with self.env.model_lock:
            p = forgetting.plan(store, ids)
            with err.status("Erasing (rebuilding the vector index)…", spinner="dots"):
                erased = forgetting.execute(store, p, "forget", self.updates)
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
            items = store.records.list(types=["semantic", "episodic", "procedural", "core", "image"],
                                       newest_first=True, limit=10)
        for m in items:
            out.print(styled("  ", (m.id, "cyan"), " ", (f"{m.occurred_at[:16].replace('T', ' ')} {m.type}", "dim"), " ",
                           short(m.text)))
        if not items:
            out.print("  no memories yet")

    def _personality(self, arg: str) -> None:
        from personavlm_cli.core import personality as pem

        if not arg:
            vector = self.env.store().records.get_meta("personality") or pem.initial()
            for t in pem.TRAITS:
                out.print(f"  {t:<18} {vector[t]:.2f}  {pem.reading(t, vector[t])}")
            return
        override = {}
        for item in arg.split():
            trait, _, value = item.partition("=")
            trait = {t[0]: t for t in pem.TRAITS}.get(trait.lower()[:1]) if len(trait) == 1 else trait.lower()
            if trait not in pem.TRAITS:
                raise PersonaError(f"unknown trait in '{item}' (use {', '.join(pem.TRAITS)})")
            try:
                override[trait] = pem.clamp(float(value))
            except ValueError:
                raise PersonaError(f"'{item}': the value must be a number from 1 to 5") from None
        self.assistant.personality_override = override
        err.print("Personality override for the next answer: " + ", ".join(f"{k}={v}" for k, v in override.items()))

    def _why(self) -> None:
        ex = self.assistant.last
        if ex is None or ex.reasoning is None:
            out.print("  no answer yet")
            return
        _print_reasoning(ex, console=out)

    # -- the REPL ---------------------------------------------------------------------------------

    def repl(self) -> int:
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
                        return 130
                    err.print("[dim](Ctrl-C again or Ctrl-D to quit)[/dim]")
                    continue
                except EOFError:
                    return 0
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
                        return 0
                except PersonaError as exc:  # one message failed; the chat goes on
                    err.print(styled(("Error:", "red"), " ", str(exc)))
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


def _print_reasoning(ex, console=None) -> None:
    """Exactly what produced the answer shown: each step, and the memories the prompt held."""

    console = console or err
    r = ex.reasoning
    if r is None:
        return
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
            if not step.retrieved:
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


def _trim_to_tokens(model, text: str, budget: int) -> str:
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if model.count_tokens(text[:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]
