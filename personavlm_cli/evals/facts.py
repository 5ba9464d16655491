"""Does the assistant learn true facts about its user, and use them? (`personavlm eval facts`)

Scripted people (the format of ``shared/data/personas``: ``user``, ``sessions`` of ``{at, messages}``,
``ask_at``, ``facts`` of ``{statement, key, question}``) each chat through the real chat turn
(``conversation.respond`` with the update stage: rules learning right after each answer, the queued
model jobs and the session job run as a chat's background thread would, before the next session).
Then each question is asked in a new session, two days later, with learning off. Measures, each
over all facts or statements of all people:

- **learnt**: share of facts whose key appears in a learnt memory (semantic, procedural, or a core
  profile value) after both sessions and their updates;
- **truthful**: share of learnt statements (semantic and procedural texts, core profile values,
  episodic summaries) whose content words all occur in what the user said (``grounding.supported``);
- **grounded**: share of questions whose answer was produced with the key in the model's prompt
  (outside the question itself);
- **answered**: share of questions whose answer contains the key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from personavlm_cli.core.conversation import respond
from personavlm_cli.core.errors import PersonaError
from personavlm_cli.core.learning import grounding
from personavlm_cli.core.memory import MemoryType, parse_time
from personavlm_cli.evals.workspace import scratch, temporary_store

LEARNT_TYPES = (MemoryType.SEMANTIC, MemoryType.PROCEDURAL, MemoryType.CORE)


def mentions(text: str, key: str) -> bool:
    """The key as a word of ``text`` ("tea" is not in "instead"), case-insensitive."""
    return re.search(rf"(?<!\w){re.escape(key)}(?!\w)", text, re.I) is not None


@dataclass
class Person:
    user: str
    sessions: list[dict]
    ask_at: str
    facts: list[dict]


@dataclass
class PersonResult:
    user: str
    facts: int = 0
    learnt: int = 0
    statements: int = 0
    truthful: int = 0
    grounded: int = 0
    answered: int = 0
    untrue: list[str] = field(default_factory=list)
    items: list[dict] = field(default_factory=list)

    def measures(self) -> dict:
        return {"learnt": _share(self.learnt, self.facts), "truthful": _share(self.truthful, self.statements),
                "grounded": _share(self.grounded, self.facts), "answered": _share(self.answered, self.facts)}


def _share(n: int, total: int) -> float | None:
    return round(n / total, 4) if total else None


def load(path: Path) -> list[Person]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PersonaError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersonaError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, list):
        raise PersonaError(f"{path}: expected a JSON array of people")
    people = []
    for i, p in enumerate(data):
        try:
            person = Person(user=str(p["user"]), sessions=list(p["sessions"]), ask_at=str(p["ask_at"]),
                            facts=list(p["facts"]))
            for s in person.sessions:
                parse_time(str(s["at"]), "session time")
                if not all(isinstance(m, str) for m in s["messages"]):
                    raise TypeError("messages must be text")
            parse_time(person.ask_at, "ask_at")
            for f in person.facts:
                str(f["key"]), str(f["question"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PersonaError(f"{path}: person {i + 1} is not in the personas format ({exc})") from None
        people.append(person)
    if not people:
        raise PersonaError(f"{path}: no people")
    return people


def learnt_statements(store) -> list[tuple[str, str]]:
    """(type, text) of every current learnt statement: semantic, procedural, episodic, core values."""
    out = []
    for m in store.records.list(types=[MemoryType.SEMANTIC, MemoryType.PROCEDURAL, MemoryType.EPISODIC]):
        out.append((m.type, m.text))
    core = store.records.list(types=[MemoryType.CORE])
    if core:
        for _k, v in (core[-1].meta.get("facts") or {}).items():
            out.append((MemoryType.CORE, str(v)))
    return out


def run_person(person: Person, make_assistant: Callable, sampling: dict,
               progress: Callable[[str], None] | None = None) -> PersonResult:
    """Replay one person into the store behind ``make_assistant()`` -> (assistant, updates)."""
    assistant, updates = make_assistant()
    store = assistant.store
    said: list[str] = []
    for session in person.sessions:
        start = parse_time(str(session["at"]), "session time")
        for i, message in enumerate(session["messages"]):
            at = start + timedelta(minutes=2 * i)
            _ex, stream = respond(assistant, message, at, [], updates=updates, sampling=sampling)
            for _piece in stream:
                pass
            said.append(message)
            if progress:
                progress(person.user)
        # What a chat's background thread does between sessions: the queued jobs, and this session's.
        last = assistant.last_turn()
        if last is not None:
            updates.queue.enqueue_session(last.session_id)
        updates.run_pending()
    result = PersonResult(user=person.user, facts=len(person.facts))
    learnt = learnt_statements(store)
    learnt_text = " \n ".join(t for kind, t in learnt if kind in LEARNT_TYPES)
    for kind, text in learnt:
        result.statements += 1
        if grounding.supported(text, said):
            result.truthful += 1
        else:
            result.untrue.append(f"{kind}: {text}")
    ask = parse_time(person.ask_at, "ask_at")
    for j, fact in enumerate(person.facts):
        key = str(fact["key"])
        ex, stream = respond(assistant, str(fact["question"]), ask + timedelta(minutes=2 * j), [], updates=None,
                                       sampling=sampling)
        answer = "".join(stream).strip()
        prompt = "\n".join(_text(m.get("content")) for m in ex.prompt[:-1])
        last = _text(ex.prompt[-1].get("content")) if ex.prompt else ""
        last = last.rsplit(str(fact["question"]), 1)[0]  # the question itself is no evidence
        in_context = mentions(prompt + "\n" + last, key)
        item = {"question": fact["question"], "key": fact["key"], "answer": answer,
                "learnt": mentions(learnt_text, key), "grounded": in_context, "answered": mentions(answer, key),
                "recalled": [m.id for m in ex.reasoning.used] if ex.reasoning else []}
        result.items.append(item)
        result.learnt += item["learnt"]
        result.grounded += item["grounded"]
        result.answered += item["answered"]
        if progress:
            progress(person.user)
    return result


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def summarize(results: list[PersonResult]) -> dict:
    total = PersonResult(user="overall")
    for r in results:
        for name in ("facts", "learnt", "statements", "truthful", "grounded", "answered"):
            setattr(total, name, getattr(total, name) + getattr(r, name))
    return {
        "overall": total.measures(),
        "counts": {name: getattr(total, name) for name in ("facts", "learnt", "statements", "truthful",
                                                           "grounded", "answered")},
        "people": {r.user: {**r.measures(), "untrue": r.untrue, "items": r.items} for r in results},
    }


def run(people: list[Person], llm, settings, extractor: str, max_tokens: int,
        progress: Callable[[str], None] | None = None) -> list[PersonResult]:
    """Each person in a fresh temporary store, through the chat turn the chat's own settings build
    (``model.prompt_profile``, ``model.prompt_style``, ``chat.*``) with the update stage learning by
    ``extractor``."""
    from personavlm_cli.adapters.text_encoder import TextEncoder
    from personavlm_cli.core.assistant import Assistant
    from personavlm_cli.core.capability import choose_prompt_style
    from personavlm_cli.core.update_stage import UpdateStage

    s = settings
    encoder = TextEncoder()
    results = []
    for person in people:
        with scratch("personavlm-facts-") as tmp:
            store = temporary_store(Path(tmp), encoder)
            try:
                def make(store=store, person=person):
                    a = Assistant(store, llm, person.user, profile=s["model.prompt_profile"],
                                  session_gap_minutes=s["chat.session_gap_minutes"],
                                  recent_turns=s["chat.recent_turns"], vision=getattr(llm, "vision", False),
                                  mode=s["chat.retrieval"], model_search=s["chat.model_search"],
                                  answer_tokens=max_tokens,
                                  prompt_style=choose_prompt_style(s["model.prompt_style"], llm))
                    return a, UpdateStage(store, llm, person.user, a.model_lock, extractor=extractor)

                results.append(run_person(person, make, {"max_tokens": max_tokens, "temperature": 0.0},
                                          progress=progress))
            finally:
                store.close()
    return results
