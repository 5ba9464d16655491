"""`personavlm profile ...`: the core profile, habits and goals, and the evolving Big Five."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from personavlm_cli.cli.common import JsonOpt, UserOpt, clean, err, line, make_env, one_line, out, print_json
from personavlm_cli.cli.memory import _open_records
from personavlm_cli.core import personality as pem
from personavlm_cli.core.errors import PersonaError
from personavlm_cli.core.memory import MemoryType

app = typer.Typer(help="Your profile: core facts, habits and goals, personality; export and import.",
                  no_args_is_help=True)


def profile_data(records, user: str) -> dict:
    core = records.list(types=[MemoryType.CORE])
    procedural = records.list(types=[MemoryType.PROCEDURAL])
    vector = records.get_meta("personality") or pem.initial()
    totals = (records.get_meta("personality_evidence") or {}).get("totals")
    return {
        "user": user,
        "core": core[-1].meta.get("facts", {}) if core else {},
        "procedural": {m.meta.get("key", m.id): m.text for m in procedural},
        "big_five": {t: round(float(vector[t]), 4) for t in pem.TRAITS},
        "confidence": {t: round(c, 4) for t, c in pem.confidences(totals).items()},
    }


def trait_line(trait: str, value: float, confidence: float) -> str:
    if confidence < pem.CONFIDENCE_FLOOR:
        return f"  {trait:<18} {value:4.2f}  not enough evidence yet (confidence {confidence:.2f})"
    return f"  {trait:<18} {value:4.2f}  confidence {confidence:.2f}  {pem.reading(trait, value)}"


def render_profile(store_or_records, user: str | None = None) -> None:
    records = getattr(store_or_records, "records", store_or_records)
    data = profile_data(records, user or "")
    out.print(line(("Core profile", "bold")))
    for k, v in data["core"].items():
        out.print(line(f"  {one_line(k)}: ", _value(v)))
    if not data["core"]:
        out.print("  (nothing yet: it is learnt from what you say about yourself: name, age, occupation, "
                  "where you live, family, pets, languages)", markup=False)
    out.print(line(("Habits and goals", "bold")))
    for k, v in data["procedural"].items():
        out.print(line(f"  {one_line(k)}: ", _value(v)))
    if not data["procedural"]:
        out.print("  (none yet)", markup=False)
    out.print(line(("Personality (Big Five, 1-5)", "bold")))
    for t, v in data["big_five"].items():
        out.print(line(trait_line(t, v, data["confidence"][t])))
    out.print("  (read only from what you say about yourself; `personavlm profile why TRAIT` shows the sentences)",
              markup=False)


def _value(v) -> str:
    """A profile value as learnt: text as it is (control characters visible), lists joined."""
    if isinstance(v, (list, tuple)):
        return ", ".join(one_line(x) for x in v)
    return clean(v).strip()


@app.command()
def show(user: UserOpt = None, json: JsonOpt = False):
    """The core profile, habits and goals, and the Big Five with a reading of each.

    The Big Five reading is what your own statements about yourself suggest, nothing more.
    A sentence such as "I love big parties" or "I don't worry much" counts as evidence when
    it is close in meaning to a description of one end of a trait (published questionnaire
    items, IPIP, and everyday descriptions such as "I always arrive on time"); questions,
    requests, greetings and plain facts ("I have a cat", "I went to the gym") count for
    nothing. Which end a sentence is on comes from the nearest descriptions of each end, and
    "not", "never" and words such as "boring" or "exhausting" turn it round. Each trait starts
    at the neutral 3 and moves only as evidence adds up (five clear messages move it about
    one point); its confidence grows with the evidence, and below 0.5 it reads "not enough
    evidence yet" and the assistant's tone ignores it. It is not a personality test: it knows
    only what you chose to say here, it reads the words and not the person (irony, a quote or
    a bad day read as said), and a sentence can be misread (`profile why TRAIT` shows each
    one; `profile reset TRAIT` starts a trait over)."""
    env = make_env(user)
    records = _open_records(env)
    if json:
        print_json(profile_data(records, env.user))
    else:
        render_profile(records, env.user)


@app.command()
def history(user: UserOpt = None, json: JsonOpt = False,
            chart: Annotated[bool, typer.Option("--chart/--no-chart", help="Draw a terminal chart per trait.")] = True):
    """How the personality changed, update by update, with the sentences that moved it and by how much."""
    env = make_env(user)
    records = _open_records(env)
    rows = records.personality_history()
    evidence = evidence_by_turn(records)
    for r in rows:
        r["evidence"] = evidence.get(r["turn_id"], []) if r["turn_id"] else []
    if json:
        print_json(rows)
        return
    if not rows:
        out.print("No personality updates yet.")
        return
    from rich.table import Table

    table = Table(box=None)
    for col in ("#", "when", "turn", "λ", *[t[:5] for t in pem.TRAITS], "note", "evidence"):
        table.add_column(col)
    for i, r in enumerate(rows, 1):
        inferred = r["inferred"] or {}
        cells = [str(i), str(r["at"])[:16].replace("T", " "), r["turn_id"] or "-",
                 f"{r['lambda']:.3f}" if r["lambda"] is not None else "-",
                 *[f"{r['after'][t]:.2f}" + (f" ({inferred[t]})" if t in inferred else "") for t in pem.TRAITS],
                 r["note"] or "",
                 "; ".join(f"{e['trait'][:5]} {e['moved']:+.2f} {_quoted(e['sentence'])}" for e in r["evidence"])]
        table.add_row(*[line(one_line(c)) for c in cells])  # Text cells: a note is never markup
    out.print(table)
    if chart and len(rows) > 1 and sys.stdout.isatty():
        import plotext as plt

        plt.clear_figure()
        for t in pem.TRAITS:
            plt.plot([r["after"][t] for r in rows], label=t)
        plt.ylim(1, 5)
        plt.plotsize(80, 18)
        plt.title("Big Five over updates")
        plt.show()


def evidence_by_turn(records) -> dict[str, list[dict]]:
    """The kept evidence, per message, with each sentence read from the message itself (a forgotten
    message's evidence shows no text: none was copied)."""
    items = (records.get_meta("personality_evidence") or {}).get("items") or []
    turns = {m.id: m for m in records.get_many(sorted({e["turn_id"] for e in items if e.get("turn_id")}))}
    out: dict[str, list[dict]] = {}
    for e in items:
        turn = turns.get(e.get("turn_id"))
        sentence = turn.text[e["start"]:e["end"]] if turn is not None else None
        out.setdefault(e.get("turn_id"), []).append({**e, "sentence": sentence})
    return out


def _quoted(sentence: str | None, width: int = 60) -> str:
    if sentence is None:
        return "(message forgotten)"
    text = one_line(sentence)
    return f'"{text[:width - 1]}…"' if len(text) > width else f'"{text}"'


@app.command()
def why(trait: Annotated[str, typer.Argument(help="A trait name (openness, conscientiousness, extraversion, "
                                                  "agreeableness, neuroticism).")],
        user: UserOpt = None, json: JsonOpt = False):
    """The sentences that moved a trait, each with how much, which way and the item it was read as."""
    trait = trait.lower()
    if trait not in pem.TRAITS:
        raise PersonaError(f"unknown trait '{trait}' (use {', '.join(pem.TRAITS)})")
    env = make_env(user)
    records = _open_records(env)
    data = profile_data(records, env.user)
    rows = [e for items in evidence_by_turn(records).values() for e in items if e["trait"] == trait]
    rows.sort(key=lambda e: str(e.get("at")))
    if json:
        print_json({"trait": trait, "value": data["big_five"][trait], "confidence": data["confidence"][trait],
                    "evidence": rows})
        return
    out.print(line(trait_line(trait, data["big_five"][trait], data["confidence"][trait]).strip()))
    if not rows:
        out.print(f"No sentence has moved {trait} yet.", markup=False)
        return
    for e in rows:
        how = "raised" if e["direction"] > 0 else "lowered"
        src = "the chat model's rating" if e.get("source") == "model" else \
            f"read as \"{one_line(e['marker'])}\"" + (" (negated)" if e.get("negated") else "")
        out.print(line(f"  {str(e.get('at'))[:16].replace('T', ' ')}  {e['moved']:+.2f}  {how}, weight "
                       f"{e['weight']:.2f}, {src}: {_quoted(e['sentence'], 90)}"))


@app.command()
def reset(trait: Annotated[str, typer.Argument(help="A trait name, or 'all'.")], user: UserOpt = None):
    """Reset a personality trait (or all) to neutral 3.0 and drop its evidence; the reset is kept in the history."""
    from personavlm_cli.core.memory import iso, now

    wanted = list(pem.TRAITS) if trait == "all" else [trait.lower()]
    if any(t not in pem.TRAITS for t in wanted):
        raise PersonaError(f"unknown trait '{trait}' (use {', '.join(pem.TRAITS)} or all)")
    env = make_env(user)
    try:
        store = env.store(write=True, create=False)
        records = store.records
        before = records.get_meta("personality") or pem.initial()
        after = {**before, **{t: pem.NEUTRAL for t in wanted}}
        state = records.get_meta("personality_evidence")
        with records.transaction():
            if state:  # the trait starts over: its evidence goes with the reset
                totals = {**state.get("totals", {}), **{t: {"sum": 0.0, "weight": 0.0} for t in wanted}}
                items = [e for e in state.get("items") or [] if e["trait"] not in wanted]
                records.set_meta("personality_evidence", {"totals": totals, "items": items})
            records.add_personality({"at": iso(now()), "turn_id": None, "m": records.get_meta("personality_updates") or 0,
                                     "lambda": None, "inferred": None, "before": before, "after": after,
                                     "note": f"reset {', '.join(wanted)}"})
            records.set_meta("personality", after)
    finally:
        env.close()
    err.print(line(f"Reset {', '.join(wanted)} to 3.0"))


@app.command("export")
def export(
    user: UserOpt = None,
    format: Annotated[str, typer.Option("--format", "-f", help="json, yaml or md.")] = "json",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
    archive: Annotated[Path | None, typer.Option("--archive", help="Write a full portable archive of the user.")] = None,
):
    """Export the profile (json, yaml, md), or everything the user has with --archive."""
    env = make_env(user)
    records = _open_records(env)
    if archive is not None:
        from personavlm_cli.adapters.archive import ZipArchive
        from personavlm_cli.core.transfer import export_archive

        m = export_archive(records, env.user_dir(create=False), archive, env.user, ZipArchive())
        err.print(line(("Archive written", "green"), f" to {archive}: {m['counts']['memories']} memories, "
                       f"{m['counts']['images']} images, {m['counts']['personality_updates']} personality updates"))
        return
    data = profile_data(records, env.user)
    if format == "json":
        import json as _json

        text = _json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    elif format == "yaml":
        import yaml

        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    elif format == "md":
        text = profile_markdown(data, records)
    else:
        raise PersonaError(f"unknown format '{format}' (use json, yaml or md)")
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        err.print(line(f"Written to {output}"))


def profile_markdown(data: dict, records) -> str:
    # One line per item, control characters visible: the page is read on terminals too.
    lines = [f"# What personavlm knows about {data['user']}", ""]
    lines += ["## Core profile", ""]
    lines += [f"- **{one_line(k)}**: {one_line(_value(v))}" for k, v in data["core"].items()] or ["_Nothing yet._"]
    lines += ["", "## Habits and goals", ""]
    lines += [f"- {one_line(v)}" for v in data["procedural"].values()] or ["_None yet._"]
    lines += ["", "## Personality (Big Five, 1 to 5)", "", "| trait | score | reading |", "|---|---|---|"]
    lines += [f"| {t} | {v:.2f} | " + (pem.reading(t, v) if data["confidence"][t] >= pem.CONFIDENCE_FLOOR
                                         else "not enough evidence yet") + " |" for t, v in data["big_five"].items()]
    semantic = records.list(types=[MemoryType.SEMANTIC])
    lines += ["", "## Things you asked me to remember, or told me", ""]
    lines += [f"- {one_line(m.text)} _({m.occurred_at[:10]})_" for m in semantic] or ["_None yet._"]
    n = len(records.personality_history())
    lines += ["", f"_{n} personality updates so far; `personavlm profile history` shows each with its evidence._", ""]
    return "\n".join(lines)


@app.command("import")
def import_(file: Annotated[Path, typer.Argument(help="An archive from `profile export --archive`.")],
            user: UserOpt = None):
    """Restore a full archive into this home, under this (or another) user name."""
    env = make_env(user)
    summary = import_with_progress(env, file)
    err.print(line(("Imported", "green"), f" {summary['added']} memories for user '{env.user}'"))


def import_with_progress(env, file: Path) -> dict:
    """Check the whole archive (nothing is created before it passes), then write it into ``env``'s
    store; a long import shows its progress on a terminal (stderr), and nothing when piped."""
    from personavlm_cli.cli.memory import import_file

    with import_progress() as progress:
        return import_file(env, file, progress)


class import_progress:
    """A transient progress bar on stderr (a terminal only) for ``read_archive``/``import_archive``."""

    def __init__(self):
        self.bar = None
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        if not err.is_terminal:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=err, transient=True)
        self.bar.start()
        return self

    def __call__(self, what: str, done: int, total: int) -> None:
        if what not in self.tasks:
            self.tasks[what] = self.bar.add_task(what.capitalize(), total=total)
        self.bar.update(self.tasks[what], completed=done)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False
