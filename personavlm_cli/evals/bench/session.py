"""`personavlm bench --only session`: the first word of every message in a real session, learning on.

A single question on a long history says little about a session: there the user talks, learning runs
between messages, and the next message comes while it runs. This replays a scripted session (statements
about the user, questions, requests) through the REPL's own chat session (``ChatSession.send``, the
update thread working between messages, a reading pause after each answer, longer, up to ten seconds,
after the answers that moved the recent-turn window while its new prefix is evaluated) and records, for each
message, its time to the first token against raw llama-cpp-python *cold* (a fresh ``reset()``) on the
exact same prompt, with the prompt tokens and how many of them came from the cache. Then the chat ends
with its learning still queued, a new chat starts, and its first message is measured the same way (the
previous chat's pending work runs in the background of that one).

Figures per session length: the median, p90 and worst chat/raw ratio of the messages after the first,
the first message's, and the tokens reused per message.
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from personavlm_cli.evals.workspace import percentile

# A user getting to know the assistant: statements about themselves (learnt by rules), questions
# (recall), requests (longer answers). Cycled for sessions longer than the script.
SCRIPT = [
    "Hi! My name is Dana and I work as a nurse at the city hospital.",
    "I have a dog called Pepper, a three-year-old border collie.",
    "What would be a good name for a second dog?",
    "I usually run five kilometres every morning before my shift.",
    "Can you suggest a quick breakfast I could eat after running?",
    "My sister Lena lives in Lisbon and I visit her every summer.",
    "What do you remember about my dog?",
    "I am learning Portuguese so that I can talk with Lena's neighbours.",
    "Give me three short Portuguese phrases for a market.",
    "I don't like coffee; I drink green tea instead.",
    "Where does my sister live?",
    "Please write a two-line reminder to book my flight to Lisbon.",
    "I switched from night shifts to day shifts last month.",
    "What do I drink in the morning?",
    "My favourite book is The Left Hand of Darkness.",
    "Suggest a book similar to my favourite one.",
    "I am allergic to peanuts, so I check every snack label.",
    "What is my job?",
    "I want to run a half marathon in October.",
    "Make a simple weekly running plan for me.",
    "My partner Sam is a carpenter who builds furniture at home.",
    "What does Sam do?",
    "I grew up in a small town near the sea in Brittany.",
    "Tell me a fun fact about Brittany.",
    "I play the cello in an amateur orchestra on Thursdays.",
    "Which day do I have orchestra practice?",
    "I stopped eating meat two years ago.",
    "Suggest a vegetarian dinner I can cook in twenty minutes.",
    "My birthday is on the twelfth of March.",
    "What am I allergic to?",
]


PREFILL_WAIT_S = 10.0


def script(n: int) -> list[str]:
    return [SCRIPT[i % len(SCRIPT)] for i in range(n)]


class RawLocal:
    """Raw llama-cpp-python on the chat model's file and settings, cold (``reset()``) for each prompt."""

    def __init__(self, model, threads: int | None):
        from personavlm_cli.adapters.llama_runtime import raw_llama

        self.model = model
        self.llm = raw_llama(model.load_info, threads)

    def first_token_s(self, prompt: list[dict]) -> float:
        self.llm.reset()
        t = time.perf_counter()
        for _chunk in self.llm.create_chat_completion(prompt, stream=True, max_tokens=1, temperature=0.0, seed=0):
            break
        return time.perf_counter() - t

    def drop_cache(self) -> None:
        self.model.drop_cache()

    def close(self) -> None:
        self.llm.close()


def bench_session(host, path: Path, plan: dict) -> dict:
    """Sessions of ``plan["session_lengths"]`` messages, learning on, each against raw llama-cpp-python
    (the chat model on llama-cpp-python's server instead: ``evals/bench/session_remote.py``)."""
    s = host.env.settings
    if s["model.kind"] != "llama-cpp":
        return {"skipped": "the chat model is a remote server: no raw llama-cpp-python to compare with "
                           "(--remote starts a server of its own)"}
    model = host.model()
    raw = RawLocal(model, s["model.threads"])
    try:
        return run_lengths(host, path, plan, model, raw, {}, model.load_info.summary_line())
    finally:
        raw.close()


def run_lengths(host, path: Path, plan: dict, model, raw, overrides: dict, label: str) -> dict:
    """Each session length in a home of its own, the chat on ``model``, each message against ``raw``."""
    s = host.env.settings
    results: dict = {"model": label, "pause_s": plan["session_pause_s"],
                     "answer_tokens": plan["session_answer_tokens"], "lengths": {}}
    saved_home = os.environ.get("PERSONAVLM_HOME")
    try:
        for n in plan["session_lengths"]:
            os.environ["PERSONAVLM_HOME"] = str(path / f"messages-{n}")
            settings = {k: s[k] for k in ("model.path", "model.gpu_layers", "model.context", "model.threads",
                                          "model.prompt_profile") if s[k] is not None}
            settings.update({"model.temperature": 0.0, "model.max_tokens": plan["session_answer_tokens"]})
            settings.update(overrides)
            with host.user_env(settings, model) as tenv:  # the same loaded model
                rows = session_rows(host, tenv, model, raw, n, plan["session_pause_s"])
            results["lengths"][str(n)] = summarise(rows)
    finally:
        if saved_home is None:
            os.environ.pop("PERSONAVLM_HOME", None)
        else:
            os.environ["PERSONAVLM_HOME"] = saved_home
    return results


