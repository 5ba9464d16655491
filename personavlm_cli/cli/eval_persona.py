"""`personavlm eval persona-mme` and `personavlm eval personamem`: the whole assistant on the
personalisation benchmarks of the paper (§6 and §9.2).

Each user's history is replayed into a fresh temporary store with the gold assistant replies (the
update stage runs, the chat model does not answer), then each question is asked at its own time
through the full response stage and read by a strict answer parser. Results go to a JSONL file
item by item (``--resume FILE``, or next to ``--json OUT``), so an interrupted run resumes where it
stopped. Nothing touches the user's own memories. The evaluations are ``evals/persona_mme.py`` and
``evals/personamem.py``; these commands parse options, build the model and render the tables.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from personavlm_cli.cli.common import err, make_env, out
from personavlm_cli.cli.evaluate import load_model, progress_bar
from personavlm_cli.core.errors import PersonaError

_IMAGE_ENCODERS: dict[tuple, object] = {}  # CLIP is slow to build: one per process and settings

DataArg = Annotated[Path, typer.Argument(help="The benchmark's folder.", show_default=False)]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N questions.")]
JsonOpt = Annotated[Path | None, typer.Option(
    "--json", help="Write the results as JSON to OUT (items also go, one per line, to OUT with .jsonl).")]
ResumeOpt = Annotated[Path | None, typer.Option(
    "--resume", help="Append each result to this JSONL file and skip the items already in it.")]
NoUpdateOpt = Annotated[bool, typer.Option(
    "--no-update", help="Replay the history without the update stage (much faster with a CPU model).")]
ForceOpt = Annotated[bool, typer.Option(
    "--force-retrieve/--model-decides", help="Always search memory before answering, or let the model decide "
    "as in chat (default).")]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="GGUF file or registered model name.")]
GpuOpt = Annotated[str | None, typer.Option("--gpu-layers", help="auto, all or a number.")]
NCtxOpt = Annotated[int | None, typer.Option("--n-ctx", help="The model's context window in tokens.")]
MaxTokOpt = Annotated[int, typer.Option("--max-tokens", min=1, help="Most tokens in one answer.")]


def persona_mme(
    data: DataArg,
    context: Annotated[str, typer.Option("--context", help="32k (samples/50 and 100), 128k (samples/200 and "
                                                          "500), or all.")] = "32k",
    limit: LimitOpt = None,
    tasks: Annotated[str | None, typer.Option(
        "--tasks", help="Only these tasks, comma-separated: VDR, SIR, EII, IIR, LPR, IEA, IPR, BPR, LGT, RR, RDC, "
        "TED, GNS, PA (alignment).")] = None,
    json_out: JsonOpt = None,
    resume: ResumeOpt = None,
    no_update: NoUpdateOpt = False,
    force_retrieve: ForceOpt = False,
    model: ModelOpt = None,
    gpu_layers: GpuOpt = None,
    n_ctx: NCtxOpt = None,
    max_tokens: MaxTokOpt = 64,
):
    """Persona-MME: replay each user's history, ask each question in situ; accuracy per task (Table 4)."""
    from personavlm_cli.evals import persona_mme as mme

    chosen = mme.mme_tasks(tasks)
    questions = mme.load_persona_mme(data, context, chosen)
    if not questions:
        raise PersonaError(f"no Persona-MME questions for context {context} and tasks {', '.join(chosen)} in {data}")
    plan = questions[:limit] if limit else questions
    items = [item for q in plan for item in q.items(chosen)]

    def run(log, settings, progress):
        return mme.run_persona_mme(plan, chosen, log, settings, progress)

    result = _evaluate("persona-mme", data, context, items, run, mme.summarize_mme, json_out, resume, no_update,
                       force_retrieve, model, gpu_layers, n_ctx, max_tokens,
                       extra={"questions": len(plan), "tasks_selected": chosen})
    _mme_table(result)


def personamem(
    data: DataArg,
    context: Annotated[str, typer.Option(
        "--context", help="Which files: 32k, 128k or 1M (questions_<size>.csv, shared_contexts_<size>.jsonl)."
    )] = "32k",
    limit: LimitOpt = None,
    types: Annotated[str | None, typer.Option(
        "--types", help="Only these question types, comma-separated (as in the CSV's question_type).")] = None,
    json_out: JsonOpt = None,
    resume: ResumeOpt = None,
    no_update: NoUpdateOpt = False,
    force_retrieve: ForceOpt = False,
    model: ModelOpt = None,
    gpu_layers: GpuOpt = None,
    n_ctx: NCtxOpt = None,
    max_tokens: MaxTokOpt = 64,
):
    """PERSONAMEM: replay each shared context up to each question, ask it there; accuracy per question type."""
    from personavlm_cli.evals import personamem as pm

    questions = pm.load_personamem(data, context, types.split(",") if types else None)
    if not questions:
        raise PersonaError(f"no questions in {data}/questions_{context}.csv")
    plan = questions[:limit] if limit else questions
    items = [q.item() for q in plan]

    def run(log, settings, progress):
        return pm.run_personamem(data, context, plan, log, settings, progress)

    result = _evaluate("personamem", data, context, items, run, pm.summarize_personamem, json_out, resume, no_update,
                       force_retrieve, model, gpu_layers, n_ctx, max_tokens, extra={"questions": len(plan)})
    _personamem_table(result)


# --- shared ---------------------------------------------------------------------------------------


