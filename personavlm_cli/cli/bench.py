"""`personavlm bench`: how fast the assistant is on this machine, against the product's bars.

A thin wrapper: it parses the options, hands the harness (``evals/bench/``, where each measure is
described) what only the composition root may build, and renders the figures as a table.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from personavlm_cli.cli.common import err, make_env, out
from personavlm_cli.core.errors import PersonaError

if TYPE_CHECKING:
    from rich.console import JustifyMethod

SECTIONS = ("startup", "recall", "pretoken", "forget", "generation", "clip", "replay", "update", "ttft", "session")


def bench(
    quick: Annotated[bool, typer.Option("--quick", help="CI-sized run: 1k and 10k memories, fewer repeats "
                                                        "(within 10 minutes on 2 cores).")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures as JSON here.")] = None,
    sizes: Annotated[str | None, typer.Option(
        "--sizes", help="Store sizes for recall, comma-separated (default 1000,10000,100000; --quick: "
        "1000,10000).")] = None,
    repeat: Annotated[int | None, typer.Option("--repeat", min=1, help="Runs per start-up command.")] = None,
    only: Annotated[str | None, typer.Option(
        "--only", help=f"Only these sections, comma-separated: {', '.join(SECTIONS)}.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="GGUF file or registered model name.")] = None,
    gpu_layers: Annotated[str | None, typer.Option("--gpu-layers", help="auto, all or a number.")] = None,
    locomo: Annotated[Path | None, typer.Option(
        "--locomo", help="LoCoMo JSON for the ttft section (a long real history; e.g. the development split).")] = None,
    questions: Annotated[int | None, typer.Option("--questions", min=1, help="ttft: questions asked.")] = None,
    messages: Annotated[str | None, typer.Option(
        "--messages", help="session: session lengths in messages, comma-separated (default 16,60; --quick: 16).")] = None,
    remote: Annotated[bool, typer.Option(
        "--remote", help="session: the chat model on llama-cpp-python's server, started on loopback with the "
        "same GGUF, against that server cold.")] = False,
):
    """Measure start-up, recall, memory work before the first token, forgetting, generation, CLIP, replay,
    updates, and the first token of every message of a session with learning on."""
    from personavlm_cli.evals.bench import harness
    from personavlm_cli.evals.workspace import write_json

    chosen = _sections(only)
    try:
        wanted = [int(s) for s in sizes.split(",")] if sizes else None
    except ValueError:
        raise PersonaError(f"--sizes must be numbers of memories, comma-separated (not '{sizes}')") from None
    try:
        lengths = [int(m) for m in messages.split(",")] if messages else None
    except ValueError:
        raise PersonaError(f"--messages must be numbers of messages, comma-separated (not '{messages}')") from None
    plan = harness.plan_for(quick, wanted, repeat, questions, lengths)
    plan["session_remote"] = remote
    env = make_env(None, **{"model.path": model, "model.gpu_layers": gpu_layers})
    try:
        results = harness.run(_host(env), plan, chosen, quick, locomo)
    finally:
        env.close()
    write_json(json_out, results)
    print_table(results)


def _sections(only: str | None) -> set[str]:
    if not only:
        return set(SECTIONS)
    chosen = {s.strip() for s in only.split(",") if s.strip()}
    unknown = chosen - set(SECTIONS)
    if unknown:
        raise PersonaError(f"unknown section '{sorted(unknown)[0]}' (use {', '.join(SECTIONS)})")
    return chosen


def _host(env):
    from personavlm_cli.cli.chat import ChatSession
    from personavlm_cli.cli.env import _image_encoder
    from personavlm_cli.evals.bench.common import Host

    @contextmanager
    def user_env(overrides: dict, model):
        """The benchmark user's environment (under PERSONAVLM_HOME as set), sharing the loaded model."""
        tenv = make_env("bench", **overrides)
        tenv._model = model
        try:
            yield tenv
        finally:
            tenv._model = None  # the model is the caller's: closing this environment leaves it loaded
            tenv.close()

    return Host(env=env, image_encoder=lambda: _image_encoder(env.settings), user_env=user_env,
                chat_session=lambda tenv, **kw: ChatSession(tenv, plain=True, **kw), say=err.print,
                loading=lambda: err.status("Loading the model…", spinner="dots"))


