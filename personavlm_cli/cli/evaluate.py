"""`personavlm eval ...`: measure recall (and answers) on public benchmarks.

Thin wrappers: each command parses its options, builds the model from the user's settings, calls its
evaluation in ``personavlm_cli/evals/`` and renders the result. ``eval locomo DATA`` replays each LoCoMo
conversation into a fresh temporary store and asks it every question of categories 1-4 that has
annotated evidence (``evals/locomo.py``); ``eval facts`` replays scripted people (``evals/facts.py``).
Nothing touches the user's own memories.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from personavlm_cli.cli.common import err, make_env, out
from personavlm_cli.core.errors import PersonaError

app = typer.Typer(help="Measure recall and answers on public benchmarks (LoCoMo, Persona-MME, PERSONAMEM).", no_args_is_help=True)


@contextmanager
def progress_bar(name: str, total: int):
    """A progress bar on stderr, handed to an evaluation as its progress callbacks."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from personavlm_cli.evals.workspace import Progress as Hooks

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=False) as bar:
        task = bar.add_task(name, total=total)
        yield Hooks(describe=lambda text: bar.update(task, description=text), advance=lambda n: bar.advance(task, n))


def load_model(env):
    """The chat model of ``env``, loaded under a spinner."""
    with err.status("Loading the model…", spinner="dots"):
        return env.model()


