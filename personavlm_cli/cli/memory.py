"""`personavlm memory ...`: see, search, explain, correct, forget, export and import memories."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from personavlm_cli.cli.common import (
    JsonOpt,
    UserOpt,
    count,
    err,
    line,
    listing_table,
    make_env,
    one_line,
    out,
    print_json,
    print_rows,
    safe,
)
from personavlm_cli.cli.memory_forget import forget, print_brief
from personavlm_cli.core.errors import ExitStatus, NotFoundError, PersonaError, StoreBusyError
from personavlm_cli.core.memory import TYPES, parse_time

app = typer.Typer(help="See, search, explain, correct, forget, export and import memories.", no_args_is_help=True)

TypeOpt = Annotated[list[str] | None, typer.Option(
    "--type", "-t", help=f"Only these types ({'|'.join(TYPES)}); repeatable.")]


def _types(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    bad = [v for v in values if v not in TYPES]
    if bad:
        raise PersonaError(f"unknown memory type '{bad[0]}' (use {', '.join(TYPES)})")
    return values


def memory_json(m) -> dict:
    d = {"id": m.id, "type": m.type, "text": m.text, "created_at": m.created_at, "occurred_at": m.occurred_at,
         "source_ids": m.source_ids, "valid_to": m.valid_to, "superseded_by": m.superseded_by}
    if m.role:
        d["role"] = m.role
    if m.session_id:
        d["session_id"] = m.session_id
    if m.keywords:
        d["keywords"] = m.keywords
    if m.occurred_end:
        d["occurred_end"] = m.occurred_end
    if m.image_sha256:
        d["image_sha256"] = m.image_sha256
    return d


@app.command("list")
def list_(
    user: UserOpt = None,
    type: TypeOpt = None,
    since: Annotated[str | None, typer.Option(help="Only memories from this time on (YYYY-MM-DD [HH:MM]).")] = None,
    until: Annotated[str | None, typer.Option(help="Only memories up to this time.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many (the newest).")] = None,
    all: Annotated[bool, typer.Option("--all", help="Include superseded memories.")] = False,
    pending: Annotated[bool, typer.Option("--pending", help="Show queued update work instead.")] = False,
    json: JsonOpt = False,
):
    """List memories, oldest first (with --limit: the newest N).

    On a terminal, a table cut at its width; in a pipe, one memory per line with tab-separated
    columns (id, type, when, text) and each text whole, for grep and cut; --json for programs."""
    env = make_env(user)
    records = _open_records(env)
    if pending:
        jobs = records.pending_jobs()
        if json:
            print_json(jobs)
        else:
            _print_pending(records, jobs)
        return
    s = parse_time(since, "--since").timestamp() if since else None
    u = parse_time(until, "--until").timestamp() if until else None
    items = records.list(types=_types(type), since=s, until=u, include_superseded=all, limit=limit,
                         newest_first=limit is not None)
    if limit is not None:
        items.reverse()
    if json:
        print_json([memory_json(m) for m in items])
        return
    if not out.is_terminal:  # a pipe or a file (FORCE_COLOR makes it a terminal, as for Rich)
        print_rows([m.id, m.type, _when(m), ("" if m.current else "(superseded) ") + m.text] for m in items)
    else:
        _print_table(items)
    pending_jobs = records.pending_jobs()
    tail = f"; {count(len(pending_jobs), 'update')} pending (memory list --pending)" if pending_jobs else ""
    err.print(line((f"{count(len(items), 'memory')}{tail}", "dim")))


def _print_table(items) -> None:
    table = listing_table("id", "type", "when", "text")
    for m in items:
        text = safe(m.text, single_line=True)
        if not m.current:
            text = line(("(superseded) ", "yellow"), text)
        table.add_row(safe(m.id), safe(m.type), safe(_when(m)), text)
    out.print(table)


def _when(m) -> str:
    return (m.occurred_at or "")[:16].replace("T", " ")


def _print_pending(records, jobs: list[dict]) -> None:
    """Queued update work, one line per job: what it will learn from."""
    table = listing_table("job", "kind", "tries", "learns from")
    for j in jobs:
        payload = j.get("payload") or {}
        if j["kind"] == "turn":
            turn = records.get(payload.get("user") or "")
            what = line(str(payload.get("user")), ": ", safe(turn.text if turn else "(erased)", single_line=True))
        elif j["kind"] == "session":
            what = line("the whole session ", str(payload.get("session")))
        elif j["kind"] == "import_files":
            what = line(f"clean-up of an interrupted import ({count(len(payload.get('paths') or []), 'image file')})")
        else:
            what = safe(payload, single_line=True)
        table.add_row(safe(j["id"]), safe(j["kind"]), safe(j.get("attempts", 0)), what)
    if jobs:
        out.print(table)
    err.print(line((count(len(jobs), "pending update"), "dim")))
    if jobs:
        err.print(line(("They run in the background of your next chat, or now with `personavlm memory update`.",
                        "dim")))


def _open_records(env):
    return env.records(readonly=True)  # the local SQLite file, or the record database of a server store


@app.command()
def show(memory_id: Annotated[str, typer.Argument(help="The memory's id.")], user: UserOpt = None, json: JsonOpt = False):
    """One memory with its provenance, versions and linked images."""
    env = make_env(user)
    records = _open_records(env)
    m = records.get(memory_id)
    if m is None:
        raise NotFoundError(f"no memory with id '{memory_id}'")
    sources = records.get_many(m.source_ids)
    derived = records.derived_from([m.id])
    versions = _versions(records, m)
    if json:
        print_json({**memory_json(m), "meta": m.meta, "sources": [memory_json(x) for x in sources],
                    "derived": [memory_json(x) for x in derived], "versions": [memory_json(x) for x in versions]})
        return
    out.print(line((m.id, "bold cyan"), "  ", m.type, ("" if m.current else "  (superseded)", "yellow")))
    out.print(safe(m.text))
    out.print(line(("happened", "dim"), "  ", m.occurred_at, f" → {m.occurred_end}" if m.occurred_end else ""))
    out.print(line(("recorded", "dim"), "  ", m.created_at))
    if m.keywords:
        out.print(line(("keywords", "dim"), "  ", one_line(m.keywords)))
    if m.valid_to:
        out.print(line(("valid to", "dim"), "  ", m.valid_to, "  superseded by ",
                       m.superseded_by or "(nothing: closed)"))
    if m.image_sha256:
        out.print(line(("image", "dim"), "     sha256 ", m.image_sha256, "  ",
                       one_line(m.meta.get("filename", "")), f" {m.meta.get('width', '')}x{m.meta.get('height', '')}"))
    if m.meta.get("origin"):
        reason = m.meta.get("reason")
        out.print(line(("origin", "dim"), "    ", one_line(m.meta["origin"]), f": {one_line(reason)}" if reason else ""))
    if sources:
        out.print(line(("Comes from", "bold")))
        for x in sources:
            print_brief(out, x, f"{x.type} {_when(x)}")
    if derived:
        out.print(line(("Led to", "bold")))
        for x in derived:
            print_brief(out, x, x.type)
    if len(versions) > 1:
        out.print(line(("Versions", "bold")))
        for x in versions:
            print_brief(out, x, "current" if x.current else f"until {(x.valid_to or '')[:16]}")
    for merged in m.meta.get("merged", []):
        if isinstance(merged, dict):
            out.print(line(("merged", "dim"), "    ", str(merged.get("at", ""))[:16], " ",
                           safe(merged.get("text", ""), single_line=True)), no_wrap=True, overflow="ellipsis")
    reasoning = m.meta.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("steps"):
        steps = " → ".join(str(s.get("action", "?")) + (f"({s['keywords']})" if s.get("keywords") else "")
                           for s in reasoning["steps"] if isinstance(s, dict))
        out.print(line(("Reasoning", "bold"), " ", one_line(steps)))


def _versions(records, m) -> list:
    """The chain of versions through superseded_by, oldest first."""
    chain = [m]
    everything = None
    while True:
        if everything is None:
            everything = records.list(types=[m.type], include_superseded=True)
        before = [x for x in everything if x.superseded_by == chain[0].id]
        if not before:
            break
        chain.insert(0, before[0])
    nxt = chain[-1]
    while nxt.superseded_by:
        after = records.get(nxt.superseded_by)
        if after is None:
            break
        chain.append(after)
        nxt = after
    return chain


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")] = "",
    user: UserOpt = None,
    image: Annotated[Path | None, typer.Option("--image", help="Find images like this one.")] = None,
    type: TypeOpt = None,
    since: Annotated[str | None, typer.Option(help="Only from this time on.")] = None,
    until: Annotated[str | None, typer.Option(help="Only up to this time.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-k", min=1, help="How many results.")] = 10,
    all: Annotated[bool, typer.Option("--all", help="Include superseded memories.")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="Show each signal's rank and score.")] = False,
    json: JsonOpt = False,
):
    """Hybrid search (dense + lexical + image) over every memory. Only what shares a word with the query
    or means nearly the same is shown (a relevance floor): nonsense finds nothing.

    In a pipe: one hit per line, tab-separated (id, type, when, score, text), each text whole."""
    from personavlm_cli.core.recall import Query, recall

    if not query and image is None:
        raise PersonaError("give a QUERY or --image PATH")
    env = make_env(user)
    try:
        weights = None
        try:
            store = env.store(write=True, create=False)
        except StoreBusyError as exc:
            # A chat holds the store. The embedded vector engine is one process's, but the record file
            # has free readers: search by words (BM25) and say so. An image search needs the vectors.
            if image is not None:
                raise
            store = env.store(write=False, create=False)
            weights = {"dense": 0.0, "keywords": 0.0, "image": 0.0}
            err.print(line((f"{str(exc).split(';')[0]}: searching by words only", "yellow")))
        images = []
        if image is not None:
            from personavlm_cli.adapters.images import inspect_image

            inspect_image(image)
            images = [image]
        if weights is None:
            store.sync_vectors()
        q = Query(text=query, types=tuple(_types(type) or TYPES), image_paths=images, include_superseded=all,
                  since=parse_time(since, "--since").timestamp() if since else None,
                  until=parse_time(until, "--until").timestamp() if until else None)
        hits = recall(store, q, k=limit, weights=weights)
        asks_images = (type and "image" in type) or (not type and _IMAGE_WORDS.search(query))
        why_not = _why_no_text_search(env, store) if query and asks_images and image is None else None
    finally:
        env.close()
    if why_not:
        err.print(line((why_not, "yellow")))
    if json:
        print_json([{**memory_json(h.memory), "score": round(h.score, 5), "signals": h.signals} for h in hits])
        return
    from personavlm_cli.core.learning import changes

    piped = not out.is_terminal
    for h in hits:
        m = h.memory
        mark = (f" (past, until {changes.until_text(m)})" if changes.until_text(m)
                else " (my answer, not your words)" if changes.is_assistants(m) else "")
        if piped:
            print_rows([[m.id, m.type + mark, _when(m), f"{h.score:.4f}", m.text]])
        else:
            print_brief(out, m, f"{m.type} {_when(m)}{mark}", indent="")
        if explain:
            parts = [f"{name} #{s['rank']} ({s['score']})" for name, s in h.signals.items()]
            # Each signal's rank and raw score; the fused score weighs them, scaled to each signal's
            # best, with the priors (core/recall.py WEIGHTS): not their sum.
            out.print(line(("    fused ", "dim"), (f"{h.score:.4f} from {', '.join(parts)}", "dim")))
    if not hits:
        err.print("no matching memories: none shares a word with the query or means nearly the same")


_IMAGE_WORDS = re.compile(r"\b(photos?|pictures?|images?|pics?|selfies?|screenshots?|snapshots?)\b", re.I)


def _why_no_text_search(env, store) -> str | None:
    """Why words cannot find images by what they show (random CLIP weights, or a re-embedding under way)."""
    from personavlm_cli.cli.clip import target_space
    from personavlm_cli.core import reembed

    return reembed.status(store.records, target_space(env.settings)).why_no_text_search()


app.command()(forget)  # in cli/memory_forget.py; here, for its place in the help


@app.command()
def edit(
    memory_id: Annotated[str, typer.Argument(help="The memory's id (a semantic, episodic, procedural or core memory).")],
    text: Annotated[str, typer.Argument(help="The corrected text; - reads it from stdin.")],
    user: UserOpt = None,
    erase_old: Annotated[bool, typer.Option(
        "--erase-old", help="Erase the old version for real (and what was derived from it) instead of keeping "
                            "it as history.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before erasing derived memories.")] = False,
    json: JsonOpt = False,
):
    """Correct a memory: the new text becomes its current version; the old one stays as history
    (memory show) unless --erase-old."""
    from personavlm_cli.core import forgetting
    from personavlm_cli.core.learning import corrections

    if text == "-":
        text = sys.stdin.read()
    env = make_env(user)
    try:
        store = env.store(write=True, create=False)
        store.sync_vectors()
        corrections.editable(store.records, memory_id)
        p = forgetting.forget_ids(store, [memory_id], operation="edit-erase-old").plan if erase_old else None
        if p is not None and p.derived:  # ask before anything changes
            for m in p.derived[:20]:
                print_brief(err, m, m.type)
            if not yes:
                if not sys.stdin.isatty():
                    raise PersonaError(f"erasing the old version would also erase {count(len(p.derived), 'derived memory')}: "
                                       "pass --yes")
                if not typer.confirm(f"Erase the old version and {count(len(p.derived), 'derived memory')}?", err=True):
                    raise typer.Exit(ExitStatus.ERROR)
        new = corrections.correct(store, memory_id, text)
        if new is None:
            err.print(line(f"'{memory_id}' already says that: nothing changed"))
            if json:
                print_json(memory_json(store.records.get(memory_id)))
            else:
                out.print(safe(memory_id))
            return
        if p is not None:
            # Planned again: the old version now names its successor.
            job = forgetting.forget_ids(store, [memory_id], operation="edit-erase-old")
            with err.status("Erasing the old version (rebuilding the vector index)…", spinner="dots"):
                job.erase()
            err.print(line(("Edited", "green"), f" {memory_id} → {new.id}; the old version is erased."))
        else:
            err.print(line(("Edited", "green"), f" {memory_id} → {new.id}; the old version is kept as history "
                           f"(memory show {new.id}; --erase-old erases it)."))
        if json:
            print_json(memory_json(store.records.get(new.id)))
        else:
            out.print(safe(new.id))
    finally:
        env.close()


@app.command("export")
def export(
    file: Annotated[Path, typer.Argument(help="Where to write (a .pvm archive: zip).")],
    user: UserOpt = None,
):
    """Export memories, timeline and images in the documented, versioned format."""
    from personavlm_cli.adapters.archive import ZipArchive
    from personavlm_cli.core.transfer import export_archive

    env = make_env(user)
    records = _open_records(env)
    summary = export_archive(records, env.user_dir(create=False), file, env.user, ZipArchive())
    err.print(line(("Exported", "green"), f" {count(summary['counts']['memories'], 'memory')} and "
                   f"{count(summary['counts']['images'], 'image')} to {file}"))


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="An archive written by `memory export` or `profile export --archive`.")],
    user: UserOpt = None,
):
    """Import an archive into this user's store (memories already present are kept)."""
    summary = import_file(make_env(user), file)
    if summary.get("empty"):
        err.print(line(f"The archive {file} holds no memories: nothing imported"))
        return
    err.print(f"[green]Imported[/green] {count(summary['added'], 'memory')} ({summary['skipped']} already present)")


def archive_format(settings):
    """The archive's format, reading under this home's limits (archive.max_member_mb, archive.max_ratio,
    archive.max_line_kb): what an imported archive may expand to."""
    from personavlm_cli.adapters.archive import Limits, ZipArchive

    return ZipArchive(Limits(member_bytes=settings["archive.max_member_mb"] << 20, ratio=settings["archive.max_ratio"],
                             line_bytes=settings["archive.max_line_kb"] << 10))


def import_file(env, file: Path, progress=None) -> dict:
    """Verify an archive whole, then write it into ``env``'s user store (``core/transfer.py``; shared by
    `memory import` and `profile import`)."""
    from personavlm_cli.core import transfer

    _ = env.user  # a bad user name or configuration is refused before the archive is read
    try:
        return transfer.import_file(file, archive_format(env.settings), lambda: env.store(write=True), progress)
    finally:
        env.close()
