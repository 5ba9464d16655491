"""The performance harness behind `personavlm bench`: how fast the assistant is on this machine, against
the product's bars.

Measured (each in its own temporary store or home; nothing touches the user's memories):

- start-up: wall time of ``personavlm --help`` and ``personavlm memory list`` in a child process
  (median of N), with a bare ``python -c pass`` as the interpreter's floor;
- recall latency (p50/p95, the query's embedding included) at 1k, 10k and 100k memories. The stores
  are built fast: records go straight into the record file and vectors straight into Chroma; the
  texts are varied, realistic chat lines, and the vectors are real MiniLM embeddings of a pool of
  such lines, reused with a little noise beyond the pool (embedding 100k texts would take minutes);
- memory work before the first token at 10k and 100k: storing and embedding the message, the
  recent context, recall, and prompt assembly, exactly as ``conversation.respond`` does them, without
  the model;
- generation speed through the chat path (``conversation.respond``'s stream) against raw
  llama-cpp-python on the same model, settings and prompt (decode tokens/s, and their ratio);
- CLIP time per image; replay throughput (turns stored per second, without the chat model); the
  update stage's time per turn and per session with the chat model, the wait it adds before the
  next prompt, and the delay it causes to an answer asked while it runs;
- time to the first token of every message of a scripted session with learning on, against raw
  llama-cpp-python cold on the same prompt (``evals/session_bench.py``);
- peak memory (``resource.getrusage``).

``run`` measures the chosen sections and judges the bars; what only the composition root may build
(the user's environment, CLIP from the settings, the REPL's chat session) comes in a :class:`Host`.
``--quick`` is the CI-sized run (1k and 10k memories, fewer repeats); it stays within ten minutes on
two busy CPU cores.
"""

from __future__ import annotations

import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from personavlm_cli.core.conversation import respond
from personavlm_cli.core.errors import PersonaError
from personavlm_cli.core.memory import MemoryType
from personavlm_cli.evals.replay import Replayer, Turn
from personavlm_cli.evals.session_bench import bench_session
from personavlm_cli.evals.session_remote import bench_session_remote
from personavlm_cli.evals.workspace import forget_exchange, percentile, scratch, temporary_store

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
    # A scripted session with learning on (evals/session_bench.py), per message against raw cold.
    "session_ratio_median_16": ("<= 0.5", lambda v: v <= 0.5),
    "session_ratio_worst_16": ("<= 1.0", lambda v: v <= 1.0),
    "session_next_chat_ratio_16": ("<= 1.2", lambda v: v <= 1.2),
    "session_ratio_median_60": ("<= 0.5", lambda v: v <= 0.5),
    "session_ratio_worst_60": ("<= 1.0", lambda v: v <= 1.0),
    "session_next_chat_ratio_60": ("<= 1.2", lambda v: v <= 1.2),
}


@dataclass
class Host:
    """What the harness needs from the composition root (``cli/bench.py``)."""

    env: Any  # the user's environment: ``settings``, ``model()``, ``close()``
    image_encoder: Callable[[], Any]  # CLIP as the settings build it
    user_env: Callable[[dict, Any], Any]  # (overrides, loaded model) -> a benchmark user's environment
    chat_session: Callable[..., Any]  # (that environment, pinned_time=, learn=) -> the REPL's chat session
    say: Callable[..., None]  # a progress line (rich markup)
    loading: Callable[[], AbstractContextManager]  # shown while the model loads

    def model(self):
        with self.loading():
            return self.env.model()