@app.command("locomo")
def locomo(
    data: Annotated[Path, typer.Argument(help="LoCoMo's JSON (e.g. locomo10.json, or the development split).",
                                         show_default=False)],
    retrieval_only: Annotated[bool, typer.Option(
        "--retrieval-only", help="Measure recall only (no chat model).")] = False,
    k: Annotated[int, typer.Option("--k", min=1, help="Recall is measured over the first K distinct turns.")] = 10,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Ask at most N questions in all.")] = None,
    conversations: Annotated[str | None, typer.Option(
        "--conversations", help="Only these conversations, comma-separated (e.g. conv-26,conv-30).")] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the results as JSON to this file.")] = None,
    signals: Annotated[str | None, typer.Option(
        "--signals", help="Use only these recall signals, comma-separated (dense, keywords, lexical, context, "
        "speaker, date, image, taste, substance, instance, topic); default: all.")] = None,
    weight: Annotated[list[str] | None, typer.Option(
        "--weight", help="Override one signal's weight, NAME=NUMBER (repeatable).")] = None,
    fusion: Annotated[str, typer.Option("--fusion", help="score (normalised scores, the default) or rrf (the "
                                                         "reciprocal-rank baseline).")] = "score",
    candidates: Annotated[int | None, typer.Option("--candidates", min=1, help="Candidate pool per signal.")] = None,
    ablate: Annotated[str | None, typer.Option(
        "--ablate", help="Also recall each question without each of these signals, comma-separated (new: the "
        "signals of core/links.py and core/kinds.py, and topic), and show recall@K per category without each.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="GGUF file or registered model name.")] = None,
    gpu_layers: Annotated[str | None, typer.Option("--gpu-layers", help="auto, all or a number.")] = None,
    context: Annotated[int | None, typer.Option("--context", help="Context window in tokens.")] = None,
    force_retrieve: Annotated[bool | None, typer.Option(
        "--force-retrieve/--model-decides", help="Override the chat's own retrieval (config chat.retrieval, "
        "retrieve-first by default): always recall up front, or let the model decide with a separate call.",
        show_default=False)] = None,
):
    """Replay LoCoMo conversations into a temporary store; score recall@k (and answers' token F1)."""
    from personavlm_cli.evals import locomo as lc
    from personavlm_cli.evals.workspace import write_json

    weights = lc.recall_weights(signals, weight, fusion)
    without = lc.ablations(ablate, weights)
    only = [c for c in conversations.split(",")] if conversations else None
    plan = lc.plan_questions(lc.load(data, only), limit)
    total = sum(len(qs) for _c, qs in plan)
    if total == 0:
        raise PersonaError(f"no questions of categories 1-4 with evidence in {data}")
    env = None
    answering = None
    try:
        if not retrieval_only:
            env = make_env(None, **{"model.path": model, "model.gpu_layers": gpu_layers, "model.context": context})
            mode = ("force" if force_retrieve else "model-decides") if force_retrieve is not None \
                else env.settings["chat.retrieval"]
            answering = lc.Answering(model=load_model(env), settings=env.settings, mode=mode)
        with progress_bar("LoCoMo", total) as hooks:
            result = lc.run(data, plan, k=k, weights=weights, fusion=fusion, candidates=candidates,
                            answering=answering, progress=hooks, ablate=without)
    finally:
        if env is not None:
            env.close()
    write_json(json_out, result)
    _print_table(result, answering is not None)


def _print_table(result: dict, answered: bool) -> None:
    from rich.table import Table

    from personavlm_cli.evals.locomo import CATEGORY_NAMES

    k = result["k"]
    table = Table(title=f"LoCoMo: {result['questions']} questions, {', '.join(result['conversations'])}")
    table.add_column("category")
    table.add_column("questions", justify="right")
    table.add_column(f"recall@{k}", justify="right")
    for x in sorted(result["recall_at"], key=int):
        if int(x) != k:
            table.add_column(f"@{x}", justify="right")
    if answered:
        table.add_column("F1", justify="right")
        table.add_column("evidence in context", justify="right")
    counts: dict[str, int] = {"overall": result["questions"]}
    for row in result["items"]:
        counts[str(row["category"])] = counts.get(str(row["category"]), 0) + 1

    def cell(v):
        return "-" if v is None else f"{v:.3f}"

    for key in ("1", "2", "3", "4", "overall"):
        if key != "overall" and not counts.get(key):
            continue
        label = "overall" if key == "overall" else f"{key} {CATEGORY_NAMES[int(key)]}"
        cells = [label, str(counts.get(key, 0)), cell(result["recall_at_k"][key])]
        cells += [cell(result["recall_at"][x][key]) for x in sorted(result["recall_at"], key=int) if int(x) != k]
        if answered:
            cells.append(cell(result["f1"][key]))
            cells.append(cell(result["evidence_in_context"][key]))
        table.add_row(*cells, style="bold" if key == "overall" else None)
    out.print(table)
    if result.get("ablation"):
        ablated = Table(title=f"recall@{k} without each signal (the first row: all of them)")
        ablated.add_column("signals")
        keys = [key for key in ("1", "2", "3", "4", "overall") if key == "overall" or counts.get(key)]
        for key in keys:
            ablated.add_column("overall" if key == "overall" else CATEGORY_NAMES[int(key)], justify="right")
        ablated.add_row("all", *[cell(result["recall_at_k"][key]) for key in keys])
        for name, values in result["ablation"].items():
            ablated.add_row(f"without {name}", *[cell(values[key]) for key in keys])
        out.print(ablated)
    t = result["timings"]
    out.print(f"signals: {', '.join(result['signals'])} ({result['fusion']} fusion); recall {t['recall_ms_mean']} ms "
              f"mean, {t['recall_ms_p95']} ms p95; {t['total_s']} s in all")
    if answered:
        out.print(f"answers: {result['retrieval']} retrieval; {result['prompt_tokens_mean']} prompt tokens per answer "
                  "(mean); evidence in context = share of the evidence turns that were in the answer's prompt")


@app.command("facts")
def facts(
    data: Annotated[Path, typer.Argument(help="Scripted people (the format of shared/data/personas).",
                                         show_default=False)],
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON to this file.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="GGUF file or registered model name.")] = None,
    gpu_layers: Annotated[str | None, typer.Option("--gpu-layers", help="auto, all or a number.")] = None,
    context: Annotated[int | None, typer.Option("--context", help="Context window in tokens.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Most tokens in one answer.")] = 96,
    lived: Annotated[Path | None, typer.Option(
        "--lived", help="Also replay lives that change (the format of shared/data/lived): profile, current "
                        "value first, learnt questions, forgetting.")] = None,
    forget_lives: Annotated[Path | None, typer.Option(
        "--forget-lives", help="Also replay these lives (shared/data/lived format), forget each one's "
        "expect.forget.query and count the literal occurrences left (the forgetting category).")] = None,
):
    """Do they learn true facts and use them? Replays scripted people through the chat turn with learning,
    then asks about each fact: learnt, truthful, grounded and answered (docs/benchmarks.md).

    DATA may also be a file of lives that change (as --lived)."""
    from personavlm_cli.core.capability import choose_extractor
    from personavlm_cli.evals import facts as fx
    from personavlm_cli.evals import lived as lv
    from personavlm_cli.evals.workspace import model_line, write_json

    if lv.is_lived(data):
        data, lived = None, data
    people = fx.load(data) if data is not None else []
    lives = lv.load(lived) if lived is not None else []
    forget_set = []
    if forget_lives is not None:
        from personavlm_cli.evals import forgetting as ff

        forget_set = ff.load(forget_lives)  # a bad file is refused before the model loads
    env = make_env(None, **{"model.path": model, "model.gpu_layers": gpu_layers, "model.context": context})
    s = env.settings
    started = time.perf_counter()
    try:
        llm = load_model(env)
        extractor = choose_extractor(s["memory.extractor"], llm)
        steps = sum(sum(len(x["messages"]) for x in p.sessions) + len(p.facts) for p in people)
        steps += sum(sum(len(x["messages"]) for x in life.sessions) + len(life.expect.get("current") or [])
                     for life in lives)
        with progress_bar("facts", steps) as hooks:
            def step(user: str) -> None:
                hooks.describe(user)
                hooks.advance(1)

            results = fx.run(people, llm, s, extractor, max_tokens, progress=step) if people else []
            changed = lv.run(lives, llm, s, extractor, max_tokens, progress=step) if lives else []
            forgotten = ff.run(forget_set, llm, s, extractor, max_tokens) if forget_lives is not None else None
    finally:
        env.close()
    result = {"benchmark": "facts", "data": str(data) if data else None, "people": len(people),
              "extractor": extractor, "retrieval": s["chat.retrieval"],
              "seconds": round(time.perf_counter() - started, 1), **(fx.summarize(results) if people else {})}
    if lives:
        result["lived"] = {"data": str(lived), "lives": len(lives), **lv.summarize(changed)}
    result["model"] = model_line(llm)
    if forgotten is not None:
        result["forgetting"] = forgotten
    write_json(json_out, result)
    from rich.table import Table

    if lives:
        changes_table = Table(title=f"Lives that change: {len(lives)} lives ({extractor} learning)")
        for col in ("category", "value", "bar"):
            changes_table.add_column(col, justify="left" if col == "category" else "right")
        for row in lv.category_rows(result["lived"]):
            changes_table.add_row(*row)
        out.print(changes_table)
        for user, m in result["lived"]["lives"].items():
            for item in m["items"]:
                if not item.get("ok", item.get("search", True) and item.get("context", True)):
                    out.print(f"missed ({user}): {json.dumps(item, ensure_ascii=True)[:200]}", markup=False,
                              highlight=False)
    if forgotten is not None:
        kept = "-" if forgotten["kept"] is None else f"{forgotten['kept']:.2f}"
        out.print(f"forgetting: {forgotten['lives']} lives, literal occurrences left {forgotten['occurrences_left']} "
                  f"(zero in {forgotten['zero_occurrences']:.2f} of them), profile fields kept {kept}",
                  markup=False, highlight=False)
    if not people:
        return

    table = Table(title=f"Facts: {len(people)} people, {result['counts']['facts']} facts ({extractor} learning)")
    for col in ("person", "learnt", "truthful", "grounded", "answered"):
        table.add_column(col, justify="left" if col == "person" else "right")

    def cell(v):
        return "-" if v is None else f"{v:.2f}"

    for user, m in result["people"].items():
        table.add_row(user, *(cell(m[k]) for k in ("learnt", "truthful", "grounded", "answered")))
    o = result["overall"]
    table.add_row("overall", *(cell(o[k]) for k in ("learnt", "truthful", "grounded", "answered")), style="bold")
    out.print(table)
    for user, m in result["people"].items():
        for line in m["untrue"]:
            out.print(f"untrue ({user}): {line}", markup=False, highlight=False)


