"""`bench --only replay`: replay throughput (turns stored per second, without the chat model)."""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta
from pathlib import Path

from personavlm_cli.evals.bench.common import chat_line, reply_line
from personavlm_cli.evals.replay import Replayer, Turn
from personavlm_cli.evals.workspace import temporary_store


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