def plan_for(quick: bool, sizes: list[int] | None = None, repeat: int | None = None,
             questions: int | None = None, lengths: list[int] | None = None) -> dict:
    """How much each section does: the full run, or ``quick`` (the CI-sized one)."""
    plan = {
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


def _ms(values: list[float]) -> dict:
    return {"p50_ms": round(percentile(values, 50) * 1000, 1), "p95_ms": round(percentile(values, 95) * 1000, 1),
            "n": len(values)}


# --- realistic text -------------------------------------------------------------------------------

PEOPLE = ["Anna", "Marco", "my sister", "Grandma Rosa", "Li Wei", "the neighbours", "Priya", "Tom", "my boss Karen",
          "Sofia", "Dr. Okafor", "my cousin Jamal", "Hank from the diner", "the kids", "Yuki", "coach Dave"]
PLACES = ["the lake", "the farmers market", "Lisbon", "the climbing gym", "the office", "the public library",
          "Kyoto", "the beach", "the new cafe on Elm Street", "the hospital", "the quarry trail", "Reiman Gardens",
          "the bakery", "the train station", "the community garden", "the jazz bar"]
ACTIVITIES = ["went hiking", "baked sourdough", "played chess", "saw a jazz concert", "painted a mural",
              "went kayaking", "practised Spanish", "fixed the old bike", "planted tomatoes", "ran a 10k",
              "folded origami cranes", "sketched the skyline", "cooked a Thai curry", "built a bookshelf",
              "went birdwatching", "watched a documentary about volcanoes"]
FEELINGS = ["exhausting but fun", "really relaxing", "a bit stressful", "the best day in weeks", "surprisingly hard",
            "lovely", "chaotic", "peaceful", "frustrating", "inspiring"]
FOODS = ["oat milk lattes", "spicy ramen", "dark chocolate", "lemon cake", "green tea", "pizza margherita",
         "black coffee", "mango sticky rice", "falafel wraps", "blueberry pancakes"]
DAYS = ["on Monday", "last weekend", "yesterday", "on Friday night", "this morning", "two weeks ago",
        "on Sunday", "after work", "during the holidays", "in the spring"]


def chat_line(rng: random.Random) -> str:
    p, pl, a, f, d = (rng.choice(x) for x in (PEOPLE, PLACES, ACTIVITIES, FEELINGS, DAYS))
    food = rng.choice(FOODS)
    n = rng.randrange(2, 400)
    return rng.choice([
        f"I {a} with {p} at {pl} {d}. It was {f}.",
        f"Remind me that {p} wants to meet at {pl} at {n % 12 + 1} o'clock.",
        f"{p} told me they {a} {d}; honestly it sounded {f}.",
        f"Should I bring {food} when I visit {p}? Last time at {pl} it was {f}.",
        f"I finally {a} {d}! Took {n} minutes and it was {f}.",
        f"Not much today, just {food} at {pl} and thinking about when I {a}.",
        f"My goal this month: {a.replace('went ', 'go ')} at least {n % 5 + 2} times.",
    ])


def reply_line(rng: random.Random) -> str:
    return rng.choice([
        f"That sounds {rng.choice(FEELINGS)}! How did {rng.choice(PEOPLE)} like it?",
        f"Noted. I'll remember {rng.choice(PLACES)} for next time.",
        f"Nice! Did you have {rng.choice(FOODS)} afterwards?",
        "Good luck with that, tell me how it goes.",
    ])


def query_line(rng: random.Random) -> str:
    return rng.choice([
        f"What did I do with {rng.choice(PEOPLE)} at {rng.choice(PLACES)}?",
        f"When did I last {rng.choice(ACTIVITIES).replace('went ', 'go ')}?",
        f"Where did {rng.choice(PEOPLE)} want to meet?",
        f"Do I like {rng.choice(FOODS)}?",
        f"What happened {rng.choice(DAYS)}?",
    ])


# --- start-up -------------------------------------------------------------------------------------


# The yardstick of `personavlm --help`: a minimal Typer app's --help (two commands), in the same Python.
MINIMAL_TYPER_APP = """
import typer
app = typer.Typer(help="A minimal Typer app.")
@app.command()
def hello(name: str = "world") -> None:
    \"\"\"Say hello.\"\"\"
@app.command()
def bye() -> None:
    \"\"\"Say goodbye.\"\"\"
app()
"""


def bench_startup(home: Path, runs: int) -> dict:
    """Child-process wall time of --help and memory list (a store of 500 memories), and of a minimal Typer
    app's --help (the yardstick of ours), median of ``runs`` after one warm-up run each; the runs of each
    command alternate with the others', so that a busy moment of the machine falls on all of them."""
    from personavlm_cli.adapters.records import RecordStore
    from personavlm_cli.core import users
    from personavlm_cli.core.config import Settings

    environ = {**os.environ, "PERSONAVLM_HOME": str(home), "PERSONAVLM_USER": "bench", "HF_HUB_OFFLINE": "1",
               # As installed: compiled bytecode (the warm-up run writes it here, not into the source tree),
               # even where PYTHONDONTWRITEBYTECODE is set, which would compile every module at every start.
               "PYTHONPYCACHEPREFIX": str(home / "pycache")}
    environ.pop("PYTHONDONTWRITEBYTECODE", None)
    for var in list(environ):
        if var.startswith("PERSONAVLM_") and var not in ("PERSONAVLM_HOME", "PERSONAVLM_USER"):
            environ.pop(var)
    settings = Settings.load(environ=environ)
    user_dir = users.open_user_dir(settings, "bench", create=True)
    records = RecordStore(user_dir)
    rng = random.Random(3)
    with records.transaction():
        records.insert(_memories(rng, 500, datetime(2024, 1, 1).astimezone()))
    records.close()
    script = Path(sys.executable).parent / "personavlm"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "personavlm_cli"]
    commands = {"python": [sys.executable, "-c", "pass"], "help": [*base, "--help"],
                "typer_help": [sys.executable, "-c", MINIMAL_TYPER_APP, "--help"],
                "memory_list": [*base, "memory", "list", "--limit", "20"]}
    out_: dict = {"command": " ".join(Path(base[0]).name if i == 0 else a for i, a in enumerate(base))}
    times: dict[str, list[float]] = {name: [] for name in commands}
    for i in range(runs + 1):
        for name, cmd in commands.items():
            t = time.perf_counter()
            proc = subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=120)
            elapsed = time.perf_counter() - t
            if proc.returncode != 0:
                raise PersonaError(f"`{' '.join(cmd[-3:])}` failed during the benchmark: "
                                   f"{(proc.stderr.strip().splitlines() or [''])[-1][:200]}")
            if i:  # the first run warms the file cache
                times[name].append(elapsed)
    for name, taken in times.items():
        out_[name] = {"median_s": round(statistics.median(taken), 3), "max_s": round(max(taken), 3), "runs": runs}
    # Our --help against the minimal app's, run by run (the pairs ran back to back), then the median.
    out_["help_vs_typer"] = round(statistics.median(h / t for h, t in zip(times["help"], times["typer_help"])), 3)
    return out_


