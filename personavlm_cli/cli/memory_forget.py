"""`personavlm memory forget`: what forgetting will erase, shown before the question; the use case is
``core/forgetting.py`` (``forget_ids``, ``forget_text``), which the chat's ``/forget`` and ``personavlm mcp``
call too. Registered on ``memory``'s app by ``cli/memory.py``."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from personavlm_cli.cli.common import UserOpt, count, err, line, make_env, one_line, safe
from personavlm_cli.core.errors import ExitStatus, NotFoundError, PersonaError
from personavlm_cli.core.memory import MemoryType, parse_time, type_of_id


def print_brief(console, m, label: str, indent: str = "  ") -> None:
    """One memory on one line: id, a dim label, its text cut with … at the terminal's width."""
    console.print(line(indent, (m.id, "cyan"), " ", (label, "dim"), " ", safe(m.text, single_line=True)),
                  no_wrap=True, overflow="ellipsis")


def forget(
    memory_ids: Annotated[list[str] | None, typer.Argument(help="Ids of memories to erase.")] = None,
    user: UserOpt = None,
    query: Annotated[str | None, typer.Option("--query", "-q", help=(
        "Erase every memory that holds this text (its words, literally, case aside) and what was derived from them "
        "alone; listed first."))] = None,
    before: Annotated[str | None, typer.Option(help="Erase everything that happened before this date.")] = None,
    all: Annotated[bool, typer.Option("--all", help="Erase all of this user's memories.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
):
    """Erase memories for real: text, vectors, image files, and everything derived from them.

    With --query TEXT, forgetting is exact and complete: every memory that holds the words, literally
    (case aside; a meaning alone never erases), every version, turns of both roles; what was derived
    from them alone (the reply to an erased message, its images, the episodes of its session, a
    statement whose every source goes). A memory with other sources left is kept, recomputed from them,
    and the core profile loses only the values that hold the words. All of it is listed, each with its
    text, before the question; afterwards no byte of the words is left in your store (records, lexical
    index, free pages, write-ahead log, vectors, input history). An old version whose successor is
    erased stays closed: it never comes back as current."""
    from personavlm_cli.core import forgetting

    chosen = sum(bool(x) for x in (memory_ids, query, before, all))
    if chosen != 1:
        raise PersonaError("say what to forget: IDs, --query TEXT, --before DATE or --all (one of them)")
    env = make_env(user)
    try:
        store = env.store(write=True, create=False)
        store.sync_vectors()
        if memory_ids:
            ids, operation = memory_ids, "forget-id"
        elif query:
            # The one rule for forgetting by text (the REPL's /forget uses it too): every memory that
            # holds the words literally, what was derived from them alone, the profile values that hold them.
            job = forgetting.forget_text(store, query)
            p = job.plan
            if job.nothing:
                err.print(line(f"Nothing matches '{one_line(query)}': nothing to forget."))
                return
            if not yes and not sys.stdin.isatty():
                raise PersonaError(f"refusing to forget {count(len(p.ids), 'memory')} that hold "
                                   f"'{one_line(query)}' without confirmation: pass --yes")
            down = _vector_server_down(env, store)
            if down:  # the match never needed it; say so, and that the vectors follow
                err.print(line((f"{down}: matched by the words only, as --query always does (a meaning alone never "
                                "erases), so nothing that holds them is missed", "yellow")))
            show_text_plan(err, p)
            if not yes and not typer.confirm(text_plan_question(p), err=True):
                raise typer.Exit(ExitStatus.ERROR)
            with err.status("Erasing (rebuilding the vector index)…", spinner="dots"):
                erased = job.erase()
            err.print(f"[green]Erased {count(len(erased), 'memory')}.[/green]")
            return
        elif before:
            cutoff = parse_time(before, "--before").timestamp()
            ids = [m.id for m in store.records.list(until=cutoff, include_superseded=True)]
            operation = "forget-before"
        else:
            ids, operation = [m.id for m in store.records.list(include_superseded=True)], "forget-all"
        # Checked before anything else: an id with no memory is one NotFoundError.
        try:
            job = forgetting.forget_ids(store, ids, operation=operation)
        except NotFoundError as exc:
            words = [i for i in memory_ids or [] if type_of_id(i) is None]
            if not words:
                raise
            raise NotFoundError(f"{exc}: to forget every memory that holds words, use --query "
                                f"'{one_line(' '.join(words))}'") from None
        if not ids:
            err.print("nothing to forget")
            return
        p = job.plan
        if not yes and not sys.stdin.isatty():
            raise PersonaError(f"refusing to forget {len(p.targets)} memories without confirmation: pass --yes")
        for m in p.targets[:20]:
            print_brief(err, m, m.type)
        if len(p.targets) > 20:
            err.print(line(("  … and ", "dim"), (f"{len(p.targets) - 20} more", "dim")))
        extra = f" (and {len(p.derived)} derived)" if p.derived else ""
        if not yes and not typer.confirm(f"Erase {len(p.targets)} memories{extra}?", err=True):
            raise typer.Exit(ExitStatus.ERROR)
        # Sessions that lose turns are consolidated again: queued here, run at the next chat. The vector
        # index is rebuilt so that no copy of an erased vector is left: seconds on a big store.
        with err.status("Erasing (rebuilding the vector index)…", spinner="dots"):
            erased = job.erase()
        err.print(f"[green]Erased {count(len(erased), 'memory')}.[/green]")
    finally:
        env.close()


def _vector_server_down(env, store) -> str | None:
    """Why the vector server does not answer (asked now, through the store's gate), or None; its notice
    for a chat ("answering from words and dates only") is not shown: the caller says what is true here."""
    if env.settings["store.kind"] != "server":
        return None
    from personavlm_cli.core.errors import UnreachableError
    from personavlm_cli.core.store import TEXT

    try:
        store.vectors.count(TEXT)
    except UnreachableError as exc:
        store.take_notices()
        return str(exc)
    return None


def show_text_plan(console, p) -> None:
    """Everything forgetting a text will do, before the question: each memory that goes with its
    whole text, what goes with them, the profile values that go, what is kept but recomputed."""
    from personavlm_cli.core.forgetting import holds, needle

    wanted = needle(p.text)

    def each(items, label):
        for m in items:
            mark = "" if m.current else " (older version)"
            if m in p.targets and not holds(m, wanted, meta=False):
                mark += " (its record holds it, e.g. the message it answered)"
            role = f" {m.role}" if m.role else ""
            console.print(line("  ", (m.id, "cyan"), " ", (f"{m.type}{role}{mark}", "dim"), " ",
                               safe(m.text, single_line=True)), overflow="fold")
        if items and label:
            console.print(line(("  " + label, "dim")))

    shown = [m for m in p.targets if m.type != MemoryType.CORE]
    hold = "hold" if len(shown) != 1 else "holds"
    console.print(line((f"{count(len(shown), 'memory')} {hold} '{one_line(p.text)}':", "bold")))
    each(shown, "")
    if p.derived:
        go = "go" if len(p.derived) > 1 else "goes"
        console.print(line((f"{count(len(p.derived), 'memory')} derived from them {go} too:", "bold")))
        each(p.derived, "")
    cores = [m for m in p.targets if m.type == MemoryType.CORE]
    if cores:
        removed = "; ".join(f"{k}: {v}" for k, v in (p.profile.removed.items() if p.profile else ()))
        left = ", ".join(p.profile.facts) if p.profile and p.profile.facts else "nothing"
        what = f"loses {removed}" if removed else "loses the values that hold it"
        console.print(line(("Core profile: ", "bold"), safe(what, single_line=True), f" (kept: {left}); ",
                           f"{count(len(cores), 'profile version')} that held it erased"), overflow="fold")
    if p.recomputed:
        console.print(line((f"Kept, recomputed from the sources that remain: {count(len(p.recomputed), 'memory')}",
                            "dim")))
        each(p.recomputed, "")


def text_plan_question(p) -> str:
    n = len(p.ids)
    return f"Erase {count(n, 'memory')}" + (" and change what is listed" if p.recomputed or p.profile else "") + "?"
