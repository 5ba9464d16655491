"""`personavlm chat`: the REPL, one-shot messages, and scripted chats from stdin."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from personavlm_cli.cli.common import UserOpt, err, make_env, out, short
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
):
    """Chat with your assistant: a REPL, or --once, or one message per line from stdin."""
    from personavlm_cli.core.assistant import parse_at

    at_time = parse_at(at) if at else None  # validate before loading anything
    env = make_env(user, **{"model.path": model, "model.mmproj": mmproj, "model.gpu_layers": gpu_layers,
                            "model.context": context})
    try:
        session = ChatSession(env, pinned_time=at_time, show_reasoning=show_reasoning,
                              force_retrieve=force_retrieve, learn=not no_update)
        for path in attach or []:
            session.stage(path)
        if once is not None:
            session.start(quiet=True)
            session.send(once)
            session.finish(consolidate=False)
        elif not is_tty(sys.stdin):
            session.start(quiet=True)
            for line in sys.stdin:
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                if not session.handle(line):
                    break
            session.finish(consolidate=True)
        else:
            session.start(quiet=False)
            code = session.repl()
            session.finish(consolidate=True)
            if code:
                raise typer.Exit(code)
    finally:
        env.close()


class ChatSession:
    def __init__(self, env: Env, pinned_time=None, show_reasoning=False, force_retrieve=False, learn=True):
        self.env = env
        self.pinned_time = pinned_time
        self.show_reasoning = show_reasoning
        self.force_retrieve = force_retrieve
        self.learn = learn and env.settings["memory.update"]
        self.staged: list[Path] = []
        self.assistant = None
        self.updates = None
        self.background = None
        self.stats: dict = {}

    # -- lifecycle --------------------------------------------------------------------------------

    def now(self):
        from personavlm_cli.core.memory import now

        return self.pinned_time or now()

    def start(self, quiet: bool) -> None:
        from personavlm_cli.core.assistant import Assistant
        from personavlm_cli.core.update import BackgroundUpdates, UpdateStage

        env = self.env
        store = env.store(write=True)
        if quiet or not is_tty(sys.stderr):
            model = env.model()
        else:
            with err.status("Loading the model…", spinner="dots"):
                model = env.model()
            err.print(f"[dim]{model.load_info.summary_line()}[/dim]")
        if not env.settings["model.path"] and env.settings["model.kind"] == "llama-cpp":
            self._embedded_notice(store, quiet)
        with env.model_lock:
            store.sync_vectors()
        s = env.settings
        self.assistant = Assistant(store, model, env.user, profile=s["model.prompt_profile"],
                                   session_gap_minutes=s["chat.session_gap_minutes"],
                                   recent_turns=s["chat.recent_turns"], model_lock=env.model_lock,
                                   vision=getattr(model, "vision", False))
        self.updates = UpdateStage(store, model, env.user, env.model_lock, enabled=self.learn)
        if self.learn:
            current, _ = self.assistant.session_for(self.now())
            self.updates.enqueue_unconsolidated(except_session=current)
            self.background = BackgroundUpdates(self._worker_stage).start()
            self.background.poke()

    def _worker_stage(self):
        from personavlm_cli.core.update import UpdateStage

        return UpdateStage(self.env._store.fork(), self.assistant.model, self.env.user, self.env.model_lock,
                           enabled=self.learn)

    def _embedded_notice(self, store, quiet: bool) -> None:
        if store.records.get_meta("embedded_notice_shown"):
            return
        store.records.set_meta("embedded_notice_shown", True)
        err.print("[yellow]Using the embedded SmolLM2-135M model: tiny, for trying personavlm out. "
                  "For real use, pass --model PATH or run `personavlm model pull`.[/yellow]")

    def finish(self, consolidate: bool) -> None:
        if self.assistant is None:
            return
        if self.background is not None:
            self.background.stop()
        if not self.learn:
            return
        if consolidate:
            last = self.assistant.last_turn()
            if last is not None:
                self.updates.enqueue_session(last.session_id)
        pending = self.updates.pending()
        if not pending:
            return
        try:
            if is_tty(sys.stderr):
                from rich.progress import Progress

                with Progress(transient=True, console=err) as progress:
                    task = progress.add_task("Updating memories", total=len(pending))
                    self.updates.run_pending(progress=lambda d, t: progress.update(task, completed=d, total=t))
            else:
                self.updates.run_pending()
        except KeyboardInterrupt:
            err.print("[yellow]Memory updates left pending; they resume at the next start.[/yellow]")

    # -- messages ---------------------------------------------------------------------------------

    def stage(self, path) -> None:
        from personavlm_cli.adapters.images import inspect_image

        inspect_image(Path(path))  # refuse a bad file now, with its own message
        self.staged.append(Path(path))

    def handle(self, line: str) -> bool:
        """One input line: a slash command or a message. False means quit."""
        if line.startswith("/") and not line.startswith("//"):
            return self.command(line)
        self.send(line[1:] if line.startswith("//") else line)
        return True

    def send(self, text: str) -> None:
        from personavlm_cli.core.memory import prompt_time

        text = "".join(ch for ch in text if ch in "\n\t" or ch.isprintable())
        if not text.strip():
            err.print("[yellow]Empty message: nothing sent.[/yellow]")
            return
        model = self.assistant.model
        budget = max(256, model.n_ctx // 2)
        with self.env.model_lock:  # the update thread may be using the model
            too_long = model.count_tokens(text) > budget
            if too_long:
                text = _trim_to_tokens(model, text, budget)
        if too_long:
            err.print(f"[yellow]Your message was longer than the context allows; only its first {budget} "
                      "tokens were kept.[/yellow]")
        images, self.staged = self.staged, []
        s = self.env.settings
        ex, stream = self.assistant.respond(
            text, self.now(), images, force_retrieve=self.force_retrieve,
            updates=self.updates if self.learn else None,
            sampling={"max_tokens": s["model.max_tokens"], "temperature": s["model.temperature"]})
        start, first, count = time.perf_counter(), None, 0
        try:
            for piece in stream:
                if first is None:
                    first = time.perf_counter()
                    if self.show_reasoning:
                        _print_reasoning(ex)
                count += 1
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            stream.close()
            sys.stdout.write("\n")
            err.print("[yellow](answer stopped; the partial answer is kept)[/yellow]")
        else:
            sys.stdout.write("\n")
            sys.stdout.flush()
        end = time.perf_counter()
        self.stats = {"pieces": count, "seconds": round(end - start, 2),
                      "first_token_s": round((first or end) - start, 3),
                      "tokens_per_s": round(count / max(end - (first or end), 1e-6), 1) if count > 1 else None,
                      "context": model.n_ctx, "session": ex.user_turn.session_id,
                      "time": prompt_time(ex.user_turn.occurred)}
        if self.background is not None:
            self.background.poke()

    # -- slash commands ---------------------------------------------------------------------------

    def command(self, line: str) -> bool:
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        try:
            if name in ("/exit", "/quit"):
                return False
            if name == "/help":
                for k, v in SLASH_HELP.items():
                    out.print(f"  [bold]{k}[/bold]  {v}")
            elif name == "/attach":
                if not arg:
                    raise PersonaError("usage: /attach PATH")
                path = Path(_unquote(arg)).expanduser()
                self.stage(path)
                err.print(f"[green]Attached {path.name}[/green] (sent with your next message)")
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
                for k, v in self.stats.items():
                    out.print(f"  {k}: {v}")
                if not self.stats:
                    out.print("  no answer yet")
            else:
                raise PersonaError(f"unknown command {name} (try /help)")
        except PersonaError as exc:
            err.print(f"[red]Error:[/red] {exc}")
        return True

    def _remember(self, text: str) -> None:
        from personavlm_cli.core.store import new_memory

        at = self.now()
        last = self.assistant.last_turn()
        session = last.session_id if last and abs((at - last.occurred).total_seconds()) < 3600 else None
        memory = new_memory("semantic", text, at, keywords="", session_id=session, meta={"origin": "/remember"})
        with self.env.model_lock:
            kept = self.updates.integrate_semantic(memory)
        if kept.id != memory.id:
            err.print(f"[green]Already known[/green] ({kept.id}); merged.")
        elif memory.meta.get("supersedes"):
            err.print(f"[green]Remembered[/green] {memory.id}; it replaces {memory.meta['supersedes']}.")
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
            from personavlm_cli.core.recall import Query, recall

            with self.env.model_lock:
                hits = recall(store, Query(text=arg, types=("semantic", "episodic", "procedural", "image")), k=1)
            if not hits:
                raise PersonaError(f"no memory matches '{arg}'")
            ids = [hits[0].memory.id]
            err.print(f"Forgetting {ids[0]}: {short(hits[0].memory.text)}")
        with self.env.model_lock:
            p = forgetting.plan(store, ids)
            erased = forgetting.execute(store, p, "forget", self.updates)
        err.print(f"[green]Forgot {len(erased)} memories.[/green]")

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
            out.print(f"  [cyan]{m.id}[/cyan] [dim]{m.occurred_at[:16].replace('T', ' ')} {m.type}[/dim] {short(m.text)}")
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
        from personavlm_cli.cli.repl import LineReader

        reader = LineReader(self.env, self)
        err.print("[dim]Type a message, /help for commands, Ctrl-D to quit.[/dim]")
        interrupts = 0
        while True:
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
            if not self.handle(line):
                return 0


def _print_reasoning(ex, console=None) -> None:
    console = console or err
    r = ex.reasoning
    if r is None:
        return
    for i, step in enumerate(r.steps, 1):
        window = ""
        if step.start_time or step.end_time:
            window = f" window {step.start_time or '…'} → {step.end_time or '…'}"
        forced = " (forced)" if step.forced else ""
        console.print(f"[dim]step {i}: {step.action}{forced}[/dim] {short(step.think, 90)}")
        if step.action == "retrieve":
            console.print(f"[dim]  keywords:[/dim] {step.keywords}{window}")
            for mid in step.retrieved:
                m = next((x for x in r.used if x.id == mid), None)
                if m is not None:
                    console.print(f"    [cyan]{m.id}[/cyan] [dim]{m.occurred_at[:16].replace('T', ' ')}[/dim] {short(m.text, 70)}")
            if not step.retrieved:
                console.print("    (nothing new found)")


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