# --- stores of many memories ----------------------------------------------------------------------


def _memories(rng: random.Random, n: int, start: datetime, offset: int = 0) -> list:
    """``n`` memories of a long chat history: sessions of turns (80 %), semantic (12 %) and episodic (8 %)
    memories, and a procedural one every 4,000."""
    from personavlm_cli.core.memory import Memory, iso, new_id

    out = []
    created = iso(datetime.now().astimezone().replace(microsecond=0))
    for i in range(offset, offset + n):
        session = i // 24
        at = start + timedelta(hours=8 * session, minutes=2 * (i % 24))
        roll = rng.random()
        if i == 5:  # the core profile
            facts = {"name": "Sam", "occupation": "nurse", "city": "Porto"}
            m = Memory(id=new_id(MemoryType.CORE), type=MemoryType.CORE, text="\n".join(f"{k}: {v}" for k, v in facts.items()),
                       occurred_at=iso(at), created_at=created, meta={"facts": facts})
        elif i % 4000 == 17:  # habits and goals are few (the update stage rewrites one list of them)
            m = Memory(id=new_id(MemoryType.PROCEDURAL), type=MemoryType.PROCEDURAL,
                       text=f"Habit: {rng.choice(ACTIVITIES)} {rng.choice(DAYS)}.", occurred_at=iso(at),
                       created_at=created)
        elif roll < 0.8:
            role = "user" if i % 2 == 0 else "assistant"
            text = chat_line(rng) if role == "user" else reply_line(rng)
            m = Memory(id=new_id(MemoryType.TURN), type=MemoryType.TURN, text=text, occurred_at=iso(at), created_at=created,
                       role=role, session_id=f"s{session}")
        elif roll < 0.92:
            m = Memory(id=new_id(MemoryType.SEMANTIC), type=MemoryType.SEMANTIC,
                       text=f"The user likes {rng.choice(FOODS)} and often goes to {rng.choice(PLACES)}.",
                       keywords=f"{rng.choice(FOODS)}, {rng.choice(PLACES)}", occurred_at=iso(at), created_at=created,
                       session_id=f"s{session}")
        else:
            m = Memory(id=new_id(MemoryType.EPISODIC), type=MemoryType.EPISODIC,
                       text=f"The user and {rng.choice(PEOPLE)} talked about how they {rng.choice(ACTIVITIES)} at "
                            f"{rng.choice(PLACES)}.", occurred_at=iso(at), created_at=created, session_id=f"s{session}",
                       occurred_end=iso(at + timedelta(minutes=20)))
        out.append(m)
    return out


class BigStore:
    """A store grown to given sizes fast: records written in batches already marked embedded, and their
    vectors written in batches through the vector index (no encoder call per memory)."""

    def __init__(self, path: Path, pool: int, rng: random.Random):
        from personavlm_cli.adapters.text_encoder import TextEncoder

        self.rng = rng
        self.encoder = TextEncoder()
        self.store = temporary_store(path, self.encoder)
        self.start = datetime(2021, 1, 1, 9, 0).astimezone()
        self.size = 0
        texts = [chat_line(rng) for _ in range(pool)]
        t = time.perf_counter()
        self.pool = self.encoder.embed(texts)
        self.pool_texts = texts
        self.embed_pool_s = time.perf_counter() - t

    def grow(self, total: int) -> float:
        import numpy as np

        from personavlm_cli.core.store import TEXT, vector_metadata

        t0 = time.perf_counter()
        nprng = np.random.default_rng(self.size + 1)
        while self.size < total:
            n = min(5000, total - self.size)
            batch = _memories(self.rng, n, self.start, offset=self.size)
            picks = nprng.integers(0, len(self.pool), n)
            vecs = self.pool[picks] + nprng.normal(0, 0.02, (n, self.pool.shape[1])).astype("float32")
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            for j, m in enumerate(batch):
                if m.type == MemoryType.TURN and m.role == "user":
                    m.text = self.pool_texts[picks[j]]  # a user's line and its (noisy) vector agree
            records = self.store.records
            with records.transaction():
                records.insert(batch)
                records.mark_embedded([m.id for m in batch])
            self.store.vectors.upsert(TEXT, [m.id for m in batch], vecs, metadatas=[vector_metadata(m) for m in batch])
            self.size += n
        return time.perf_counter() - t0

    @property
    def last_time(self) -> datetime:
        return self.store.records.list(types=[MemoryType.TURN], limit=1, newest_first=True)[0].occurred


