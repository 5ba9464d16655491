"""The update stage: after an answer is shown, never before it.

Per turn: personality inference and the momentum update, then semantic memory extraction. Per
chat session (after a 60-minute gap, on exit, or at the next start): episodic topics, procedural
habits and goals, and the core profile. Work is queued in the record file first, so a crash or a
kill loses none of it; every job is idempotent, so running one twice after a kill duplicates
nothing. A malformed model answer is retried once, then skipped with a log line.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any, cast

from personavlm_cli.core import personality as pem
from personavlm_cli.core.errors import ModelInterrupted, PersonaError
from personavlm_cli.core.gate import ModelGate
from personavlm_cli.core.learning import grounding, profile
from personavlm_cli.core.learning.learner import Learner, stable_id
from personavlm_cli.core.memory import Memory, MemoryType, iso, now
from personavlm_cli.core.ports import ChatModel, Messages, RecordStore
from personavlm_cli.core.store import MemoryStore, new_memory
from personavlm_cli.core.update_queue import UpdateQueue

log = logging.getLogger("personavlm.update")

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
        "properties": {"key": {"type": "string", "enum": list(profile.FIELDS)}, "value": {"type": "string", "maxLength": 160}},
        "required": ["key", "value"], "additionalProperties": False}}},
    "required": ["facts"], "additionalProperties": False,
}


def episodic_schema(rounds: int) -> dict[str, Any]:
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


def _rounds(turns: list[Memory]) -> list[tuple[Memory, Memory | None]]:
    out: list[tuple[Memory, Memory | None]] = []
    pending: Memory | None = None
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


def _dialogue(rounds: list[tuple[Memory, Memory | None]]) -> str:
    lines = []
    for i, (u, a) in enumerate(rounds, 1):
        lines.append(f"Round {i} ({u.occurred_at[:16].replace('T', ' ')}):\nUser: {u.text}")
        if a is not None:
            lines.append(f"Assistant: {a.text}")
    return "\n".join(lines)


EXTRACTORS = ("auto", "rules", "model")


Interrupted = ModelInterrupted  # a background model call was stopped: the job stays queued


def forget_personality_evidence(records: RecordStore, ids: Iterable[str]) -> None:
    """Forgetting a message takes back what it said about the user's personality: its evidence goes and
    the reading is rebuilt from the rest (in the caller's transaction), with a history row."""
    state = records.get_meta("personality_evidence")
    items = (state or {}).get("items") or []
    kept = [e for e in items if e.get("turn_id") not in set(ids)]
    if len(kept) == len(items):
        return
    totals = pem.totals_of(kept)
    before, after = records.get_meta("personality") or pem.initial(), pem.vector_of(totals)
    m = records.get_meta("personality_updates") or 0
    gone = {e.get("turn_id") for e in items} - {e.get("turn_id") for e in kept}
    records.add_personality({"at": iso(now()), "turn_id": None, "m": m, "lambda": None, "inferred": None,
                             "before": before, "after": after, "note": f"forgotten: {len(gone)} message(s) of evidence"})
    records.set_meta("personality_evidence", {"totals": totals, "items": kept})
    records.set_meta("personality", after)
    records.set_meta("personality_updates", m + 1)


class UpdateStage:
    """The worker: runs queued update jobs against one store with one model.

    ``extractor`` says who decides what is learnt: ``rules`` (the user's own sentences, chosen by
    ``core/learning/``; the default for small models) or ``model`` (the paper's generative prompts,
    for a capable model). Either way every learnt text must pass ``grounding.supported`` against the
    user's own turns it cites, or it is dropped and counted (meta ``learning_dropped``).
    """

    def __init__(self, store: MemoryStore, model: ChatModel | None, user: str, model_lock: ModelGate | None = None,
                 enabled: bool = True, extractor: str = "rules"):
        self.store = store
        self.model = model
        self.user = user
        self.model_lock = model_lock or ModelGate()
        self.enabled = enabled
        self.extractor = extractor if extractor in ("rules", "model") else "rules"
        self.queue = UpdateQueue(store.records)
        self.learner = Learner(store)

    def pending(self) -> list[dict[str, Any]]:
        return self.queue.pending()

    # -- running ----------------------------------------------------------------------------------

    def run_pending(self, stop: threading.Event | None = None, progress: Callable[[int, int], None] | None = None) -> int:
        jobs = self.pending()
        done = 0
        for job in jobs:
            if stop is not None and stop.is_set():
                break
            if not self.run_job(job):
                break  # interrupted: the job stays queued and runs again later
            done += 1
            if progress:
                progress(done, len(jobs))
        return done

    def run_job(self, job: dict[str, Any]) -> bool:
        """Run one job; False when it was interrupted (it stays queued)."""
        try:
            # The whole job holds the gate in background mode: an answer or a /forget never meets a
            # half-done job, and an answer that arrives stops the job's model call (core/gate.py).
            with self.model_lock.background(), self.store.claim_job(job["id"]) as mine:
                if not mine:  # another machine of this user runs it, or has finished it
                    return True
                self.store.records.job_attempted(job["id"])
                if self.enabled:
                    if job["kind"] == "turn":
                        self.turn(job["payload"])
                    elif job["kind"] == "session":
                        self.session(job["payload"]["session"])
                self.store.records.finish_job(job["id"])
        except Interrupted:
            return False
        except PersonaError as exc:
            log.warning("update job %s skipped: %s", job["id"], exc)
            self.store.records.finish_job(job["id"])
        return True

    def _yield_point(self) -> None:
        """Between two steps of a job's store work (learning a turn, writing an episode): an answer that
        waits (or the next prompt's prefill) stops the job here, as a model call stops at its next token. The job
        stays queued and, being idempotent, runs again from its start later."""
        if self.model_lock.yield_wanted():
            raise Interrupted("an answer (or the next prompt's prefill) is waiting")

    def _ask(self, messages: Messages, schema: dict[str, Any], max_tokens: int = 200) -> dict[str, Any] | None:
        try:
            # Background use: an answer the user is waiting for goes first.
            with self.model_lock.background():
                model = cast(ChatModel, self.model)  # the model extractors run only with a model
                return model.complete_json(messages, schema, max_tokens=max_tokens, retries=1)
        except Interrupted:
            raise
        except PersonaError as exc:
            log.warning("model gave no valid answer (%s); skipped", exc)
            return None

    # -- per turn ---------------------------------------------------------------------------------

    def turn(self, payload: dict[str, Any]) -> None:
        user_turn = self.store.records.get(payload["user"])
        if user_turn is None:  # forgotten meanwhile
            return
        assistant = self.store.records.get(payload["assistant"]) if payload.get("assistant") else None
        self.learner.learn_turn(user_turn)  # idempotent: usually done already, right after the answer
        self._yield_point()
        self.update_personality(user_turn, assistant)
        if self.extractor == "model":
            self.extract_semantic(user_turn, assistant)

    def update_personality(self, user_turn: Memory, assistant: Memory | None) -> None:
        """The Big Five from this message's evidence (``core/trait_evidence.py``, ``personality.py``): a
        message with no sentence about the user that bears on a trait changes nothing and leaves no row."""
        records = self.store.records
        if any(h["turn_id"] == user_turn.id for h in records.personality_history()):
            return
        evidence = self._trait_evidence(user_turn)
        if not evidence:
            return
        self.apply_evidence(evidence, user_turn.id, at=user_turn.occurred_at)

    def _trait_evidence(self, user_turn: Memory) -> list[dict[str, Any]]:
        from personavlm_cli.core.capability import is_small
        from personavlm_cli.core.trait_evidence import EvidenceReader

        if getattr(self, "_evidence_reader", None) is None:
            self._evidence_reader = EvidenceReader(self.store.text_encoder)
        items = [{**e.as_dict(), "source": "text"} for e in self._evidence_reader.read(user_turn.text)]
        # The size gate (core/capability.py); a stand-in model that does not say its size is taken as capable.
        capable = self.model is not None and (not hasattr(self.model, "weights_bytes") or not is_small(self.model))
        if items and capable:
            rated = self._ask(pem.rating_messages(user_turn.text), PERSONALITY_SCHEMA, max_tokens=80) or {}
            items += [{"trait": t, "start": 0, "end": len(user_turn.text), "direction": (rated[t] - 3) / 2,
                       "weight": pem.MODEL_WEIGHT, "similarity": None, "marker": "the chat model's rating",
                       "negated": False, "source": "model"} for t in pem.TRAITS if rated.get(t, 3) != 3]
        return items

    def apply_evidence(self, items: list[dict[str, Any]], turn_id: str | None, at: str) -> dict[str, Any]:
        """Add one message's evidence: the totals, the reading, the evidence kept for `profile why`
        (spans of the message, never its text: forgetting the message leaves nothing of it here) and a
        history row."""
        records = self.store.records
        state = records.get_meta("personality_evidence") or {}
        totals = state.get("totals") or pem.empty_totals()
        current = records.get_meta("personality") or pem.initial()
        before = pem.vector_of(totals) if state else current
        new_totals = pem.add_evidence(totals, items)
        after = pem.vector_of(new_totals)
        per_trait = pem.message_evidence(items)
        kept = list(state.get("items") or [])
        for e in items:
            share = e["weight"] / max(sum(x["weight"] for x in items if x["trait"] == e["trait"]), 1e-9)
            kept.append({**e, "turn_id": turn_id, "at": at,
                         "moved": round((after[e["trait"]] - before[e["trait"]]) * share, 4)})
        m = records.get_meta("personality_updates") or 0
        implied = {t: round(pem.clamp(3 + 2 * s / w), 4) for t, (s, w) in per_trait.items() if w > 0}
        note = "evidence: " + ", ".join(f"{t} {after[t] - before[t]:+.2f}" for t in pem.TRAITS if t in per_trait)
        with records.transaction():
            records.add_personality({"at": at, "turn_id": turn_id, "m": m, "lambda": None, "inferred": implied,
                                     "before": before, "after": after, "note": note})
            records.set_meta("personality_evidence", {"totals": new_totals, "items": kept})
            records.set_meta("personality", after)
            records.set_meta("personality_updates", m + 1)
        return after

    def extract_semantic(self, user_turn: Memory, assistant: Memory | None) -> Memory | None:
        """The model's rephrasing of a user message (``extractor: model``), kept only if every content
        word is the user's own (the assistant's answer is not shown to it, and never evidence)."""
        images = [m for m in self.store.records.derived_from([user_turn.id]) if m.type == MemoryType.IMAGE]
        image_note = f"\n(The user attached {len(images)} image(s) to this message.)" if images else ""
        messages = [
            {"role": "system", "content":
             "You are a memory analyst. Decide whether the user's message holds something worth remembering "
             "long-term: an explicit request to remember, a core fact about the user (job, family, pets, life "
             "events), a preference or dislike, a correction, or a long-term goal. Small talk and passing "
             "questions are not. If yes, write content as one short sentence about the user using only the "
             "user's own words, and a few comma-separated keywords. Do not invent anything. Reply with JSON."},
            {"role": "user", "content": f"User message:\n{user_turn.text}{image_note}"},
        ]
        out = self._ask(messages, SEMANTIC_SCHEMA, max_tokens=200)
        if not out or not out["decision"] or not out["content"].strip():
            return None
        # Only what the user stated is evidence: a question, request or hypothetical teaches nothing.
        if grounding.not_a_fact(out["content"]) or not grounding.supported(out["content"],
                                                                           [grounding.stated(user_turn.text)]):
            self.learner.dropped(MemoryType.SEMANTIC, out["content"])
            return None
        sources = [user_turn.id] + [m.id for m in images]
        memory = new_memory(MemoryType.SEMANTIC, out["content"].strip(), user_turn.occurred_at,
                            keywords=out["keywords"].strip(), source_ids=sources, session_id=user_turn.session_id,
                            meta={"reason": out["reason"], "origin": "extracted"})
        memory.id = stable_id(MemoryType.SEMANTIC, user_turn.id, "model")
        return self.learner.integrate_semantic(memory)

    # -- per session ------------------------------------------------------------------------------

    def session(self, session_id: str) -> None:
        turns = self.store.records.list(types=[MemoryType.TURN], session_id=session_id)
        if not turns:
            return
        for t in turns:
            if t.role == "user":
                self._yield_point()
                self.learner.learn_turn(t)
        self._yield_point()
        self.episodes(session_id, turns)
        if self.extractor == "model":
            self.procedural(turns)
            self.core(turns)
        done = self.store.records.get_meta("consolidated", {}) or {}
        done[session_id] = len(turns)
        self.store.records.set_meta("consolidated", done)

    def episodes(self, session_id: str, turns: list[Memory]) -> None:
        """Topic summaries of the session. By rules, one per stretch of 20 rounds, in the user's own
        words; by the model, its topics, each kept only if the user's turns it covers support it."""
        rounds = _rounds(turns)
        old = [m for m in self.store.records.list(types=[MemoryType.EPISODIC], session_id=session_id, include_superseded=True)]
        new: list[Memory] = []
        for start in range(0, len(rounds), 20):
            window = rounds[start:start + 20]
            topics = []
            if self.extractor == "model":
                messages = [
                    {"role": "system", "content":
                     "You are a topic analysis engine. Group the rounds of this conversation into its independent "
                     "topics. For each topic give a short summary of what the user said, in the user's own words, "
                     "a few keywords, and the round numbers it covers. Reply with JSON."},
                    {"role": "user", "content": _dialogue(window)},
                ]
                out = self._ask(messages, episodic_schema(len(window)), max_tokens=400) or {"topics": []}
                for t in out.get("topics", []):
                    t["rounds"] = sorted({r for r in t.get("rounds", []) if 1 <= r <= len(window)})
                    said = [window[r - 1][0].text for r in t["rounds"]]
                    if t.get("summary", "").strip() and t["rounds"] and grounding.supported(t["summary"], said):
                        topics.append(t)
                    elif t.get("summary", "").strip():
                        self.learner.dropped(MemoryType.EPISODIC, t["summary"])
            covered = {r for t in topics for r in t["rounds"]}
            missing = [r for r in range(1, len(window) + 1) if r not in covered]
            # By rules: the user's own words of the rounds no topic covers (their questions say
            # nothing about them: a summary of questions alone is no episode).
            # Questions, requests and hypotheticals are left out of the gist: they are not what the user said
            # of themselves (issue 24).
            said = [grounding.stated(window[r - 1][0].text) for r in missing
                    if not grounding.only_asks(window[r - 1][0].text)]
            said = [t for t in said if t.strip()]
            if said:
                topics.append({"summary": _gist(said), "keywords": grounding.keywords_of(" ".join(said)),
                               "rounds": missing})
            for t in topics:
                if not t["summary"].strip():
                    continue
                members = [m for r in t["rounds"] for m in window[r - 1] if m is not None]
                members.sort(key=lambda m: m.occurred_at)
                episode = new_memory(MemoryType.EPISODIC, t["summary"].strip(), members[0].occurred_at,
                                     occurred_end=members[-1].occurred_at, keywords=t["keywords"].strip(),
                                     source_ids=[m.id for m in members], session_id=session_id)
                episode.id = stable_id(MemoryType.EPISODIC, session_id, str(start), episode.text, *episode.source_ids)
                if all(e.id != episode.id for e in new):
                    new.append(episode)
        keep = {m.id for m in new}
        stale = [m.id for m in old if m.id not in keep]
        if stale:
            # Replaced summaries, not a user's erasure: no rebuild of the vector index (store.erase).
            self.store.erase(stale, "consolidation-replace", purge=False)
        fresh = [m for m in new if self.store.records.get(m.id) is None]
        for episode in fresh:
            # A summary written after one of its statements became past is past as well, as one written
            # before it is (``Learner``): whichever ran first, the summary of "I live in X" says until when.
            for src in self.store.records.get_many(episode.source_ids):
                past = (src.meta or {}).get("past")
                if past and src.role == "user" and src.text.strip() and src.text.strip() in episode.text:
                    episode.meta = {**(episode.meta or {}), "past": dict(past)}
                    break
        self.store.add(fresh)

    def procedural(self, turns: list[Memory]) -> None:
        """The model's habits and goals (``extractor: model``), each supported by the user's turns."""
        current = self.store.records.list(types=[MemoryType.PROCEDURAL])
        listing = "\n".join(f"- {m.meta.get('key', m.id)}: {m.text}" for m in current) or "(none)"
        said = [t.text for t in turns if t.role == "user"]
        stated = [grounding.stated(t) for t in said]
        messages = [
            {"role": "system", "content":
             "You are a behaviour-pattern engine. From the user's messages, write the user's long-term goals "
             "and habits or routines: at most 5 entries, each one short sentence in the user's own words with a "
             "short unique key. Return an empty list if nothing applies. Reply with JSON."},
            {"role": "user", "content": f"Current list:\n{listing}\n\nUser's messages:\n" + "\n".join(said)},
        ]
        out = self._ask(messages, PROCEDURAL_SCHEMA, max_tokens=400)
        if out is None:
            return
        at = turns[-1].occurred_at
        sources = [t.id for t in turns if t.role == "user"]
        by_key = {m.meta.get("key"): m for m in current}
        for entry in out["entries"]:
            key = re.sub(r"\W+", "_", entry["key"].strip().lower()).strip("_")[:40]
            text = entry["text"].strip()
            if not key or not text:
                continue
            if grounding.not_a_fact(text) or not grounding.supported(text, stated):
                self.learner.dropped(MemoryType.PROCEDURAL, text)
                continue
            old = by_key.get(key)
            if old is not None and old.text == text:
                continue
            memory = new_memory(MemoryType.PROCEDURAL, text, at, source_ids=sources, keywords=key.replace("_", " "),
                                session_id=turns[-1].session_id, meta={"key": key, "origin": "extracted"})
            memory.id = stable_id(MemoryType.PROCEDURAL, key, text, at)
            if self.store.records.get(memory.id):
                continue
            if old is not None:
                self.store.supersede(old, memory, at=at)
            else:
                self.store.add([memory])

    def core(self, turns: list[Memory]) -> None:
        """The model's profile values (``extractor: model``): only the schema's fields, each value
        supported by the user message it is attributed to."""
        said = [t for t in turns if t.role == "user"]
        messages = [
            {"role": "system", "content":
             "You are a profile manager. From the user's messages, give the values the user states for these "
             f"fields only: {', '.join(profile.FIELDS)}. Use the user's own words; never invent. Reply with JSON."},
            {"role": "user", "content": "User's messages:\n" + "\n".join(t.text for t in said)},
        ]
        out = self._ask(messages, CORE_SCHEMA, max_tokens=300)
        if out is None:
            return
        for fact in out["facts"]:
            key, value = fact["key"].strip().lower(), fact["value"].strip()
            source = next((t for t in reversed(said)
                           if value and grounding.supported(value, [grounding.stated(t.text)])), None)
            if key not in profile.FIELDS or source is None:
                self.learner.dropped(f"profile value {key}", value)
                continue
            self.learner.update_profile({key: value}, source)


def _gist(said: list[str], limit: int = 400) -> str:
    parts = [re.sub(r"\s+", " ", t).strip()[:120] for t in said if t.strip()]
    text = " / ".join(parts)
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"
