"""`bench --only recall,pretoken`: recall latency (p50/p95, the query's embedding included) at 1k, 10k and 100k
memories, and the memory work before the first token (storing and embedding the message, the recent context,
recall, prompt assembly, as ``conversation.respond`` does them, without the model)."""

from __future__ import annotations

import random
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from personavlm_cli.evals.bench.common import BigStore, Host, ms, query_line

if TYPE_CHECKING:
    from personavlm_cli.core.ports import ChatModel


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
            entry: dict[str, Any] = {"build_s": round(build_s, 1), "recall": ms(recall_t), "query_embedding": ms(embed_t)}
            if size >= 10000 or len(plan["sizes"]) == 1:
                entry["pre_token"] = pre_token(big, plan["pretoken_messages"], rng)
            out_["sizes"][str(size)] = entry
            host.say(f"  {size:>7} memories: recall p50 {entry['recall']['p50_ms']} ms"
                      + (f", before the first token p50 {entry['pre_token']['total']['p50_ms']} ms"
                         if "pre_token" in entry else ""))
    finally:
        big.store.close()
    return out_


def pre_token(big: BigStore, messages: int, rng: random.Random) -> dict:
    """What ``conversation.respond`` does before the model runs, timed part by part (no model)."""
    from personavlm_cli.core.assistant import Assistant
    from personavlm_cli.core.recall import Query

    assistant = Assistant(big.store, cast("ChatModel", None), "bench")  # no model: only the work before it
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
    return {k: ms(v) for k, v in parts.items()}