# --- the table ------------------------------------------------------------------------------------


LABELS = {
    "startup_python_s": ("python -c pass (floor)", "s"),
    "startup_help_s": ("personavlm --help", "s"),
    "startup_typer_help_s": ("a minimal Typer app's --help", "s"),
    "startup_help_vs_typer": ("personavlm --help / the minimal Typer app's (median of pairs)", ""),
    "startup_memory_list_s": ("personavlm memory list", "s"),
    "chat_tokens_per_s": ("chat path decode", "tok/s"),
    "raw_tokens_per_s": ("raw llama-cpp-python decode", "tok/s"),
    "chat_vs_raw_tokens_per_s": ("chat / raw tokens per second (median of pairs)", ""),
    "chat_vs_raw_tokens_per_cpu_s": ("chat / raw tokens per CPU second", ""),
    "chat_path_overhead_us_per_token": ("chat path's own cost per token", "µs"),
    "clip_ms_per_image": ("CLIP per image", "ms"),
    "replay_turns_per_s": ("replay: turns stored (+ embedded), no model", "turns/s"),
    "update_turn_job_s": ("update stage, per turn", "s"),
    "update_session_job_s": ("update stage, per session", "s"),
    "post_answer_wait_ms": ("wait after an answer (update queued)", "ms"),
    "delay_from_running_update_s": ("answer delay while an update runs", "s"),
    "peak_memory_mb": ("peak memory (this process)", "MB"),
    "ttft_cold_ratio_no_update": ("first token, new session: chat / raw (median)", ""),
    "ttft_warm_ratio_no_update": ("first token, follow-up: chat / raw cold (median)", ""),
    "ttft_cold_ratio_learning": ("... with the update thread working: cold", ""),
    "ttft_warm_ratio_learning": ("... with the update thread working: follow-up", ""),
    "ttft_evidence_in_context_no_update": ("evidence turns in the answer's prompt (LoCoMo)", ""),
}


def _label(key: str) -> tuple[str, str]:
    if key in LABELS:
        return LABELS[key]
    for prefix, text in (("session_ratio_median_", "session of {} messages: first token chat / raw cold, median"),
                         ("session_ratio_p90_", "session of {} messages: chat / raw, p90"),
                         ("session_ratio_worst_", "session of {} messages: chat / raw, worst after the first"),
                         ("session_next_chat_ratio_", "session of {}: next chat's first message (pending work)"),
                         ("session_reused_share_", "session of {}: prompt tokens reused (median share)")):
        if key.startswith(prefix):
            return text.format(key[len(prefix):]), ""
    for prefix, text in (("recall_p50_ms_", "recall p50 at {}"), ("recall_p95_ms_", "recall p95 at {}"),
                         ("pre_token_ms_", "before first token p50 at {}"),
                         ("pre_token_p95_ms_", "before first token p95 at {}"),
                         ("forget_ms_", "memory forget (one memory) p50 at {}")):
        if key.startswith(prefix):
            n = int(key[len(prefix):])
            return text.format(f"{n // 1000}k" if n >= 1000 else n), "ms"
    return key, ""


def print_table(results: dict) -> None:
    from rich.table import Table

    from personavlm_cli.evals.bench.harness import figures

    m = results["machine"]
    table = Table(title=f"personavlm bench{' --quick' if results['quick'] else ''}: {m['nproc']} cores, {m['cpu']}, "
                        f"{m['ram_gb']} GB")
    columns: tuple[tuple[str, JustifyMethod], ...] = (("measure", "left"), ("value", "right"), ("bar", "left"), ("", "left"))
    for name, justify in columns:
        table.add_column(name, justify=justify)
    bars = results["bars"]
    for key, value in figures(results).items():
        if value is None:
            continue
        label, unit = _label(key)
        bar = bars.get(key)
        table.add_row(label, f"{value} {unit}".strip(), bar["bar"] if bar else "",
                      ("[green]met[/green]" if bar["met"] else "[red]missed[/red]") if bar else "")
    out.print(table)
    out.print(f"{results['total_s']} s in all")