def bench_recall(host: Host, path: Path, plan: dict, rng: random.Random) -> dict:
    """Recall p50/p95 and memory work before the first token, at each store size."""
    from personavlm_cli.core.recall import Query, recall

    big = BigStore(path, plan["pool"], rng)
    out_: dict = {"pool_texts_embedded": plan["pool"], "embed_pool_s": round(big.embed_pool_s, 1), "sizes": {}}
    queries = [query_line(rng) for _ in range(plan["recall_queries"])]
    try:
        for size in sorted(plan["sizes"]):
            build_s = big.grow(size)
            for q in queries[:3]:  # warm caches (HNSW pages, FTS, the encoder)
                recall(big.store, Query(text=q), k=10)
            embed_t, recall_t = [], []
            for q in queries:
                t = time.perf_counter()
                big.encoder.embed([q])
                embed_t.append(time.perf_counter() - t)
                t = time.perf_counter()
                recall(big.store, Query(text=q), k=10)
                recall_t.append(time.perf_counter() - t)
            entry = {"build_s": round(build_s, 1), "recall": _ms(recall_t), "query_embedding": _ms(embed_t)}
            if size >= 10000 or len(plan["sizes"]) == 1:
                entry["pre_token"] = pre_token(big, plan["pretoken_messages"], rng)
            out_["sizes"][str(size)] = entry
            host.say(f"  {size:>7} memories: recall p50 {entry['recall']['p50_ms']} ms"
                      + (f", before the first token p50 {entry['pre_token']['total']['p50_ms']} ms"
                         if "pre_token" in entry else ""))
    finally:
        big.store.close()
    return out_


def bench_forget(host: Host, path: Path, plan: dict, rng: random.Random) -> dict:
    """``memory forget`` of one memory at each store size: the record deletion, the vector deletion,
    the rebuild of the vector collection that makes the erased vector go (it copies every vector),
    the shredding of dropped index files and the compaction of both SQLite files."""
    from personavlm_cli.core.store import TEXT

    big = BigStore(path, plan["pool"], rng)
    out_: dict = {"sizes": {}}
    try:
        for size in sorted(plan["sizes"]):
            big.grow(size)
            times = []
            for _ in range(plan["forgets"] if size <= 10000 else 1):
                victim = rng.choice(sorted(big.store.vectors.ids(TEXT)))
                t = time.perf_counter()
                big.store.erase([victim], "bench")
                times.append(time.perf_counter() - t)
                big.size -= 1
            out_["sizes"][str(size)] = _ms(times)
            host.say(f"  {size:>7} memories: forget one p50 {out_['sizes'][str(size)]['p50_ms']} ms")
    finally:
        big.store.close()
    return out_


def pre_token(big: BigStore, messages: int, rng: random.Random) -> dict:
    """What ``conversation.respond`` does before the model runs, timed part by part (no model)."""
    from personavlm_cli.core.assistant import Assistant
    from personavlm_cli.core.recall import Query

    assistant = Assistant(big.store, None, "bench")
    parts: dict[str, list[float]] = {k: [] for k in ("store_message_and_context", "recall", "prompt",
                                                      "total", "total_cpu", "after_answer_embed")}
    at = big.last_time + timedelta(minutes=5)
    for i in range(messages + 2):
        text = query_line(rng)
        at += timedelta(seconds=30)
        c0 = time.process_time()  # CPU time of this process (all its threads): what the load of others hides
        t0 = time.perf_counter()
        ex, ctx = assistant.prepare(text, at, [])  # what conversation.respond does before the model
        t1 = time.perf_counter()
        seen = {m.id for m in ctx.recent} | {ex.user_turn.id}
        hits = assistant.recall(Query(text=text, keywords=text, exclude_ids=seen), 8)
        used = assistant.expand([h.memory for h in hits])
        t2 = time.perf_counter()
        assistant.profile.answer_messages(ctx, used)
        t3 = time.perf_counter()
        c3 = time.process_time()
        big.store.embed([ex.user_turn])  # what respond does once the answer is over
        t4 = time.perf_counter()
        if i >= 2:  # two warm-up messages
            for key, v in (("store_message_and_context", t1 - t0), ("recall", t2 - t1), ("prompt", t3 - t2),
                           ("total", t3 - t0), ("total_cpu", c3 - c0), ("after_answer_embed", t4 - t3)):
                parts[key].append(v)
    return {k: _ms(v) for k, v in parts.items()}


# --- the model ------------------------------------------------------------------------------------


