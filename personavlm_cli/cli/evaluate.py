"""`personavlm eval ...`: measure recall (and answers) on public benchmarks.

``eval locomo DATA`` replays each LoCoMo conversation into a fresh temporary store (the real
record file, the real Chroma index, the real MiniLM encoder) and asks it every question of
categories 1-4 that has annotated evidence. ``--retrieval-only`` measures recall@k without a
chat model; otherwise each question also goes through the real response stage and its answer is
scored with LoCoMo's token F1. Nothing touches the user's own memories.
"""

from __future__ import annotations

import json as jsonlib
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Optional

import typer

from personavlm_cli.cli.common import err, make_env, out
from personavlm_cli.core.errors import PersonaError

app = typer.Typer(help="Measure recall and answers on public benchmarks (LoCoMo, Persona-MME, PERSONAMEM).", no_args_is_help=True)

EXTRA_KS = (5, 10, 25)


def _parse_weights(signals: str | None, weight: list[str] | None, fusion: str) -> dict[str, float]:
    """Weights for recall: the chosen signals keep their weights (each 1.0 with rrf: the plain
    reciprocal-rank fusion of the reference figures), the others are off; --weight overrides."""
    from personavlm_cli.core.recall import WEIGHTS

    weights: dict[str, float] = {}
    if signals:
        chosen = [s.strip() for s in signals.split(",") if s.strip()]
        unknown = [s for s in chosen if s not in WEIGHTS]
        if unknown:
            raise PersonaError(f"unknown signal '{unknown[0]}' (use {', '.join(WEIGHTS)})")
        weights = {name: ((1.0 if fusion == "rrf" else WEIGHTS[name]) if name in chosen else 0.0) for name in WEIGHTS}
    for item in weight or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in WEIGHTS:
            raise PersonaError(f"bad --weight '{item}': use NAME=NUMBER with NAME one of {', '.join(WEIGHTS)}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise PersonaError(f"bad --weight '{item}': '{value}' is not a number") from None
    return weights


def _never_images():
    raise PersonaError("the LoCoMo evaluation has no images to embed")


@app.command("locomo")
def locomo(
    data: Annotated[Path, typer.Argument(help="LoCoMo's JSON (e.g. locomo10.json, or the development split).",
                                         show_default=False)],
    retrieval_only: Annotated[bool, typer.Option(
        "--retrieval-only", help="Measure recall only (no chat model).")] = False,
    k: Annotated[int, typer.Option("--k", min=1, help="Recall is measured over the first K distinct turns.")] = 10,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Ask at most N questions in all.")] = None,
    conversations: Annotated[Optional[str], typer.Option(
        "--conversations", help="Only these conversations, comma-separated (e.g. conv-26,conv-30).")] = None,
    json_out: Annotated[Optional[Path], typer.Option(
        "--json", help="Also write the results as JSON to this file.")] = None,
    signals: Annotated[Optional[str], typer.Option(
        "--signals", help="Use only these recall signals, comma-separated (dense, keywords, lexical, context, "
        "speaker, date, image); default: all.")] = None,
    weight: Annotated[Optional[list[str]], typer.Option(
        "--weight", help="Override one signal's weight, NAME=NUMBER (repeatable).")] = None,
    fusion: Annotated[str, typer.Option("--fusion", help="score (normalised scores, the default) or rrf (the "
                                                         "reciprocal-rank baseline).")] = "score",
    candidates: Annotated[Optional[int], typer.Option("--candidates", min=1, help="Candidate pool per signal.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="GGUF file or registered model name.")] = None,
    gpu_layers: Annotated[Optional[str], typer.Option("--gpu-layers", help="auto, all or a number.")] = None,
    context: Annotated[Optional[int], typer.Option("--context", help="Context window in tokens.")] = None,
    force_retrieve: Annotated[Optional[bool], typer.Option(
        "--force-retrieve/--model-decides", help="Override the chat's own retrieval (config chat.retrieval, "
        "retrieve-first by default): always recall up front, or let the model decide with a separate call.",
        show_default=False)] = None,
):
    """Replay LoCoMo conversations into a temporary store; score recall@k (and answers' token F1)."""
    from personavlm_cli.core import locomo as lc
    from personavlm_cli.core.recall import CANDIDATES, FUSIONS, WEIGHTS

    if fusion not in FUSIONS:
        raise PersonaError(f"unknown fusion '{fusion}' (use {' or '.join(FUSIONS)})")
    weights = _parse_weights(signals, weight, fusion)
    pool = candidates or CANDIDATES
    only = [c for c in conversations.split(",")] if conversations else None
    convs = lc.load(data, only)
    plan: list[tuple[lc.Conversation, list[lc.Question]]] = []
    left = limit
    for conv in convs:
        questions = [q for q in conv.questions if q.scored]
        if left is not None:
            questions = questions[:left]
            left -= len(questions)
        if questions:
            plan.append((conv, questions))
    total = sum(len(qs) for _c, qs in plan)
    if total == 0:
        raise PersonaError(f"no questions of categories 1-4 with evidence in {data}")

    env = None
    llm = None
    mode = None
    if not retrieval_only:
        env = make_env(None, **{"model.path": model, "model.gpu_layers": gpu_layers, "model.context": context})
        mode = ("force" if force_retrieve else "model-decides") if force_retrieve is not None \
            else env.settings["chat.retrieval"]
        with err.status("Loading the model…", spinner="dots"):
            llm = env.model()

    used = {**WEIGHTS, **weights}
    started = time.perf_counter()
    rows: list[dict] = []
    per_conv: dict[str, dict] = {}
    recall_ms: list[float] = []
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from personavlm_cli.adapters.text_encoder import TextEncoder

        encoder = TextEncoder()
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=False) as progress:
            task = progress.add_task("LoCoMo", total=total)
            for conv, questions in plan:
                progress.update(task, description=f"{conv.sample_id}: replaying")
                t0 = time.perf_counter()
                with tempfile.TemporaryDirectory(prefix="personavlm-locomo-", ignore_cleanup_errors=True) as tmp:
                    store = _temporary_store(Path(tmp), encoder)
                    try:
                        dia_of = lc.replay(conv, store)
                        replay_s = time.perf_counter() - t0
                        progress.update(task, description=f"{conv.sample_id}: asking")
                        t1 = time.perf_counter()
                        conv_rows = []
                        for q in questions:
                            row = _ask(store, conv, q, dia_of, k, pool, weights, fusion, llm, env, mode,
                                       recall_ms)
                            conv_rows.append(row)
                            progress.advance(task)
                        ask_s = time.perf_counter() - t1
                    finally:
                        store.close()
                rows.extend(conv_rows)
                per_conv[conv.sample_id] = {
                    "turns": len(dia_of), "questions": len(conv_rows),
                    "recall_at_k": lc.mean([r["recall"] for r in conv_rows]),
                    **({"f1": lc.mean([r["f1"] for r in conv_rows]),
                        "evidence_in_context": lc.mean([r["evidence_in_context"] for r in conv_rows])}
                       if llm is not None else {}),
                    "replay_s": round(replay_s, 2), "questions_s": round(ask_s, 2),
                    "total_s": round(time.perf_counter() - t0, 2),
                }
    finally:
        if env is not None:
            env.close()

    result = {
        "benchmark": "locomo",
        "data": str(data),
        "conversations": list(per_conv),
        "k": k,
        "questions": len(rows),
        "recall_at_k": _rounded(lc.by_category(rows, "recall")),
        "recall_at": {str(x): _rounded(lc.by_category(rows, f"recall@{x}")) for x in sorted({*EXTRA_KS, k})},
        "signals": [name for name, w in used.items() if w > 0] if fusion == "score" else
                   [name for name in ("dense", "keywords", "lexical", "image") if used.get(name, 0) > 0],
        "signals_seen": sorted({name for row in rows for name in row.pop("_signals")}),
        "weights": used,
        "fusion": fusion,
        "candidates": pool,
        "mode": "retrieval-only" if retrieval_only else "answer",
        "timings": {
            "total_s": round(time.perf_counter() - started, 2),
            "recall_ms_mean": round(statistics.fmean(recall_ms), 2) if recall_ms else None,
            "recall_ms_p95": round(_percentile(recall_ms, 95), 2) if recall_ms else None,
            "per_conversation": {c: {x: v[x] for x in ("replay_s", "questions_s", "total_s")}
                                 for c, v in per_conv.items()},
        },
        "per_conversation": {c: {x: (round(y, 4) if isinstance(y, float) else y) for x, y in v.items()
                                 if x not in ("replay_s", "questions_s", "total_s")} for c, v in per_conv.items()},
        "items": rows,
    }
    if llm is not None:
        result["f1"] = _rounded(lc.by_category(rows, "f1"))
        result["evidence_in_context"] = _rounded(lc.by_category(rows, "evidence_in_context"))
        tokens = [r["prompt_tokens"] for r in rows if r.get("prompt_tokens")]
        result["prompt_tokens_mean"] = round(statistics.fmean(tokens), 1) if tokens else None
        result["retrieval"] = mode
        result["model"] = _model_line(llm)
    _write_json(json_out, result)
    _print_table(result, llm is not None)


def _temporary_store(path: Path, encoder):
    from personavlm_cli.adapters.vectors import VectorIndex
    from personavlm_cli.core.store import MemoryStore

    return MemoryStore(path, text_encoder=lambda: encoder, image_encoder=_never_images,
                       vectors=lambda: VectorIndex(path=path / "chroma"))


def _ask(store, conv, q, dia_of, k, pool, weights, fusion, llm, env, mode, recall_ms) -> dict:
    from personavlm_cli.core import locomo as lc
    from personavlm_cli.core.recall import Query, recall

    depth = max(k, *EXTRA_KS)
    t = time.perf_counter()
    hits = recall(store, Query(text=q.question), k=depth, candidates=pool, weights=weights, fusion=fusion)
    recall_ms.append((time.perf_counter() - t) * 1000)
    ranked = lc.ranked_turns(hits, dia_of, store.records)
    row = {"_signals": {name for h in hits[:k] for name in h.signals},
           "conversation": conv.sample_id, "index": q.index, "category": q.category, "question": q.question,
           "evidence": q.evidence, "found": ranked[:k], "recall": lc.recall_at_k(ranked, q.evidence, k)}
    for x in sorted({*EXTRA_KS, k}):
        row[f"recall@{x}"] = lc.recall_at_k(ranked, q.evidence, x)
    if llm is not None:
        prediction, used = _answer(store, conv, q, llm, env, pool, weights, fusion, mode)
        in_prompt = lc.ranked_turns(used, dia_of, store.records)
        usage = getattr(llm, "last_usage", None) or {}
        row.update(answer=q.answer, prediction=prediction, f1=lc.token_f1(prediction, q.answer or "", q.category),
                   answer_used=[dia_of.get(m.id) for m in used if dia_of.get(m.id)],
                   evidence_in_context=lc.recall_at_k(in_prompt, q.evidence, len(in_prompt) or 1),
                   prompt_tokens=usage.get("prompt_tokens"))
    return row


def _answer(store, conv, q, llm, env, pool, weights, fusion, mode) -> tuple[str, list]:
    """Ask the question through the chat's response stage (same mode and defaults), a day after the
    last session; nothing is stored, so one question never becomes memory for the next."""
    from personavlm_cli.core.assistant import Assistant
    from personavlm_cli.core.reasoning import Reasoning, ResponseStage
    from personavlm_cli.core.recall import recall

    s = env.settings
    from personavlm_cli.core.capability import choose_prompt_style

    assistant = Assistant(store, llm, conv.speaker_a, profile=s["model.prompt_profile"],
                          vision=getattr(llm, "vision", False),
                          prompt_style=choose_prompt_style(s["model.prompt_style"], llm))
    at = conv.last_time + timedelta(days=1)
    ctx = assistant.context(q.question, at, [], [])
    stage = ResponseStage(llm, assistant.profile,
                          lambda query, n: recall(store, query, k=n, candidates=pool, weights=weights, fusion=fusion),
                          assistant._expand,
                          model_search=s["chat.model_search"] and assistant.profile.style == "full")
    reasoning = Reasoning()
    pieces = stage.respond(ctx, reasoning, mode=mode, max_tokens=min(int(s["model.max_tokens"]), 128),
                           temperature=0.0)
    return "".join(pieces).strip(), list(reasoning.used)


def _model_line(llm) -> str:
    info = getattr(llm, "load_info", None)
    return info.summary_line() if info is not None else type(llm).__name__


def _write_json(path: Path | None, result: dict) -> None:
    if path is None:
        return
    try:
        path.write_text(jsonlib.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise PersonaError(f"cannot write {path}: {exc.strerror or exc}") from None


def _rounded(values: dict) -> dict:
    return {key: (round(v, 4) if isinstance(v, float) else v) for key, v in values.items()}


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def _print_table(result: dict, answered: bool) -> None:
    from rich.table import Table

    from personavlm_cli.core.locomo import CATEGORY_NAMES

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
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON to this file.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="GGUF file or registered model name.")] = None,
    gpu_layers: Annotated[Optional[str], typer.Option("--gpu-layers", help="auto, all or a number.")] = None,
    context: Annotated[Optional[int], typer.Option("--context", help="Context window in tokens.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Most tokens in one answer.")] = 96,
):
    """Do they learn true facts and use them? Replays scripted people through the chat turn with learning,
    then asks about each fact: learnt, truthful, grounded and answered (docs/benchmarks.md)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from personavlm_cli.adapters.text_encoder import TextEncoder
    from personavlm_cli.core.assistant import Assistant
    from personavlm_cli.core.capability import choose_extractor, choose_prompt_style
    from personavlm_cli.core.update import UpdateStage
    from personavlm_cli.evals import facts as fx

    people = fx.load(data)
    env = make_env(None, **{"model.path": model, "model.gpu_layers": gpu_layers, "model.context": context})
    s = env.settings
    results = []
    started = time.perf_counter()
    try:
        with err.status("Loading the model…", spinner="dots"):
            llm = env.model()
        extractor = choose_extractor(s["memory.extractor"], llm)
        encoder = TextEncoder()
        steps = sum(sum(len(x["messages"]) for x in p.sessions) + len(p.facts) for p in people)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=False) as progress:
            task = progress.add_task("facts", total=steps)
            for person in people:
                with tempfile.TemporaryDirectory(prefix="personavlm-facts-", ignore_cleanup_errors=True) as tmp:
                    store = _temporary_store(Path(tmp), encoder)
                    try:
                        def make(store=store, person=person):
                            a = Assistant(store, llm, person.user, profile=s["model.prompt_profile"],
                                          session_gap_minutes=s["chat.session_gap_minutes"],
                                          recent_turns=s["chat.recent_turns"], vision=getattr(llm, "vision", False),
                                          mode=s["chat.retrieval"], model_search=s["chat.model_search"],
                                          answer_tokens=max_tokens,
                                          prompt_style=choose_prompt_style(s["model.prompt_style"], llm))
                            return a, UpdateStage(store, llm, person.user, a.model_lock, extractor=extractor)

                        results.append(fx.run_person(person, make, {"max_tokens": max_tokens, "temperature": 0.0},
                                                     progress=lambda u: progress.update(task, advance=1,
                                                                                        description=u)))
                    finally:
                        store.close()
    finally:
        env.close()
    result = {"benchmark": "facts", "data": str(data), "people": len(people), "extractor": extractor,
              "retrieval": s["chat.retrieval"], "seconds": round(time.perf_counter() - started, 1),
              **fx.summarize(results)}
    result["model"] = _model_line(llm)
    _write_json(json_out, result)
    from rich.table import Table

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
