"""Lives that change: does memory stay true? (`personavlm eval facts --lived FILE`)

Scripted lives (the format of ``shared/data/lived``: ``user``, ``sessions`` of ``{at, messages}``, and
``expect``) chat through the real chat turn with learning on, as ``evals/facts.py`` does (rules right
after each answer, the queued jobs and the session's job between sessions). Then, per category:

- **profile**: share of the expected core-profile fields whose value contains the expected phrase;
- **changes (search)**: share of ``current`` questions whose recall (``memory search``'s ranking) puts
  a memory containing ``newest`` before every memory containing ``old``, with ``newest`` found;
- **changes (context)**: the same over the memories of the answer's prompt, in their recall order
  (the question asked in a new session two days after the last one, learning off), ``newest``
  counted as found when the core profile in the prompt holds it; past memories are labelled there;
- **learnt questions**: learnt memories (semantic, procedural, episodic, core values) that contain a
  ``not_learnt`` phrase: 0 is the bar;
- **forgetting**: after forgetting by ``forget.query`` (the rule `memory forget --query` uses), the
  files of the user's store that still hold the query's bytes (0 is the bar), and the share of the
  ``keep`` fields that still hold their values.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from personavlm_cli.core.conversation import respond
from personavlm_cli.core.errors import PersonaError
from personavlm_cli.core.memory import MemoryType, parse_time
from personavlm_cli.core.recall import Query, recall


@dataclass
class Life:
    user: str
    sessions: list[dict]
    expect: dict


@dataclass
class LifeResult:
    user: str
    fields: int = 0
    fields_held: int = 0
    current: int = 0
    current_search: int = 0
    current_context: int = 0
    learnt_questions: int = 0
    forget_left: int | None = None
    keep: int = 0
    kept: int = 0
    items: list[dict] = field(default_factory=list)

    def measures(self) -> dict:
        return {"profile": _share(self.fields_held, self.fields),
                "changes_search": _share(self.current_search, self.current),
                "changes_context": _share(self.current_context, self.current),
                "learnt_questions": self.learnt_questions, "forget_left": self.forget_left,
                "forget_kept": _share(self.kept, self.keep)}


def _share(n: int, total: int) -> float | None:
    return round(n / total, 4) if total else None


def is_lived(path: Path) -> bool:
    """Is ``path`` a file of lives (entries with ``expect``) rather than of scripted people?"""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, list) and bool(data) and all(isinstance(p, dict) and "expect" in p for p in data)


def load(path: Path) -> list[Life]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PersonaError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersonaError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, list) or not data:
        raise PersonaError(f"{path}: expected a JSON array of lives")
    lives = []
    for i, p in enumerate(data):
        try:
            life = Life(user=str(p["user"]), sessions=list(p["sessions"]), expect=dict(p["expect"]))
            for s in life.sessions:
                parse_time(str(s["at"]), "session time")
                if not all(isinstance(m, str) for m in s["messages"]):
                    raise TypeError("messages must be text")
            for c in life.expect.get("current", []):
                str(c["ask"]), str(c["newest"]), str(c["old"])
        except (KeyError, TypeError, ValueError, AttributeError, PersonaError) as exc:
            raise PersonaError(f"{path}: life {i + 1} is not in the lived format ({exc})") from None
        lives.append(life)
    return lives


def _has(text: str, phrase: str) -> bool:
    return phrase.lower() in (text or "").lower()


def newest_first(texts: list[str], newest: str, old: str, also: str = "") -> bool:
    """``newest`` is found (in ``texts`` or in ``also``), and comes before every text holding ``old``."""
    at_new = next((i for i, t in enumerate(texts) if _has(t, newest)), None)
    at_old = next((i for i, t in enumerate(texts) if _has(t, old) and not _has(t, newest)), None)
    if at_new is None:
        return _has(also, newest) and at_old is None
    return at_old is None or at_new < at_old


def profile_facts(store) -> dict:
    core = store.records.list(types=[MemoryType.CORE])
    return dict(core[-1].meta.get("facts") or {}) if core else {}


def learnt_texts(store) -> list[str]:
    out = [m.text for m in store.records.list(types=[MemoryType.SEMANTIC, MemoryType.PROCEDURAL, MemoryType.EPISODIC])]
    out += [f"{k}: {v}" for k, v in profile_facts(store).items()]
    return out


def bytes_left(root: Path, text: str) -> list[str]:
    """Files under ``root`` whose bytes hold ``text`` (case-insensitive, UTF-8)."""
    needle = text.lower().encode()
    return [str(p.relative_to(root)) for p in sorted(root.rglob("*")) if p.is_file() and needle in p.read_bytes().lower()]


def run_life(life: Life, make_assistant: Callable, sampling: dict, root: Path | None = None,
             progress: Callable[[str], None] | None = None) -> LifeResult:
    """Replay one life into the store behind ``make_assistant()`` -> (assistant, updates); ``root`` is
    the store's directory (for the forgetting check; skipped without it)."""
    assistant, updates = make_assistant()
    store = assistant.store
    last = None
    for session in life.sessions:
        start = parse_time(str(session["at"]), "session time")
        for i, message in enumerate(session["messages"]):
            last = start + timedelta(minutes=2 * i)
            _ex, stream = respond(assistant, message, last, [], updates=updates, sampling=sampling)
            for _piece in stream:
                pass
            if progress:
                progress(life.user)
        turn = assistant.last_turn()
        if turn is not None:
            updates.queue.enqueue_session(turn.session_id)
        updates.run_pending()
    result = LifeResult(user=life.user)
    expect = life.expect
    facts = profile_facts(store)
    for name, phrase in (expect.get("profile") or {}).items():
        result.fields += 1
        held = _has(str(facts.get(name, "")), str(phrase))
        result.fields_held += held
        result.items.append({"check": "profile", "field": name, "want": phrase, "got": facts.get(name), "ok": held})
    learnt = learnt_texts(store)
    for phrase in expect.get("not_learnt") or []:
        found = [t for t in learnt if _has(t, str(phrase))]
        result.learnt_questions += len(found)
        result.items.append({"check": "not_learnt", "phrase": phrase, "found": found, "ok": not found})
    ask = (last or parse_time(str(life.sessions[0]["at"]))) + timedelta(days=2)
    for j, item in enumerate(expect.get("current") or []):
        result.current += 1
        hits = recall(store, Query(text=str(item["ask"])), k=10)
        searched = [h.memory.text for h in hits]
        in_search = newest_first(searched, str(item["newest"]), str(item["old"]))
        ex, stream = respond(assistant, str(item["ask"]), ask + timedelta(minutes=2 * j), [], updates=None,
                                       sampling=sampling)
        answer = "".join(stream).strip()
        used = [m.text for m in (ex.reasoning.used if ex.reasoning else [])]
        profile = "\n".join(f"{k}: {v}" for k, v in profile_facts(store).items())
        in_context = newest_first(used, str(item["newest"]), str(item["old"]), also=profile)
        result.current_search += in_search
        result.current_context += in_context
        result.items.append({"check": "current", "ask": item["ask"], "newest": item["newest"], "old": item["old"],
                             "search": in_search, "context": in_context, "answer": answer,
                             "searched": searched[:5], "used": used[:6]})
        if progress:
            progress(life.user)
    forget = expect.get("forget") or {}
    if forget.get("query") and root is not None:
        from personavlm_cli.core import forgetting
        from personavlm_cli.core.update_queue import UpdateQueue

        query = str(forget["query"])
        ids = [m.id for m in forgetting.matching(store, query)]
        if ids:
            p = forgetting.plan(store, ids)
            queue = UpdateQueue(store.records) if any(m.type == MemoryType.TURN for m in p.targets + p.derived) else None
            forgetting.execute(store, p, "forget-query", queue)
        store.close()
        left = bytes_left(root, query)
        result.forget_left = len(left)
        reopened = make_assistant()[0].store
        facts_after = profile_facts(reopened)
        for name in forget.get("keep") or []:
            result.keep += 1
            want = (expect.get("profile") or {}).get(name)
            ok = bool(facts_after.get(name)) and (want is None or _has(facts_after[name], str(want)))
            result.kept += ok
        result.items.append({"check": "forget", "query": query, "files_left": left,
                             "kept": result.kept, "keep": result.keep})
    return result