@app.command("personality")
def personality(
    data: Annotated[str, typer.Argument(help="Writers: heldout (the default), heldout2 (the second, fresh "
                                             "held-out set), development, tuning, or a JSON file of the same form (or "
                                             "of shared/data/personality/dev.json's).")] = "heldout",
    method: Annotated[str, typer.Option("--method", help="evidence (what the chat uses), paper (the chat model "
                                                         "rates each message, the momentum update), or both.")]
    = "evidence",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON to this file.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="GGUF file or registered model name "
                                                                      "(for --method paper).")] = None,
):
    """Does the Big Five reading mean something? Scripted writers high and low on each trait, neutral
    writers and negation pairs: separation per trait after five messages, neutral and off-target drift
    (docs/benchmarks.md)."""
    from personavlm_cli.evals import personality as ev
    from personavlm_cli.evals.workspace import model_line, write_json

    if method not in ("evidence", "paper", "both"):
        raise PersonaError(f"unknown method '{method}' (use evidence, paper or both)")
    writers, pairs = ev.load(data)
    steps = sum(len(w.messages) for w in writers) + len(ev.GREETINGS) + 2 * len(pairs)
    env = make_env(None, **{"model.path": model})
    results = []
    try:
        methods: list[Any] = []
        if method in ("evidence", "both"):
            from personavlm_cli.adapters.text_encoder import TextEncoder

            methods.append(ev.EvidenceMethod(TextEncoder()))
        if method in ("paper", "both"):
            methods.append(ev.PaperMethod(load_model(env)))
        for m in methods:
            with progress_bar(f"personality ({m.name})", steps) as hooks:
                def step(name: str, m: Any = m) -> None:
                    hooks.describe(f"{m.name}: {name}")
                    hooks.advance(1)

                started = time.perf_counter()
                result = ev.run(writers, pairs, m, progress=step)
            result["seconds"] = round(time.perf_counter() - started, 1)
            if m.name == "paper":
                result["model"] = model_line(m.model)
            result["done_when"] = ev.done_when(result)
            results.append(result)
    finally:
        env.close()
    write_json(json_out, {"benchmark": "personality", "data": str(ev.resolve(data)), "results": results})
    _print_personality(results)


