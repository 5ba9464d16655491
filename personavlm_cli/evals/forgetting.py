"""Does forgetting leave nothing behind? The forgetting category of `personavlm eval facts` (``--forget-lives``).

Lives in the format of ``shared/data/lived`` (``user``, ``sessions`` of ``{at, messages}``, ``expect``
with ``profile`` and ``forget`` = ``{query, keep}``) each chat through the real chat turn with the
update stage (as ``evals/facts.py`` replays its people), in a fresh store of their own. Then the
``forget.query`` is forgotten the way ``memory forget --query Q --yes`` does it (``core/forgetting.py``:
literal match, derived memories, the profile recomputed), and measured:

- **occurrences left**: files of the user's store directory whose bytes still hold the query (ASCII case
  aside), and memory rows that still hold it: the bar is zero;
- **kept**: share of the ``keep`` profile fields whose expected value (``expect.profile``) the profile
  still holds, when it held them before the forget (what unrelated must stay);
- **erased**: memories erased, and how many the text plan listed before it erased them (the same).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from personavlm_cli.core.conversation import respond
from personavlm_cli.core.errors import PersonaError
from personavlm_cli.core.memory import MemoryType, parse_time


@dataclass
class Life:
    user: str
    sessions: list[dict]
    query: str
    keep: list[str]
    profile: dict[str, str] = field(default_factory=dict)


def load(path: Path) -> list[Life]:
    """The lives of ``path`` that say what to forget (``expect.forget``); one PersonaError line if none."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PersonaError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersonaError(f"{path} is not JSON: {exc}") from None
    lives = []
    for i, p in enumerate(data if isinstance(data, list) else []):
        try:
            forget = (p.get("expect") or {}).get("forget")
            if not forget:
                continue
            life = Life(user=str(p["user"]), sessions=list(p["sessions"]), query=str(forget["query"]),
                        keep=[str(k) for k in forget.get("keep", [])],
                        profile={str(k): str(v) for k, v in (p["expect"].get("profile") or {}).items()})
            for s in life.sessions:
                parse_time(str(s["at"]), "session time")
                if not all(isinstance(m, str) for m in s["messages"]):
                    raise TypeError("messages must be text")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PersonaError(f"{path}: life {i + 1} is not in the lived format ({exc})") from None
        lives.append(life)
    if not lives:
        raise PersonaError(f"{path}: no life says what to forget (expect.forget)")
    return lives


def occurrences(root: Path, text: str) -> list[str]:
    """Files under ``root`` whose bytes hold ``text`` (ASCII case aside), relative to ``root``."""
    needle = text.lower().encode("utf-8")
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*")
                  if p.is_file() and needle in p.read_bytes().lower())


def _profile(store) -> dict[str, str]:
    core = store.records.list(types=[MemoryType.CORE])
    return {k: str(v) for k, v in (core[-1].meta.get("facts") or {}).items()} if core else {}


def forget_and_measure(store, life: Life) -> dict:
    """Forget ``life.query`` in ``store`` as `memory forget --query` does, and measure what is left."""
    from personavlm_cli.core import forgetting
    from personavlm_cli.core.update_queue import UpdateQueue

    before = _profile(store)
    held = [k for k in life.keep if life.profile.get(k, "").lower() in before.get(k, "").lower() and before.get(k)]
    plan = forgetting.plan_text(store, life.query)
    listed = len(plan.ids)
    erased = forgetting.execute_text(store, plan, "forget-query", UpdateQueue(store.records))
    after = _profile(store)
    kept = [k for k in held if life.profile.get(k, "").lower() in after.get(k, "").lower() and after.get(k)]
    files = occurrences(store.user_dir, life.query)
    rows = forgetting.matching(store, life.query)
    return {"user": life.user, "query": life.query, "listed": listed, "erased": len(erased),
            "files_holding": files, "rows_holding": [m.id for m in rows],
            "occurrences_left": len(files) + len(rows), "keep": life.keep, "held_before": held, "kept": kept}


def replay(life: Life, assistant, updates, sampling: dict, progress: Callable[[str], None] | None = None) -> None:
    """The life's sessions through the chat turn, with the update stage between sessions."""
    for session in life.sessions:
        start = parse_time(str(session["at"]), "session time")
        for i, message in enumerate(session["messages"]):
            _ex, stream = respond(assistant, message, start + timedelta(minutes=2 * i), [], updates=updates,
                                            sampling=sampling)
            try:
                for _piece in stream:
                    pass
            except PersonaError:  # a failing model stores no answer (core/conversation.py); the life goes on
                pass
            if progress:
                progress(life.user)
        last = assistant.last_turn()
        if last is not None:
            updates.queue.enqueue_session(last.session_id)
        updates.run_pending()


def summarize(rows: list[dict]) -> dict:
    held = sum(len(r["held_before"]) for r in rows)
    return {"lives": len(rows),
            "zero_occurrences": round(sum(1 for r in rows if r["occurrences_left"] == 0) / len(rows), 4) if rows else None,
            "occurrences_left": sum(r["occurrences_left"] for r in rows),
            "kept": round(sum(len(r["kept"]) for r in rows) / held, 4) if held else None,
            "listed_equals_erased": all(r["listed"] == r["erased"] for r in rows),
            "items": rows}


def run(lives: list[Life], llm, settings, extractor: str, max_tokens: int,
        progress: Callable[[str], None] | None = None) -> dict:
    """Each life in a fresh temporary store (the chat's own settings, as ``evals/facts.py``), then forget."""
    from personavlm_cli.adapters.text_encoder import TextEncoder
    from personavlm_cli.core.assistant import Assistant
    from personavlm_cli.core.capability import choose_prompt_style
    from personavlm_cli.core.update_stage import UpdateStage
    from personavlm_cli.evals.workspace import scratch, temporary_store

    s = settings
    encoder = TextEncoder()
    rows = []
    for life in lives:
        with scratch("personavlm-forget-") as tmp:
            store = temporary_store(Path(tmp), encoder)
            try:
                assistant = Assistant(store, llm, life.user, profile=s["model.prompt_profile"],
                                      session_gap_minutes=s["chat.session_gap_minutes"],
                                      recent_turns=s["chat.recent_turns"], vision=getattr(llm, "vision", False),
                                      mode=s["chat.retrieval"], model_search=s["chat.model_search"],
                                      answer_tokens=max_tokens,
                                      prompt_style=choose_prompt_style(s["model.prompt_style"], llm))
                updates = UpdateStage(store, llm, life.user, assistant.model_lock, extractor=extractor)
                replay(life, assistant, updates, {"max_tokens": max_tokens, "temperature": 0.0}, progress)
                rows.append(forget_and_measure(store, life))
            finally:
                store.close()
    return summarize(rows)
