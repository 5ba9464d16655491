"""The `bench` harness: how much each section does (`plan_for`), running the chosen sections, each in its own
temporary store or home (`run`), the machine, the figures and the product's bars (`BARS`, `check_bars`)."""

from __future__ import annotations

import os
import platform
import random
import resource
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from personavlm_cli.core.errors import PersonaError
from personavlm_cli.evals.bench.clip import bench_clip
from personavlm_cli.evals.bench.common import Host
from personavlm_cli.evals.bench.forget import bench_forget
from personavlm_cli.evals.bench.generation import bench_generation
from personavlm_cli.evals.bench.recall import bench_recall
from personavlm_cli.evals.bench.replay import bench_replay
from personavlm_cli.evals.bench.session import bench_session
from personavlm_cli.evals.bench.session_remote import bench_session_remote
from personavlm_cli.evals.bench.startup import bench_startup
from personavlm_cli.evals.bench.ttft import bench_ttft
from personavlm_cli.evals.bench.update import bench_update
from personavlm_cli.evals.workspace import scratch

BARS = {
    "startup_help_s": ("< 0.5 s", lambda v: v < 0.5),
    "startup_memory_list_s": ("< 0.5 s", lambda v: v < 0.5),
    "startup_help_vs_typer": ("<= 1.2", lambda v: v <= 1.2),
    "pre_token_ms_10000": ("< 50 ms", lambda v: v < 50),
    "pre_token_ms_100000": ("< 150 ms", lambda v: v < 150),
    "chat_vs_raw_tokens_per_s": (">= 0.95", lambda v: v >= 0.95),
    "post_answer_wait_ms": ("no wait (< 100 ms)", lambda v: v < 100),
    "ttft_cold_ratio_no_update": ("<= 1.15", lambda v: v <= 1.15),
    "ttft_warm_ratio_no_update": ("<= 0.6", lambda v: v <= 0.6),
    "ttft_evidence_in_context_no_update": (">= 0.70", lambda v: v >= 0.70),
    # A scripted session with learning on (evals/bench/session.py), per message against raw cold.
    "session_ratio_median_16": ("<= 0.5", lambda v: v <= 0.5),
    "session_ratio_worst_16": ("<= 1.0", lambda v: v <= 1.0),
    "session_next_chat_ratio_16": ("<= 1.2", lambda v: v <= 1.2),
    "session_ratio_median_60": ("<= 0.5", lambda v: v <= 0.5),
    "session_ratio_worst_60": ("<= 1.0", lambda v: v <= 1.0),
    "session_next_chat_ratio_60": ("<= 1.2", lambda v: v <= 1.2),
}


def plan_for(quick: bool, sizes: list[int] | None = None, repeat: int | None = None,
             questions: int | None = None, lengths: list[int] | None = None) -> dict[str, Any]:
    """How much each section does: the full run, or ``quick`` (the CI-sized one)."""
    plan: dict[str, Any] = {
        "sizes": sizes or ([1000, 10000] if quick else [1000, 10000, 100000]),
        "startup_runs": repeat or (5 if quick else 10),
        "recall_queries": 20 if quick else 40,
        "pretoken_messages": 10 if quick else 20,
        "pool": 400 if quick else 1000,
        "gen_tokens": 128 if quick else 192,
        "gen_runs": 8 if quick else 12,
        "clip_images": 5 if quick else 10,
        "replay_rounds": 100 if quick else 400,
        "update_turns": 2 if quick else 4,
        "forgets": 3 if quick else 5,
        "ttft_questions": questions or (10 if quick else 24),
        "session_lengths": lengths or ([16] if quick else [16, 60]),
        "session_pause_s": 2.0,
        "session_answer_tokens": 48,
    }
    if any(s < 1 for s in plan["sizes"]):
        raise PersonaError("--sizes must be positive numbers of memories")
    if any(n < 2 for n in plan["session_lengths"]):
        raise PersonaError("--messages must be session lengths of 2 messages or more")
    return plan


def run(host: Host, plan: dict, chosen: set[str], quick: bool, locomo: Path | None = None) -> dict:
    """Measure the ``chosen`` sections (startup, recall, pretoken, forget, generation, clip, replay, update,
    ttft, session), each in its own temporary store or home; the figures and the bars."""
    started = time.perf_counter()
    results: dict = {"machine": machine(), "quick": quick, "plan": plan, "sections": {}}
    rng = random.Random(7)
    with scratch("personavlm-bench-") as tmp:
        work = Path(tmp)
        runs: list[tuple[str, Callable[[], dict]]] = [
            ("startup", lambda: bench_startup(work / "home", plan["startup_runs"])),
            ("recall", lambda: bench_recall(host, work / "big", plan, rng)),
            ("forget", lambda: bench_forget(host, work / "forget", plan, rng)),
            ("clip", lambda: bench_clip(host, work / "images", plan["clip_images"])),
            ("replay", lambda: bench_replay(work / "replay", plan["replay_rounds"], rng)),
            ("generation", lambda: bench_generation(host, work / "chat", plan, rng)),
            ("update", lambda: bench_update(host, work / "update", plan, rng)),
            ("ttft", lambda: bench_ttft(host, work / "ttft", plan, locomo)),
            ("session", lambda: (bench_session_remote if plan.get("session_remote") else bench_session)(
                host, work / "session", plan)),
        ]
        for name, fn in runs:
            wanted = name in chosen or (name == "recall" and "pretoken" in chosen)
            if not wanted:
                continue
            host.say(f"[bold]{name}[/bold] …")
            t = time.perf_counter()
            results["sections"][name] = fn()
            results["sections"][name]["section_s"] = round(time.perf_counter() - t, 1)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    results["peak_memory_mb"] = round(usage.ru_maxrss / 1024, 1)
    results["peak_memory_children_mb"] = round(children.ru_maxrss / 1024, 1)
    results["total_s"] = round(time.perf_counter() - started, 1)
    results["bars"] = check_bars(results)
    return results