def _model_label(env) -> str:
    s = env.settings
    if s["model.kind"] == "openai-compatible":
        return " ".join(x for x in (s["model.url"], s["model.name"]) if x)
    path, _mmproj = env.model_path()
    return Path(path).name


def _image_encoder_factory(settings):
    key = (settings["clip.weights"], settings["clip.model"])

    def build():
        if key not in _IMAGE_ENCODERS:
            from personavlm_cli.cli.env import _image_encoder

            _IMAGE_ENCODERS[key] = _image_encoder(settings)
        return _IMAGE_ENCODERS[key]

    return build


def _evaluate(benchmark, data, context, items, run, summarize, json_out, resume, no_update, force_retrieve,
              model, gpu_layers, n_ctx, max_tokens, extra) -> dict:
    from personavlm_cli.evals.replay import RunSettings, round_stats
    from personavlm_cli.evals.scoring import ResultLog, results_path
    from personavlm_cli.evals.workspace import write_json

    env = make_env(None, **{"model.path": model, "model.gpu_layers": gpu_layers, "model.context": n_ctx})
    header = {"benchmark": benchmark, "model": _model_label(env), "update": not no_update,
              "force_retrieve": force_retrieve, "context": context, "max_tokens": max_tokens}
    path = results_path(json_out, resume)
    log = ResultLog(path, header)
    todo = sum(1 for item in items if item["key"] not in log.done)
    started = time.perf_counter()
    stats: dict = {}
    try:
        if todo:
            from personavlm_cli.adapters.text_encoder import TextEncoder

            def model_factory():
                return load_model(env) if env._model is None else env.model()  # the spinner once

            s = env.settings
            settings = RunSettings(
                model_factory=model_factory, text_encoder=TextEncoder(), image_encoder=_image_encoder_factory(s),
                update=not no_update, force_retrieve=force_retrieve,
                sampling={"max_tokens": max_tokens, "temperature": 0.0}, prompt_profile=s["model.prompt_profile"],
                recent_turns=s["chat.recent_turns"], session_gap_minutes=s["chat.session_gap_minutes"])
            if len(log.done):
                err.print(f"[dim]Resuming from {path}: {len(items) - todo} of {len(items)} items already "
                          "answered.[/dim]")
            try:
                with progress_bar(benchmark, todo) as hooks:
                    stats = run(log, settings, hooks)
            except KeyboardInterrupt:
                if path is not None:
                    err.print(f"[yellow]Interrupted: {len(log.done)} items are saved in {path}; run the same "
                              "command again to resume.[/yellow]")
                raise
        else:
            err.print(f"[dim]All {len(items)} items are already answered in {path}.[/dim]")
        info = getattr(env._model, "load_info", None)
    finally:
        env.close()

    rows = [log.done[item["key"]] for item in items if item["key"] in log.done]
    result = {
        "benchmark": benchmark,
        "data": str(data),
        "context": context,
        "model": header["model"],
        **({"model_load": info.summary_line()} if info is not None else {}),
        "update": not no_update,
        "force_retrieve": force_retrieve,
        "max_tokens": max_tokens,
        **extra,
        "items": len(rows),
        "parser": "strict (evals/scoring.py parse_choice); reference_accuracy: the reference code's "
                  "first-')' rule",
        **summarize(rows),
        "timings": {"total_s": round(time.perf_counter() - started, 2), **round_stats(stats)},
        "results_file": str(path) if path is not None else None,
        "rows": rows,
    }
    write_json(json_out, result)
    return result


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _row(table, label, name, t, style=None):
    table.add_row(label, name, str(t["items"]), str(t["correct"]), str(t["unparsed"]), str(t["errors"]),
                  _pct(t["accuracy"]), _pct(t["reference_accuracy"]), style=style)


def _table(title: str):
    from rich.table import Table

    table = Table(title=title)
    for name, justify in (("task", "left"), ("", "left"), ("items", "right"), ("correct", "right"),
                          ("unparsed", "right"), ("errors", "right"), ("accuracy %", "right"),
                          ("ref. parser %", "right")):
        table.add_column(name, justify="right" if justify == "right" else "left")
    return table


def _footer(result: dict) -> None:
    t = result["timings"]
    parts = [f"{t['total_s']} s in all"]
    if t.get("asked"):
        parts.append(f"{t['asked']} asked ({t['ask_s']} s)")
    if t.get("skipped"):
        parts.append(f"{t['skipped']} already answered")
    if t.get("replayed_turns"):
        parts.append(f"{t['replayed_turns']} turns replayed ({t['replay_s']} s"
                     + (f", update stage {t['update_s']} s" if result["update"] else ", no update stage") + ")")
    out.print("; ".join(parts))
    if result.get("results_file"):
        out.print(f"items: {result['results_file']}")


def _mme_table(result: dict) -> None:
    table = _table(f"Persona-MME {result['context']}: {result['items']} items from {result['questions']} questions "
                   f"({result['model']})")
    for abbr, t in result["tasks"].items():
        _row(table, abbr, t["name"], t)
    if result["alignment"]["items"] and result["overall_without_pa"]["items"]:
        _row(table, "w/o PA", "overall without alignment", result["overall_without_pa"], style="bold")
    _row(table, "overall", "", result["overall"], style="bold")
    out.print(table)
    _footer(result)


def _personamem_table(result: dict) -> None:
    table = _table(f"PERSONAMEM {result['context']}: {result['items']} questions ({result['model']})")
    for qtype, t in result["types"].items():
        _row(table, t["label"], qtype, t)
    _row(table, "overall", "", result["overall"], style="bold")
    out.print(table)
    _footer(result)
