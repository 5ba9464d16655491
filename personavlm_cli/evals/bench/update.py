"""`bench --only update`: the update stage's time per turn and per session with the chat model, the wait it adds
before the next prompt, and the delay it causes to an answer asked while it runs."""

from __future__ import annotations

import random
import statistics
import time
from datetime import datetime, timedelta
from pathlib import Path

from personavlm_cli.core.conversation import respond
from personavlm_cli.evals.bench.common import Host, chat_line, reply_line
from personavlm_cli.evals.replay import Replayer, Turn
from personavlm_cli.evals.workspace import temporary_store


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
