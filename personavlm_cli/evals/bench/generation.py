"""`bench --only generation`: decode speed through the chat path (``conversation.respond``'s stream) against
raw llama-cpp-python on the same model, settings and prompt, and the chat path's own cost per token."""

from __future__ import annotations

import random
import statistics
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from personavlm_cli.core.conversation import respond
from personavlm_cli.evals.bench.common import Host, chat_line, reply_line
from personavlm_cli.evals.replay import Replayer, Turn
from personavlm_cli.evals.workspace import forget_exchange, temporary_store

if TYPE_CHECKING:
    from personavlm_cli.core.ports import ChatModel


class _Recorder:
    """The model, remembering the last messages it was asked to stream."""

    def __init__(self, model):
        self._model = model
        self.last: list[dict[str, Any]] | None = None

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
        "prompt_chars": sum(len(str(m.get("content"))) for m in prompt or []), "same_prompt_every_run": same_prompt,
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
    # A stand-in for the port: the chat path calls only what it has (stream, count_tokens, its attributes).
    ex, stream = respond(Assistant(store, cast("ChatModel", instant), "bench", profile=profile), "overhead probe", at, [])
    first: float | None = None
    last: float | None = None
    for _ in stream:
        last = time.perf_counter()
        first = first or last
    forget_exchange(store, ex)
    assert first is not None and last is not None, "the stand-in streams its tokens"
    return max(0.0, ((last - first) - direct * (tokens - 1) / tokens) / (tokens - 1) * 1e6)