def summarize(results: list[LifeResult]) -> dict:
    total = LifeResult(user="overall", forget_left=None)
    for r in results:
        for name in ("fields", "fields_held", "current", "current_search", "current_context", "learnt_questions",
                     "keep", "kept"):
            setattr(total, name, getattr(total, name) + getattr(r, name))
        if r.forget_left is not None:
            total.forget_left = (total.forget_left or 0) + r.forget_left
    return {"overall": total.measures(), "lives": {r.user: {**r.measures(), "items": r.items} for r in results}}


def run(lives: list[Life], llm, settings, extractor: str, max_tokens: int,
        progress: Callable[[str], None] | None = None) -> list[LifeResult]:
    """Each life in a fresh temporary store, through the chat turn the chat's own settings build."""
    from personavlm_cli.adapters.text_encoder import TextEncoder
    from personavlm_cli.core.assistant import Assistant
    from personavlm_cli.core.capability import choose_prompt_style
    from personavlm_cli.core.update_stage import UpdateStage
    from personavlm_cli.evals.workspace import scratch, temporary_store

    s = settings
    encoder = TextEncoder()
    results = []
    for life in lives:
        with scratch("personavlm-lived-") as tmp:
            stores: list[Any] = []

            def make(life=life, tmp=tmp, stores=stores):
                store = temporary_store(Path(tmp), encoder)
                stores.append(store)
                a = Assistant(store, llm, life.user, profile=s["model.prompt_profile"],
                              session_gap_minutes=s["chat.session_gap_minutes"],
                              recent_turns=s["chat.recent_turns"], vision=getattr(llm, "vision", False),
                              mode=s["chat.retrieval"], model_search=s["chat.model_search"],
                              answer_tokens=max_tokens, prompt_style=choose_prompt_style(s["model.prompt_style"], llm))
                return a, UpdateStage(store, llm, life.user, a.model_lock, extractor=extractor)

            try:
                results.append(run_life(life, make, {"max_tokens": max_tokens, "temperature": 0.0},
                                        root=Path(tmp), progress=progress))
            finally:
                for store in stores:
                    try:
                        store.close()
                    except Exception:  # closed already by the forgetting check
                        pass
    return results


def category_rows(result: dict) -> list[tuple[str, str, str]]:
    """(category, value, bar) rows for the table beside the facts figures."""
    o = result["overall"]

    def cell(v):
        return "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))

    return [("profile after changes", cell(o["profile"]), ""),
            ("changes: current first in search", cell(o["changes_search"]), ">= 0.90"),
            ("changes: current first in the answer's context", cell(o["changes_context"]), ">= 0.90"),
            ("learnt questions and requests", cell(o["learnt_questions"]), "0"),
            ("forgetting: files still holding the text", cell(o["forget_left"]), "0"),
            ("forgetting: kept fields", cell(o["forget_kept"]), "1.00")]


