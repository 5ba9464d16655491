"""`bench --only ttft`: time to the first token on a long real history (LoCoMo) through the REPL's chat session,
against raw llama-cpp-python on the exact same prompt."""

from __future__ import annotations

import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

from personavlm_cli.evals.bench.common import Host
from personavlm_cli.evals.workspace import percentile


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
