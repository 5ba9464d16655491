"""The update stage: after an answer is shown, never before it.

Per turn: personality inference and the momentum update, then semantic memory extraction. Per
chat session (after a 60-minute gap, on exit, or at the next start): episodic topics, procedural
habits and goals, and the core profile. Work is queued in the record file first, so a crash or a
kill loses none of it; every job is idempotent, so running one twice after a kill duplicates
nothing. A malformed model answer is retried once, then skipped with a log line.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from typing import Callable

from personavlm_cli.core import personality as pem
from personavlm_cli.core.errors import PersonaError
from personavlm_cli.core.gate import ModelGate
from personavlm_cli.core.memory import Memory, iso, now
from personavlm_cli.core.recall import Query, recall
from personavlm_cli.core.store import MemoryStore, new_memory

log = logging.getLogger("personavlm.update")

NEAR_DUPLICATE = 0.92
RELATED = 0.45
CHANGE_CUES = re.compile(
    r"\b(switch(ed|ing)?|chang(ed|ing)|no longer|not any ?more|anymore|stopped|instead|now (prefer|like|love|use|drink|eat)|"
    r"moved|quit|gave up|replaced|used to|prefer now|actually)\b", re.I)
_STOP = set("""a an the i i'm im me my mine you your we our they them he she it its is am are was were be been being
to of in on at for with from by and or but not no so do does did have has had this that these those there here
what which who whom when where why how all any some very really just also too like love likes loves""".split())

SEMANTIC_SCHEMA = {
    "type": "object",
    "properties": {
        "reason": {"type": "string", "maxLength": 160},
        "decision": {"type": "boolean"},
        "content": {"type": "string", "maxLength": 240},
        "keywords": {"type": "string", "maxLength": 80},
    },
    "required": ["reason", "decision", "content", "keywords"],
    "additionalProperties": False,
}

PERSONALITY_SCHEMA = {
    "type": "object",
    "properties": {t: {"type": "integer", "enum": [1, 2, 3, 4, 5]} for t in pem.TRAITS},
    "required": list(pem.TRAITS),
    "additionalProperties": False,
}

PROCEDURAL_SCHEMA = {
    "type": "object",
    "properties": {"entries": {"type": "array", "maxItems": 5, "items": {
        "type": "object",
        "properties": {"key": {"type": "string", "maxLength": 40}, "text": {"type": "string", "maxLength": 200}},
        "required": ["key", "text"], "additionalProperties": False}}},
    "required": ["entries"], "additionalProperties": False,
}

CORE_SCHEMA = {
    "type": "object",
    "properties": {"facts": {"type": "array", "maxItems": 10, "items": {
        "type": "object",
        "properties": {"key": {"type": "string", "maxLength": 40}, "value": {"type": "string", "maxLength": 160}},
        "required": ["key", "value"], "additionalProperties": False}}},
    "required": ["facts"], "additionalProperties": False,
}


def episodic_schema(rounds: int) -> dict:
    return {
        "type": "object",
        "properties": {"topics": {"type": "array", "maxItems": 4, "items": {
            "type": "object",
            "properties": {
                "summary": {"type": "string", "maxLength": 300},
                "keywords": {"type": "string", "maxLength": 80},
                "rounds": {"type": "array", "maxItems": rounds,
                           "items": {"type": "integer", "enum": list(range(1, rounds + 1))}},
            },
            "required": ["summary", "keywords", "rounds"], "additionalProperties": False}}},
        "required": ["topics"], "additionalProperties": False,
    }


def stable_id(kind: str, *parts: str) -> str:
    """Ids derived from their sources, so a job re-run after a kill writes the same rows again."""
    prefix = {"semantic": "sem", "episodic": "epi", "procedural": "proc", "core": "core"}[kind]
    return f"{prefix}_{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:10]}"


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9']+", text.lower()) if w not in _STOP and len(w) > 2}


def grounded(memory: str, message: str) -> bool:
    """A memory must be about what the user said: share a quarter of its content words with it.

    Small models asked to extract facts invent them ("Your name is {user_name}"); this check keeps
    paraphrases ("The user is a nurse" from "I'm a nurse") and drops inventions.
    """
    said = {w[:5] for w in content_words(message)}
    words = {w[:5] for w in content_words(memory)} - {"user", "user'", "users"}
    if not words:
        return False
    shared = len(words & said)
    return shared >= 1 and shared / len(words) >= 0.25


def _rounds(turns: list[Memory]) -> list[tuple[Memory, Memory | None]]:
    out, pending = [], None
    for t in turns:
        if t.role == "user":
            if pending is not None:
                out.append((pending, None))
            pending = t
        elif pending is not None:
            out.append((pending, t))
            pending = None
    if pending is not None:
        out.append((pending, None))
    return out


def _dialogue(rounds) -> str:
    lines = []
    for i, (u, a) in enumerate(rounds, 1):
        lines.append(f"Round {i} ({u.occurred_at[:16].replace('T', ' ')}):\nUser: {u.text}")
        if a is not None:
            lines.append(f"Assistant: {a.text}")
    return "\n".join(lines)


class UpdateStage:
    """Runs queued update jobs against one store with one model."""

    def __init__(self, store: MemoryStore, model, user: str, model_lock: ModelGate | None = None,
                 enabled: bool = True):
        self.store = store
        self.model = model
        self.user = user
        self.model_lock = model_lock or ModelGate()
        self.enabled = enabled

    # -- queueing ---------------------------------------------------------------------------------

    def enqueue_turn(self, user_turn: Memory, assistant_turn: Memory | None) -> None:
        self.store.records.add_job("turn", {"user": user_turn.id,
                                            "assistant": assistant_turn.id if assistant_turn else None})

    def enqueue_session(self, session_id: str) -> None:
        if not any(j["payload"].get("session") == session_id for j in self.store.records.jobs(["session"])):
            self.store.records.add_job("session", {"session": session_id})

    def enqueue_unconsolidated(self, except_session: str | None = None) -> None:
        """Sessions with turns that no consolidation has seen yet (a kill before exit, say)."""
        done = self.store.records.get_meta("consolidated", {}) or {}
        for session, n in self.store.records.turn_counts().items():
            if session != except_session and done.get(session) != n:
                self.enqueue_session(session)

    def pending(self) -> list[dict]:
        return [j for j in self.store.records.jobs() if j["kind"] in ("turn", "session")]

    # -- running ----------------------------------------------------------------------------------

    def run_pending(self, stop: threading.Event | None = None, progress: Callable[[int, int], None] | None = None) -> int:
        jobs = self.pending()
        done = 0
        for job in jobs:
            if stop is not None and stop.is_set():
                break
            self.run_job(job)
            done += 1
            if progress:
                progress(done, len(jobs))
        return done

    def run_job(self, job: dict) -> None:
        self.store.records.job_attempted(job["id"])
        try:
            if self.enabled:
                if job["kind"] == "turn":
                    self.turn(job["payload"])
                elif job["kind"] == "session":
                    self.session(job["payload"]["session"])
        except PersonaError as exc:
            log.warning("update job %s skipped: %s", job["id"], exc)
        self.store.records.finish_job(job["id"])

    def _ask(self, messages, schema, max_tokens=200) -> dict | None:
        try:
            # Background use: an answer the user is waiting for goes first.
            gate = self.model_lock.background() if hasattr(self.model_lock, "background") else self.model_lock
            with gate:
                return self.model.complete_json(messages, schema, max_tokens=max_tokens, retries=1)
        except PersonaError as exc:
            log.warning("model gave no valid answer (%s); skipped", exc)
            return None

    # -- per turn ---------------------------------------------------------------------------------

    def turn(self, payload: dict) -> None:
        user_turn = self.store.records.get(payload["user"])
        if user_turn is None:  # forgotten meanwhile
            return
        assistant = self.store.records.get(payload["assistant"]) if payload.get("assistant") else None
        self.update_personality(user_turn, assistant)
        self.extract_semantic(user_turn, assistant)

    def update_personality(self, user_turn: Memory, assistant: Memory | None) -> None:
        history = self.store.records.personality_history()
        if any(h["turn_id"] == user_turn.id for h in history):
            return
        messages = [
            {"role": "system", "content": "You rate the user's momentary Big Five personality state from their "
             "message, on integers 1 (very low) to 5 (very high); 3 means no signal. Reply with JSON."},
            {"role": "user", "content": f"User message:\n{user_turn.text}"},
        ]
        inferred = self._ask(messages, PERSONALITY_SCHEMA, max_tokens=80)
        if inferred is None:
            inferred = {t: 3 for t in pem.TRAITS}
        self.apply_personality(inferred, user_turn.id, at=user_turn.occurred_at)

    def apply_personality(self, inferred: dict, turn_id: str | None, at: str) -> dict:
        records = self.store.records
        current = records.get_meta("personality") or pem.initial()
        m = records.get_meta("personality_updates") or 0
        after, lam, skipped = pem.evolve(current, inferred, m)
        with records.transaction():
            records.add_personality({"at": at, "turn_id": turn_id, "m": m, "lambda": lam, "inferred": inferred,
                                     "before": current, "after": after,
                                     "note": f"neutral: {', '.join(skipped)}" if skipped else ""})
            records.set_meta("personality", after)
            records.set_meta("personality_updates", m + 1)
        return after

    def extract_semantic(self, user_turn: Memory, assistant: Memory | None) -> Memory | None:
        images = [m for m in self.store.records.derived_from([user_turn.id]) if m.type == "image"]
        image_note = f"\n(The user attached {len(images)} image(s) to this message.)" if images else ""
        messages = [
            {"role": "system", "content":
             "You are a memory analyst. Decide whether the user's message holds something worth remembering "
             "long-term: an explicit request to remember, a core fact about the user (job, family, pets, life "
             "events), a preference or dislike, a correction, or a long-term goal. Small talk and passing "
             "questions are not. If yes, write content as one short third-person sentence about the user and a "
             "few comma-separated keywords. Do not invent anything. Reply with JSON."},
            {"role": "user", "content": f"User message:\n{user_turn.text}{image_note}"},
        ]
        out = self._ask(messages, SEMANTIC_SCHEMA, max_tokens=200)
        if not out or not out["decision"] or not out["content"].strip():
            return None
        if not grounded(out["content"], user_turn.text):
            log.info("extracted memory not grounded in the message; dropped")
            return None
        sources = [user_turn.id] + [m.id for m in images]
        memory = new_memory("semantic", out["content"].strip(), user_turn.occurred_at,
                            keywords=out["keywords"].strip(), source_ids=sources, session_id=user_turn.session_id,
                            meta={"reason": out["reason"], "origin": "extracted"})
        memory.id = stable_id("semantic", user_turn.id)
        return self.integrate_semantic(memory)

    def integrate_semantic(self, memory: Memory) -> Memory:
        """Add a semantic memory without pile-up: merge a near-duplicate, supersede what it contradicts."""
        records = self.store.records
        if records.get(memory.id) is not None:
            return records.get(memory.id)
        hits = recall(self.store, Query(text=memory.text, types=("semantic",)), k=5, weights={"lexical": 0.0})
        for hit in hits:
            old = hit.memory
            similarity = hit.signals.get("dense", {}).get("score", 0.0)
            if similarity >= NEAR_DUPLICATE:
                old.source_ids = list(dict.fromkeys(old.source_ids + memory.source_ids))
                old.meta.setdefault("merged", []).append({"at": memory.occurred_at, "text": memory.text})
                self.store.replace(old)
                return old
            shared = content_words(old.text) & content_words(memory.text)
            if similarity >= RELATED and shared and CHANGE_CUES.search(memory.text):
                memory.meta["supersedes"] = old.id
                self.store.supersede(old, memory, at=memory.occurred_at)
                return memory
        self.store.add([memory])
        return memory

    # -- per session ------------------------------------------------------------------------------

    def session(self, session_id: str) -> None:
        turns = self.store.records.list(types=["turn"], session_id=session_id)
        if not turns:
            return
        self.episodes(session_id, turns)
        self.procedural(turns)
        self.core(turns)
        done = self.store.records.get_meta("consolidated", {}) or {}
        done[session_id] = len(turns)
        self.store.records.set_meta("consolidated", done)

    def episodes(self, session_id: str, turns: list[Memory]) -> None:
        rounds = _rounds(turns)
        old = [m for m in self.store.records.list(types=["episodic"], session_id=session_id, include_superseded=True)]
        new: list[Memory] = []
        for start in range(0, len(rounds), 20):
            window = rounds[start:start + 20]
            messages = [
                {"role": "system", "content":
                 "You are a topic analysis engine. Group the rounds of this conversation into its independent "
                 "topics. For each topic give a short third-person summary of what the user said and did, a few "
                 "keywords, and the round numbers it covers. Reply with JSON."},
                {"role": "user", "content": _dialogue(window)},
            ]
            out = self._ask(messages, episodic_schema(len(window)), max_tokens=400) or {"topics": []}
            topics = [t for t in out.get("topics", []) if t.get("summary", "").strip()]
            if not topics:  # as the paper: one topic covering everything
                topics = [{"summary": "Conversation: " + "; ".join(u.text[:60] for u, _ in window),
                           "keywords": "", "rounds": list(range(1, len(window) + 1))}]
            covered = set()
            for t in topics:
                t["rounds"] = sorted({r for r in t.get("rounds", []) if 1 <= r <= len(window)})
                covered.update(t["rounds"])
            missing = [r for r in range(1, len(window) + 1) if r not in covered]
            topics[0]["rounds"] = sorted(set(topics[0]["rounds"]) | set(missing))
            for t in topics:
                if not t["rounds"]:
                    t["rounds"] = [len(window)]
                members = [m for r in t["rounds"] for m in window[r - 1] if m is not None]
                members.sort(key=lambda m: m.occurred_at)
                episode = new_memory("episodic", t["summary"].strip(), members[0].occurred_at,
                                     occurred_end=members[-1].occurred_at, keywords=t["keywords"].strip(),
                                     source_ids=[m.id for m in members], session_id=session_id)
                episode.id = stable_id("episodic", session_id, str(start), episode.text, *episode.source_ids)
                if all(e.id != episode.id for e in new):
                    new.append(episode)
        keep = {m.id for m in new}
        stale = [m.id for m in old if m.id not in keep]
        if stale:
            # Replaced summaries, not a user's erasure: no rebuild of the vector index (store.erase).
            self.store.erase(stale, "consolidation-replace", purge=False)
        fresh = [m for m in new if self.store.records.get(m.id) is None]
        self.store.add(fresh)

    def procedural(self, turns: list[Memory]) -> None:
        current = self.store.records.list(types=["procedural"])
        listing = "\n".join(f"- {m.meta.get('key', m.id)}: {m.text}" for m in current) or "(none)"
        messages = [
            {"role": "system", "content":
             "You are a behaviour-pattern engine. From the current list and the new conversation, write the "
             "user's long-term goals and habits or routines: at most 5 entries, each one third-person sentence "
             "with a short unique key. Merge related habits; drop goals that are completed or changed. Return "
             "an empty list if nothing applies. Reply with JSON."},
            {"role": "user", "content": f"Current list:\n{listing}\n\nConversation:\n{_dialogue(_rounds(turns))}"},
        ]
        out = self._ask(messages, PROCEDURAL_SCHEMA, max_tokens=400)
        if out is None:
            return
        at = turns[-1].occurred_at
        sources = [t.id for t in turns if t.role == "user"]
        by_key = {m.meta.get("key"): m for m in current}
        seen = set()
        for entry in out["entries"]:
            key = re.sub(r"\W+", "_", entry["key"].strip().lower()).strip("_")[:40]
            text = entry["text"].strip()
            if not key or not text or key in seen:
                continue
            seen.add(key)
            old = by_key.get(key)
            if old is not None and old.text == text:
                continue
            memory = new_memory("procedural", text, at, source_ids=sources + ([old.id] if old else []),
                                keywords=key.replace("_", " "), session_id=turns[-1].session_id, meta={"key": key})
            memory.id = stable_id("procedural", key, text, at)
            if self.store.records.get(memory.id):
                continue
            if old is not None:
                self.store.supersede(old, memory, at=at)
            else:
                self.store.add([memory])
        if out["entries"]:
            for key, old in by_key.items():
                if key not in seen:  # the rewritten list dropped it: completed or changed
                    self.store.supersede(old, None, at=at)

    def core(self, turns: list[Memory]) -> None:
        current = self.store.records.list(types=["core"])
        old = current[-1] if current else None
        facts = dict(old.meta.get("facts", {})) if old else {"name": self.user}
        listing = "\n".join(f"{k}: {v}" for k, v in facts.items())
        messages = [
            {"role": "system", "content":
             "You are a profile manager. Update the user's profile from the conversation: identity facts "
             "(name, age, occupation, family, location) overwrite old values; keep preferences to the 5-7 "
             "most recent and strongest; ignore temporary things; never invent. Return the facts that change "
             "or are new, as key/value pairs. Reply with JSON."},
            {"role": "user", "content": f"Current profile:\n{listing}\n\nConversation:\n{_dialogue(_rounds(turns))}"},
        ]
        out = self._ask(messages, CORE_SCHEMA, max_tokens=300)
        if out is None:
            return
        updated = dict(facts)
        for fact in out["facts"]:
            key = re.sub(r"\s+", " ", fact["key"].strip().lower())[:40]
            value = fact["value"].strip()
            if key and value and key != "name":
                updated[key] = value
        if old is not None and updated == facts:
            return
        at = turns[-1].occurred_at
        text = "\n".join(f"{k}: {v}" for k, v in updated.items())
        sources = [t.id for t in turns if t.role == "user"] + ([old.id] if old else [])
        memory = new_memory("core", text, at, source_ids=sources, session_id=turns[-1].session_id,
                            meta={"facts": updated})
        memory.id = stable_id("core", text, at)
        if self.store.records.get(memory.id):
            return
        if old is not None:
            self.store.supersede(old, memory, at=at)
        else:
            self.store.add([memory])


class BackgroundUpdates:
    """A thread that drains the job queue while the user reads and types."""

    def __init__(self, make_stage: Callable[[], UpdateStage]):
        self._make_stage = make_stage
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="personavlm-update", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> "BackgroundUpdates":
        self._thread.start()
        return self

    def poke(self) -> None:
        self._idle.clear()
        self._wake.set()

    def _run(self) -> None:
        stage = self._make_stage()
        try:
            while not self._stop.is_set():
                self._wake.wait(0.5)
                self._wake.clear()
                if stage.pending():
                    self._idle.clear()
                    stage.run_pending(stop=self._stop)
                self._idle.set()
        except BaseException as exc:  # reported by the CLI; the queue keeps the work for next time
            self.error = exc
            self._idle.set()
        finally:
            stage.store.records.close()

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self._idle.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=60)


def now_iso() -> str:
    return iso(now())
