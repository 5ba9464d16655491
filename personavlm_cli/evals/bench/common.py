"""What the bench's scenarios share: the :class:`Host` (what only the composition root may build), timing
figures, realistic chat text, and stores of many memories grown fast (:class:`BigStore`)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from personavlm_cli.core.memory import MemoryType
from personavlm_cli.evals.workspace import percentile, temporary_store


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




def ms(values: list[float]) -> dict:
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




def memories(rng: random.Random, n: int, start: datetime, offset: int = 0) -> list:
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
            batch = memories(self.rng, n, self.start, offset=self.size)
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