# --- the machine ----------------------------------------------------------------------------------




def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor()
    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    versions = {}
    for mod in ("llama_cpp", "chromadb", "onnxruntime", "torch", "open_clip"):
        try:
            from importlib.metadata import version

            versions[mod] = version({"llama_cpp": "llama_cpp_python", "open_clip": "open_clip_torch"}.get(mod, mod))
        except Exception:  # not installed
            pass
    return {"nproc": usable, "cpu_count": os.cpu_count(), "cpu": cpu or "unknown", "ram_gb": ram,
            "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions,
            "date": datetime.now().strftime("%Y-%m-%d %H:%M")}


# --- statistics -----------------------------------------------------------------------------------




def figures(results: dict) -> dict:
    s = results["sections"]
    f: dict = {}
    if "startup" in s:
        f["startup_python_s"] = s["startup"]["python"]["median_s"]
        f["startup_help_s"] = s["startup"]["help"]["median_s"]
        if "typer_help" in s["startup"]:
            f["startup_typer_help_s"] = s["startup"]["typer_help"]["median_s"]
            f["startup_help_vs_typer"] = s["startup"]["help_vs_typer"]
        f["startup_memory_list_s"] = s["startup"]["memory_list"]["median_s"]
    for size, entry in (s.get("recall") or {}).get("sizes", {}).items():
        f[f"recall_p50_ms_{size}"] = entry["recall"]["p50_ms"]
        f[f"recall_p95_ms_{size}"] = entry["recall"]["p95_ms"]
        if "pre_token" in entry:
            f[f"pre_token_ms_{size}"] = entry["pre_token"]["total"]["p50_ms"]
            f[f"pre_token_p95_ms_{size}"] = entry["pre_token"]["total"]["p95_ms"]
    for size, entry in (s.get("forget") or {}).get("sizes", {}).items():
        f[f"forget_ms_{size}"] = entry["p50_ms"]
    g = s.get("generation") or {}
    if g.get("ratio") is not None:
        f["chat_tokens_per_s"] = g["chat_tokens_per_s"]
        f["raw_tokens_per_s"] = g["raw_tokens_per_s"]
        f["chat_vs_raw_tokens_per_s"] = g["ratio"]
        f["chat_vs_raw_tokens_per_cpu_s"] = g.get("cpu_ratio")
        f["chat_path_overhead_us_per_token"] = g.get("chat_path_overhead_us_per_token")
    if "clip" in s:
        f["clip_ms_per_image"] = s["clip"]["per_image"]["p50_ms"]
    if "replay" in s:
        f["replay_turns_per_s"] = s["replay"]["messages_per_s"]
    u = s.get("update") or {}
    if u:
        f["update_turn_job_s"] = u["turn_job_s"]
        f["update_session_job_s"] = u["session_job_s"]
        f["post_answer_wait_ms"] = u["post_answer_wait_ms"]
        f["delay_from_running_update_s"] = u["delay_from_running_update_s"]
    t = s.get("ttft") or {}
    for mode in ("no_update", "learning"):
        m = t.get(mode)
        if m:
            f[f"ttft_cold_ratio_{mode}"] = m["cold_ratio_median"]
            f[f"ttft_warm_ratio_{mode}"] = m["warm_ratio_median"]
            f[f"ttft_cold_chat_s_{mode}"] = m["cold_chat_s_median"]
            f[f"ttft_warm_chat_s_{mode}"] = m["warm_chat_s_median"]
            f[f"ttft_evidence_in_context_{mode}"] = m["evidence_in_context"]
    for n, m in ((s.get("session") or {}).get("lengths") or {}).items():
        f[f"session_ratio_median_{n}"] = m["ratio_median"]
        f[f"session_ratio_p90_{n}"] = m["ratio_p90"]
        f[f"session_ratio_worst_{n}"] = m["ratio_worst"]
        f[f"session_next_chat_ratio_{n}"] = m["next_chat_ratio"]
        f[f"session_reused_share_{n}"] = m["reused_share_median"]
    f["peak_memory_mb"] = results.get("peak_memory_mb")
    return f


def check_bars(results: dict) -> dict:
    f = figures(results)
    return {key: {"value": f[key], "bar": bar, "met": bool(ok(f[key]))}
            for key, (bar, ok) in BARS.items() if f.get(key) is not None}