def _small_store(path: Path, rng: random.Random, rounds: int = 40):
    """A store with a few sessions of history (as a replay would write them), for the chat path."""
    from personavlm_cli.adapters.text_encoder import TextEncoder

    store = temporary_store(path, TextEncoder())
    r = Replayer(store, None, "bench", update=False)
    start = datetime(2024, 3, 1, 9, 0).astimezone()
    for s in range(max(1, rounds // 10)):
        turns = [Turn(at=start + timedelta(days=s, minutes=2 * i), user=chat_line(rng), assistant=reply_line(rng))
                 for i in range(10)]
        r.replay_session(f"s{s}", turns)
    return store, start + timedelta(days=rounds // 10 + 1)


def _timed_gate():
    """The model gate (``core.gate.ModelGate``, as a chat uses it), counting how long the main thread's
    answers wait to take it (``waited``)."""
    import threading
    from contextlib import contextmanager

    from personavlm_cli.core.gate import ModelGate

    class TimedGate(ModelGate):
        waited = 0.0

        @contextmanager
        def foreground(self):
            t = time.perf_counter()
            with super().foreground():
                if threading.current_thread() is threading.main_thread():
                    self.waited += time.perf_counter() - t
                yield

    return TimedGate()


class _Recorder:
    """The model, remembering the last messages it was asked to stream."""

    def __init__(self, model):
        self._model = model
        self.last = None

    def __getattr__(self, name):
        return getattr(self._model, name)

    def stream(self, messages, **kw):
        self.last = messages
        yield from self._model.stream(messages, **kw)


def _decode_rate(pieces_at: list[tuple[float, float]], start: float) -> dict:
    """Decode speed of one answer from (wall, process CPU) times of its pieces: tokens after the first
    over the wall time they took, and over this process's CPU time (which other processes' load does not
    inflate: it is what the chat path's own overhead would show in)."""
    n = len(pieces_at)
    if n < 3:
        return {"tokens": n, "tokens_per_s": None, "tokens_per_cpu_s": None,
                "first_token_s": (pieces_at[0][0] - start) if n else None}
    wall = pieces_at[-1][0] - pieces_at[0][0]
    cpu = pieces_at[-1][1] - pieces_at[0][1]
    return {"tokens": n, "tokens_per_s": (n - 1) / wall if wall > 0 else None,
            "tokens_per_cpu_s": (n - 1) / cpu if cpu > 0 else None, "first_token_s": pieces_at[0][0] - start}


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def bench_generation(host: Host, path: Path, plan: dict, rng: random.Random) -> dict:
    """Decode tokens/s through conversation.respond's stream against raw llama-cpp-python, same prompt.

    The chat runs are in a session whose turns are all recent (no long-term memory yet), so the
    model's retrieve-or-answer step, which changes nothing in decoding, does not run; each run's turns
    are removed afterwards, so every run, chat or raw, gets the very same prompt. Runs come in pairs
    that alternate which goes first; the bar is judged on the median of the pairs' ratios (a pair's two
    runs share the machine's load of the moment). The ratio of tokens per CPU second of this process
    is reported too: other processes' load does not inflate it, so it isolates the chat path's overhead.
    """
    from personavlm_cli.adapters.llama_runtime import raw_llama
    from personavlm_cli.adapters.text_encoder import TextEncoder
    from personavlm_cli.core.assistant import Assistant

    s = host.env.settings
    if s["model.kind"] != "llama-cpp":
        return {"skipped": "the chat model is a remote server: no raw llama-cpp-python to compare with"}
    model = host.model()
    info = model.load_info
    store = temporary_store(path, TextEncoder())
    start_at = datetime(2024, 3, 1, 9, 0).astimezone()
    Replayer(store, None, "bench", update=False).replay_session(
        "s0", [Turn(at=start_at + timedelta(minutes=i), user=chat_line(rng), assistant=reply_line(rng))
               for i in range(6)])
    at = start_at + timedelta(minutes=15)
    message = "Please write me a long, detailed story about a lighthouse keeper and her cat, at least three paragraphs."
    sampling = {"max_tokens": plan["gen_tokens"], "temperature": 0.0}
    recorder = _Recorder(model)
    assistant = Assistant(store, recorder, "bench", profile=s["model.prompt_profile"])

    def chat_run() -> dict:
        begin = time.perf_counter()
        ex, stream = respond(assistant, message, at, [], sampling=sampling)
        times = [_now() for _piece in stream]
        forget_exchange(store, ex)
        return _decode_rate(times, begin)

    try:
        chat_run()  # warm-up, and the prompt
        prompt = recorder.last
        raw = raw_llama(info, s["model.threads"])

        def raw_run() -> dict:
            begin = time.perf_counter()
            times = []
            for chunk in raw.create_chat_completion(prompt, stream=True, max_tokens=plan["gen_tokens"],
                                                    temperature=0.0, top_p=0.95, repeat_penalty=1.1, seed=0):
                if chunk["choices"][0]["delta"].get("content"):
                    times.append(_now())
            return _decode_rate(times, begin)

        raw_run()  # warm-up
        overhead_us = _chat_path_overhead_us(store, s["model.prompt_profile"], at)
        chat_runs, raw_runs = [], []
        try:
            for i in range(plan["gen_runs"]):
                if i % 2 == 0:
                    chat_runs.append(chat_run())
                    raw_runs.append(raw_run())
                else:
                    raw_runs.append(raw_run())
                    chat_runs.append(chat_run())
        finally:
            raw.close()
        same_prompt = recorder.last == prompt
    finally:
        store.close()

    def values(runs, key):
        return [r[key] for r in runs if r[key]]

    def ratios(key):
        return [c[key] / r[key] for c, r in zip(chat_runs, raw_runs) if c[key] and r[key]]

    def median(xs):
        return round(statistics.median(xs), 3) if xs else None

    pairs, cpu_pairs = ratios("tokens_per_s"), ratios("tokens_per_cpu_s")
    return {
        "model": info.summary_line(), "max_tokens": plan["gen_tokens"], "runs": plan["gen_runs"],
        "prompt_chars": sum(len(str(m.get("content"))) for m in prompt), "same_prompt_every_run": same_prompt,
        "chat_tokens_per_s": round(statistics.median(values(chat_runs, "tokens_per_s") or [0]), 1),
        "raw_tokens_per_s": round(statistics.median(values(raw_runs, "tokens_per_s") or [0]), 1),
        "ratio": median(pairs), "pair_ratios": [round(x, 3) for x in pairs],
        "ratio_best_of_n": round(max(values(chat_runs, "tokens_per_s")) / max(values(raw_runs, "tokens_per_s")), 3)
        if values(chat_runs, "tokens_per_s") and values(raw_runs, "tokens_per_s") else None,
        "cpu_ratio": median(cpu_pairs),
        "chat_path_overhead_us_per_token": round(overhead_us, 2),
        "chat_path_overhead_share_at_raw_speed": round(overhead_us * 1e-6 * statistics.median(
            values(raw_runs, "tokens_per_s") or [0]), 5),
        "chat_tokens_per_cpu_s": round(statistics.median(values(chat_runs, "tokens_per_cpu_s") or [0]), 1),
        "raw_tokens_per_cpu_s": round(statistics.median(values(raw_runs, "tokens_per_cpu_s") or [0]), 1),
        "chat_tokens_per_s_runs": [round(x, 1) for x in values(chat_runs, "tokens_per_s")],
        "raw_tokens_per_s_runs": [round(x, 1) for x in values(raw_runs, "tokens_per_s")],
        "chat_tokens": [r["tokens"] for r in chat_runs], "raw_tokens": [r["tokens"] for r in raw_runs],
        "chat_first_token_s": round(statistics.median(values(chat_runs, "first_token_s")), 2),
        "raw_first_token_s": round(statistics.median(values(raw_runs, "first_token_s")), 2),
    }


class _Instant:
    """A stand-in model whose tokens cost nothing: what remains is the chat path's own cost per token."""

    vision = False
    n_ctx = 4096
    last_usage: dict = {}

    def __init__(self, tokens: int):
        self.tokens = tokens

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def stream(self, messages, **_kw):
        for _ in range(self.tokens):
            yield "tok "


def _chat_path_overhead_us(store, profile: str, at, tokens: int = 20000) -> float:
    """Microseconds the chat path adds per streamed token (conversation.respond's layers over the model's):
    an assistant on the same store and prompt profile, over a model whose tokens cost nothing."""
    from personavlm_cli.core.assistant import Assistant

    instant = _Instant(tokens)
    t = time.perf_counter()
    for _ in instant.stream([]):
        pass
    direct = time.perf_counter() - t
    ex, stream = respond(Assistant(store, instant, "bench", profile=profile), "overhead probe", at, [])
    first = last = None
    for _ in stream:
        last = time.perf_counter()
        first = first or last
    forget_exchange(store, ex)
    return max(0.0, ((last - first) - direct * (tokens - 1) / tokens) / (tokens - 1) * 1e6)


def bench_ttft(host: Host, path: Path, plan: dict, locomo: Path | None) -> dict:
    """Time to the first token through the real chat path on a long real history, against raw
    llama-cpp-python on the exact same final prompt in a fresh context.

    A LoCoMo conversation (conv-26 if present) is replayed into a temporary user; then, for each
    question, a new chat session starts (two hours after the previous one) and the question goes
    through ``ChatSession.send``, as the REPL sends it, then a follow-up message in the same session
    ("And what else do you remember about that?"). Recorded per question: first token through chat
    (cold: a new session), the raw model's first token on that exact prompt after ``reset()``, the
    follow-up's first token (warm: the session's prefix is cached) and the raw one on the follow-up's
    prompt, prompt tokens, and whether the question's evidence turns were in the prompt. Run twice:
    learning off (``--no-update``) and on (the update thread working between messages).
    """
    import os

    from personavlm_cli.adapters.llama_runtime import raw_llama
    from personavlm_cli.evals import locomo as lc

    s = host.env.settings
    if s["model.kind"] != "llama-cpp":
        return {"skipped": "the chat model is a remote server: no raw llama-cpp-python to compare with"}
    data = locomo
    if data is None:
        for guess in (Path("../shared/data/locomo/locomo-dev.json"), Path("shared/data/locomo/locomo-dev.json")):
            if guess.is_file():
                data = guess
                break
    if data is None:
        return {"skipped": "no LoCoMo data: pass --locomo PATH (e.g. the development split)"}
    convs = lc.load(data, None)
    conv = next((c for c in convs if c.sample_id == "conv-26"), convs[0])
    asked = [q for q in conv.questions if q.scored][: plan["ttft_questions"]]
    model = host.model()
    info = model.load_info
    raw = raw_llama(info, s["model.threads"])
    results: dict = {"model": info.summary_line(), "conversation": conv.sample_id, "questions": len(asked)}
    saved_home = os.environ.get("PERSONAVLM_HOME")
    try:
        for learn in (False, True):
            home = path / ("learn" if learn else "no-update")
            os.environ["PERSONAVLM_HOME"] = str(home)
            overrides = {k: s[k] for k in ("model.path", "model.gpu_layers", "model.context", "model.threads",
                                           "model.max_tokens", "model.prompt_profile") if s[k] is not None}
            overrides["model.temperature"] = 0.0
            with host.user_env(overrides, model) as tenv:  # the same loaded model
                rows = _ttft_rows(host, tenv, model, raw, conv, asked, learn)
            cold = [r["cold_chat_s"] / r["cold_raw_s"] for r in rows if r["cold_raw_s"]]
            warm = [r["warm_chat_s"] / r["warm_raw_s"] for r in rows if r["warm_raw_s"]]
            results["learning" if learn else "no_update"] = {
                "cold_ratio_median": round(statistics.median(cold), 3) if cold else None,
                "cold_ratio_p90": round(percentile(cold, 90), 3) if cold else None,
                "warm_ratio_median": round(statistics.median(warm), 3) if warm else None,
                "warm_ratio_p90": round(percentile(warm, 90), 3) if warm else None,
                "cold_chat_s_median": round(statistics.median(r["cold_chat_s"] for r in rows), 3),
                "cold_raw_s_median": round(statistics.median(r["cold_raw_s"] for r in rows), 3),
                "warm_chat_s_median": round(statistics.median(r["warm_chat_s"] for r in rows), 3),
                "warm_raw_s_median": round(statistics.median(r["warm_raw_s"] for r in rows), 3),
                "prompt_tokens_median": statistics.median(r["cold_prompt_tokens"] or 0 for r in rows),
                "evidence_in_context": round(statistics.fmean(r["evidence_in_context"] for r in rows), 3),
                "rows": rows,
            }
    finally:
        raw.close()
        if saved_home is None:
            os.environ.pop("PERSONAVLM_HOME", None)
        else:
            os.environ["PERSONAVLM_HOME"] = saved_home
    return results


def _ttft_rows(host: Host, tenv, model, raw, conv, asked: list, learn: bool) -> list[dict]:
    """Each question (cold, a new session) and its follow-up (warm) through the REPL's chat session on
    ``tenv``, each against the raw model on the exact same prompt."""
    import io

    from personavlm_cli.evals import locomo as lc

    store = tenv.store(write=True)
    dia_of = lc.replay(conv, store)
    session = host.chat_session(tenv, pinned_time=conv.last_time + timedelta(days=1), learn=learn)
    rows = []
    real_stdout = sys.stdout
    try:
        session.start(quiet=True)
        for i, q in enumerate(asked):
            at = conv.last_time + timedelta(days=1, hours=2 * i)
            row = {"question": q.question}
            for kind, text, when in (("cold", q.question, at),
                                     ("warm", "And what else do you remember about that?",
                                      at + timedelta(minutes=1))):
                session.pinned_time = when
                sys.stdout = io.StringIO()
                try:
                    session.send(text)
                finally:
                    sys.stdout = real_stdout
                ex = session.assistant.last
                usage = dict(getattr(model, "last_usage", None) or {})
                with tenv.model_lock:  # the update thread pauses: raw runs alone
                    raw.reset()
                    t = time.perf_counter()
                    for _chunk in raw.create_chat_completion(ex.prompt, stream=True, max_tokens=1,
                                                             temperature=0.0, seed=0):
                        break
                    raw_s = time.perf_counter() - t
                row[f"{kind}_chat_s"] = session.stats.first_token_s
                row[f"{kind}_raw_s"] = round(raw_s, 3)
                row[f"{kind}_prompt_tokens"] = usage.get("prompt_tokens")
                row[f"{kind}_cached_tokens"] = usage.get("cached_tokens")
                if kind == "cold":
                    used = list(ex.reasoning.used) if ex.reasoning else []
                    in_prompt = lc.ranked_turns(used, dia_of, store.records)
                    row["evidence_in_context"] = lc.recall_at_k(in_prompt, q.evidence, len(in_prompt) or 1)
                    row["recalled"] = len(used)
                background = session.conversation.background
                if background is not None:
                    background.wait_idle(0)  # the thread works on: no waiting
            rows.append(row)
            host.say(f"  {'learning' if learn else 'no-update'} {i + 1}/{len(asked)}: cold "
                     f"{row['cold_chat_s']} s (raw {row['cold_raw_s']} s), warm {row['warm_chat_s']} s "
                     f"(raw {row['warm_raw_s']} s)", highlight=False)
    finally:
        sys.stdout = real_stdout
        session.finish(consolidate=False)
    return rows


def bench_clip(host: Host, path: Path, images: int) -> dict:
    path.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(images + 1):
        files.append(_picture(path / f"p{i}.png", i))
    t = time.perf_counter()
    encoder = host.image_encoder()
    load_s = time.perf_counter() - t
    encoder.embed_images([files[0]])  # warm-up
    times = []
    for f in files[1:]:
        t = time.perf_counter()
        encoder.embed_images([f])
        times.append(time.perf_counter() - t)
    return {"model": encoder.model_id, "load_s": round(load_s, 1), "per_image": _ms(times)}


def _picture(path: Path, seed: int) -> Path:
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    im = Image.new("RGB", (640, 480), tuple(rng.randrange(256) for _ in range(3)))
    d = ImageDraw.Draw(im)
    for _ in range(20):
        x, y = rng.randrange(640), rng.randrange(480)
        d.ellipse((x, y, x + rng.randrange(20, 200), y + rng.randrange(20, 200)),
                  fill=tuple(rng.randrange(256) for _ in range(3)))
    im.save(path, format="PNG")
    return path


def bench_replay(path: Path, rounds: int, rng: random.Random) -> dict:
    """Turns stored per second by the benchmark replay (user turn + gold reply, embedded), no model."""
    from personavlm_cli.adapters.text_encoder import TextEncoder

    encoder = TextEncoder()
    encoder.embed(["warm-up"])
    store = temporary_store(path, encoder)
    try:
        r = Replayer(store, None, "bench", update=False)
        start = datetime(2024, 1, 1, 9, 0).astimezone()
        sessions = []
        for s in range(0, rounds, 20):
            sessions.append([Turn(at=start + timedelta(days=s, minutes=2 * i), user=chat_line(rng),
                                     assistant=reply_line(rng)) for i in range(min(20, rounds - s))])
        t = time.perf_counter()
        for n, turns in enumerate(sessions):
            r.replay_session(f"s{n}", turns)
        elapsed = time.perf_counter() - t
    finally:
        store.close()
    return {"rounds": rounds, "messages": 2 * rounds, "seconds": round(elapsed, 2),
            "rounds_per_s": round(rounds / elapsed, 1), "messages_per_s": round(2 * rounds / elapsed, 1)}


def bench_update(host: Host, path: Path, plan: dict, rng: random.Random) -> dict:
    """The update stage with the chat model: per turn, per session, and what the user waits for."""
    from personavlm_cli.core.assistant import Assistant
    from personavlm_cli.core.background import BackgroundUpdates
    from personavlm_cli.core.update_stage import UpdateStage

    model = host.model()
    store, at = _small_store(path, rng, rounds=20)
    try:
        r = Replayer(store, model, "bench", update=True)
        session = f"s_{at:%Y%m%d%H%M}_bench"  # a new session, as the time gap would open one
        turn_s = []
        for i in range(plan["update_turns"]):
            before = r.update_seconds  # the turn job's own time (storing and embedding the turn excluded)
            r.replay_turn(session, Turn(at=at + timedelta(minutes=2 * i), user=chat_line(rng),
                                        assistant=reply_line(rng)))
            turn_s.append(r.update_seconds - before)
        before = r.update_seconds
        r.end_session(session)
        session_s = r.update_seconds - before

        # As in chat: updates in a background thread sharing the model lock with the answers.
        lock = _timed_gate()
        assistant = Assistant(store, model, "bench", model_lock=lock)
        stage = UpdateStage(store, model, "bench", lock)
        background = BackgroundUpdates(lambda: UpdateStage(store.fork(), model, "bench", lock)).start()
        sampling = {"max_tokens": 24, "temperature": 0.0}
        at2 = at + timedelta(hours=1)
        try:
            def ask(text, when, learn):
                lock.waited = 0.0
                start = time.perf_counter()
                ex, stream = respond(assistant, text, when, [], updates=stage if learn else None, sampling=sampling)
                first = last = None
                for _piece in stream:
                    last = time.perf_counter()
                    first = first or last
                end = time.perf_counter()  # the stream's own bookkeeping (store, embed, queue) is done
                return {"first_token_s": (first or end) - start, "after_last_token_ms": (end - (last or end)) * 1000,
                        "lock_wait_s": lock.waited}

            idle = ask(chat_line(rng), at2, learn=True)  # nothing pending: its turn job is queued at the end
            background.poke()  # as chat does after each answer
            t = time.perf_counter()
            time.sleep(1.0)  # the next message, typed within a second, while that turn job runs
            busy = ask(chat_line(rng), at2 + timedelta(minutes=1), learn=False)
            background.wait_idle(600)
            drained_s = time.perf_counter() - t
        finally:
            background.stop()
    finally:
        store.close()
    return {
        "turn_job_s": round(statistics.median(turn_s), 2), "turn_jobs": len(turn_s),
        "session_job_s": round(session_s, 2),
        "post_answer_wait_ms": round(idle["after_last_token_ms"], 1),
        "first_token_s_idle": round(idle["first_token_s"], 2),
        "first_token_s_while_update_runs": round(busy["first_token_s"], 2),
        "delay_from_running_update_s": round(busy["lock_wait_s"] - idle["lock_wait_s"], 2),
        "queue_drained_s": round(drained_s, 2),
        "note": "delay: time the next answer, sent 1 s after the previous one, waited for the model while the "
                "update stage's turn job held it",
    }


# --- bars and the table ---------------------------------------------------------------------------


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

