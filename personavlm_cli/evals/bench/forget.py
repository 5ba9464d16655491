"""`bench --only forget`: ``memory forget`` of one memory at each store size."""

from __future__ import annotations

import random
import time
from pathlib import Path

from personavlm_cli.evals.bench.common import BigStore, Host, ms


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
            out_["sizes"][str(size)] = ms(times)
            host.say(f"  {size:>7} memories: forget one p50 {out_['sizes'][str(size)]['p50_ms']} ms")
    finally:
        big.store.close()
    return out_