def _print_personality(results: list[dict]) -> None:
    from rich.table import Table

    def cell(v):
        return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)

    for r in results:
        table = Table(title=f"Personality ({r['method']}): high vs low writers, windows of {r['window']} messages")
        for col in ("trait", "pairs", "in order", "by 0.5", "AUC", "high", "low"):
            table.add_column(col, justify="left" if col == "trait" else "right")
        for t, v in r["traits"].items():
            table.add_row(t, str(v["pairs"]), cell(v["in_order"]), cell(v["by_half"]), cell(v["auc"]),
                          cell(v["high_mean"]), cell(v["low_mean"]))
        o = r["overall"]
        table.add_row("overall", str(o["pairs"]), cell(o["in_order"]), cell(o["by_half"]), cell(o["auc"]), "", "",
                      style="bold")
        out.print(table)
        out.print(f"neutral writers: largest drift {cell(o['neutral_max_drift'])}, largest confidence "
                  f"{cell(o['neutral_max_confidence'])}; greetings that moved a trait: {o['greetings_moved']} of "
                  f"{o['greetings']}", markup=False)
        out.print(f"off-target drift after 20 messages: mean {cell(o['off_target_mean'])}, largest "
                  f"{cell(o['off_target_max'])}", markup=False)
        out.print(f"negation pairs: {o['negation_right']} of {o['negation_plain_moved']} right "
                  f"({o['negation_reversed']} reversed; {o['negation_pairs']} pairs)", markup=False)
        out.print("done when: " + ", ".join(f"{k}: {'yes' if ok else 'NO'}" for k, ok in r["done_when"].items()),
                  markup=False)