def session_rows(host, tenv, model, raw, n: int, pause_s: float) -> list[dict]:
    """``n`` scripted messages in one chat, then the first message of the next chat (with the first
    chat's learning still queued); one row each."""
    start = datetime(2026, 3, 2, 18, 0).astimezone()
    rows: list[dict] = []
    session = host.chat_session(tenv, pinned_time=start, learn=True)
    session.start(quiet=True)
    try:
        for i, text in enumerate(script(n)):
            rows.append(_measure(session, tenv, model, raw, text, start + timedelta(minutes=i), pause_s))
            rows[-1]["message"] = i + 1
            if i == 0:  # what the size rule chose for this model (core/capability.py)
                rows[-1].update(prompt_style=session.assistant.profile.style, extractor=session.conversation.extractor)
            host.say(f"  {n} messages, {i + 1}/{n}: chat {rows[-1]['chat_s']} s, raw {rows[-1]['raw_s']} s, "
                     f"{rows[-1]['cached_tokens']}/{rows[-1]['prompt_tokens']} tokens reused", highlight=False)
    finally:
        closing = session.conversation.close(consolidate=True) if session.conversation is not None else None
        session.conversation = None
    pending = closing.pending if closing is not None else 0
    # The next chat, ten minutes later: its first message while the previous chat's learning runs, on
    # a cold cache, as in a new process (the benchmark shares one loaded model between its chats).
    raw.drop_cache()
    second = host.chat_session(tenv, pinned_time=start + timedelta(minutes=n + 10), learn=True)
    second.start(quiet=True)
    try:
        row = _measure(second, tenv, model, raw, "What do you remember about me?", start + timedelta(minutes=n + 10))
        row.update(message="next chat", pending_at_start=pending)
        rows.append(row)
        host.say(f"  {n} messages, next chat ({pending} updates pending): chat {row['chat_s']} s, "
                 f"raw {row['raw_s']} s", highlight=False)
    finally:
        second.finish(consolidate=False)
    return rows


def _measure(session, tenv, model, raw, text: str, at: datetime, pause_s: float = 0.0) -> dict:
    """One message through the chat, then (after the user's reading pause, during which learning and
    the next prompt's prefill run) raw llama-cpp-python cold on the same prompt: raw is timed after the
    pause because taking the model for it is an answer to the gate and would stop the prefill."""
    session.pinned_time = at
    real_stdout = sys.stdout
    sys.stdout = io.StringIO()
    try:
        session.send(text)
    finally:
        sys.stdout = real_stdout
    usage = dict(getattr(model, "last_usage", None) or {})
    prompt = session.assistant.last.prompt
    time.sleep(pause_s)  # the user reads the answer; learning runs meanwhile
    warmup = session.conversation.warmup if session.conversation is not None else None
    if warmup is not None:  # a slow reader: the next prompt's beginning may finish (10 s at most)
        warmup.wait(PREFILL_WAIT_S)
    with tenv.model_lock:  # the update thread pauses: raw runs alone
        raw_s = raw.first_token_s(prompt)
    chat_s = session.stats.first_token_s
    # A server's stream may not say its prompt's size (llama-cpp-python's does not): raw's count then.
    prompt_tokens = usage.get("prompt_tokens") or getattr(raw, "prompt_tokens", None)
    return {"chat_s": chat_s, "raw_s": round(raw_s, 3), "ratio": round(chat_s / raw_s, 3) if raw_s else None,
            "prompt_tokens": prompt_tokens, "cached_tokens": usage.get("cached_tokens"),
            "turns_left_out": session.stats.turns_left_out}


def summarise(rows: list[dict]) -> dict:
    chat = [r for r in rows if isinstance(r["message"], int)]
    later = [r["ratio"] for r in chat[1:] if r["ratio"] is not None]
    nxt = next((r for r in rows if r["message"] == "next chat"), None)
    reused = [r["cached_tokens"] / r["prompt_tokens"] for r in chat[1:]
              if r["prompt_tokens"] and r["cached_tokens"] is not None]  # a server may not say what it reused
    return {
        "messages": len(chat),
        "prompt_style": chat[0].get("prompt_style") if chat else None,
        "extractor": chat[0].get("extractor") if chat else None,
        "first_ratio": chat[0]["ratio"] if chat else None,
        "ratio_median": round(statistics.median(later), 3) if later else None,
        "ratio_p90": round(percentile(later, 90), 3) if later else None,
        "ratio_worst": round(max(later), 3) if later else None,
        "over_1": sum(1 for v in later if v > 1.0),
        "next_chat_ratio": nxt["ratio"] if nxt else None,
        "next_chat_pending": nxt["pending_at_start"] if nxt else None,
        "chat_s_median": round(statistics.median(r["chat_s"] for r in chat), 3) if chat else None,
        "raw_s_median": round(statistics.median(r["raw_s"] for r in chat), 3) if chat else None,
        "prompt_tokens_max": max((r["prompt_tokens"] or 0) for r in chat) if chat else None,
        "reused_share_median": round(statistics.median(reused), 3) if reused else None,
        "rows": rows,
    }
