"""PERSONAMEM (paper §9.2) as an evaluation of the whole assistant.

Each shared context (``shared_contexts_<size>.jsonl``) is replayed into a fresh temporary store with
the gold replies (``evals/replay.py``) up to each question's end index, and the question is asked
there, a minute after the last message, and read by the strict parser (``evals/scoring.py``).
PERSONAMEM has no timestamps: messages are two minutes apart and a later system message starts a
new session a day later. Nothing here knows anything about particular questions.
"""

from __future__ import annotations

import ast
import csv
import json
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from personavlm_cli.core.errors import PersonaError
from personavlm_cli.evals.replay import Replayer, RunSettings, Turn
from personavlm_cli.evals.scoring import ResultLog, format_question, option_letter, score_item, tally
from personavlm_cli.evals.workspace import Progress, scratch, temporary_store

# PERSONAMEM v1's question types, with short labels for tables.
PERSONAMEM_TYPES = {
    "recall_user_shared_facts": "facts",
    "recalling_facts_mentioned_by_the_user": "facts",
    "acknowledge_latest_user_preferences": "latest pref.",
    "recalling_the_latest_user_preferences": "latest pref.",
    "track_full_preference_evolution": "pref. evolution",
    "tracking_the_full_sequence_of_preference_updates": "pref. evolution",
    "revisit_reasons_behind_preference_updates": "update reasons",
    "recalling_the_reasons_behind_previous_updates": "update reasons",
    "provide_preference_aligned_recommendations": "recommendation",
    "recommendation_aligned_with_users_latest_preferences": "recommendation",
    "suggest_new_ideas": "new ideas",
    "identifying_new_things_not_mentioned_by_the_user": "new ideas",
    "generalize_to_new_scenarios": "generalize",
    "generalizing_past_reasons_in_memory_to_new_scenarios": "generalize",
}


@dataclass
class PMQuestion:
    index: int  # row in the CSV
    key: str  # question_id
    question_type: str
    context_id: str
    end_index: int
    question: str
    choices: dict[str, str]
    answer: str

    def item(self) -> dict:
        return {"key": self.key, "kind": "mcq", "task": self.question_type,
                "text": format_question(self.question, self.choices), "choices": self.choices,
                "answer": self.answer}


def parse_options(raw: str, where: str) -> dict[str, str]:
    """``all_options``: a stringified Python list of "(a) ..." strings -> {"(a)": text}."""
    try:
        items = ast.literal_eval(raw) if isinstance(raw, str) else raw
    except (ValueError, SyntaxError):
        raise PersonaError(f"{where}: all_options is not a Python list literal") from None
    if not isinstance(items, (list, tuple)) or not items:
        raise PersonaError(f"{where}: all_options is not a list of options")
    out: dict[str, str] = {}
    for n, item in enumerate(items):
        m = re.match(r"\s*\(\s*([A-Za-z])\s*\)\s*[.:]?\s*(.*)\Z", str(item), re.S)
        letter, text = (m.group(1).lower(), m.group(2).strip()) if m else ("abcdefgh"[n], str(item).strip())
        out[f"({letter})"] = text
    return out


def personamem_files(data: Path, context: str) -> tuple[Path, Path]:
    data = Path(data)
    if not data.is_dir():
        raise PersonaError(f"no such directory: {data}")
    questions = data / f"questions_{context}.csv"
    contexts = data / f"shared_contexts_{context}.jsonl"
    for p in (questions, contexts):
        if not p.is_file():
            raise PersonaError(f"no {p.name} in {data} (PERSONAMEM's files: questions_<size>.csv and "
                               "shared_contexts_<size>.jsonl)")
    return questions, contexts


def load_personamem(data: Path, context: str = "32k", types: Iterable[str] | None = None) -> list[PMQuestion]:
    questions_path, _ = personamem_files(data, context)
    wanted = {t.strip() for t in types or [] if t.strip()}
    out: list[PMQuestion] = []
    seen_types: set[str] = set()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with open(questions_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            needed = {"question_id", "question_type", "shared_context_id", "end_index_in_shared_context",
                      "question", "all_options", "correct_answer"}
            missing = needed - set(reader.fieldnames or [])
            if missing:
                raise PersonaError(f"{questions_path.name}: no column '{sorted(missing)[0]}'")
            for i, row in enumerate(reader):
                where = f"{questions_path.name} row {i + 2}"
                qtype = row["question_type"].strip()
                seen_types.add(qtype)
                if wanted and qtype not in wanted:
                    continue
                try:
                    end = int(float(row["end_index_in_shared_context"]))
                except ValueError:
                    raise PersonaError(f"{where}: end_index_in_shared_context is not a number") from None
                out.append(PMQuestion(
                    index=i, key=row["question_id"].strip() or f"row{i}", question_type=qtype,
                    context_id=row["shared_context_id"].strip(), end_index=end, question=row["question"],
                    choices=parse_options(row["all_options"], where), answer=option_letter(row["correct_answer"])))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PersonaError(f"cannot read {questions_path}: {exc}") from None
    unknown = wanted - seen_types
    if unknown:
        raise PersonaError(f"no question of type '{sorted(unknown)[0]}' in {questions_path.name} "
                           f"(it has {', '.join(sorted(seen_types))})")
    return out


def load_shared_contexts(data: Path, context: str, ids: Iterable[str]) -> dict[str, list[dict]]:
    """Only the wanted contexts of ``shared_contexts_<size>.jsonl`` (each line {id: [messages]})."""
    _, path = personamem_files(data, context)
    wanted = set(ids)
    out: dict[str, list[dict]] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                if wanted and not any(w in line[:200] for w in wanted):
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    raise PersonaError(f"{path.name} line {n} is not JSON") from None
                for cid, messages in (obj.items() if isinstance(obj, dict) else []):
                    if cid in wanted:
                        if not isinstance(messages, list):
                            raise PersonaError(f"{path.name}: context {cid[:12]}… is not a list of messages")
                        out[cid] = messages
    except (OSError, UnicodeDecodeError) as exc:
        raise PersonaError(f"cannot read {path}: {exc}") from None
    missing = wanted - set(out)
    if missing:
        raise PersonaError(f"{path.name} has no shared context '{sorted(missing)[0][:16]}…'")
    return out


PM_START = datetime(2024, 1, 1, 9, 0)
PM_MESSAGE_SPACING = timedelta(minutes=2)
PM_SESSION_SPACING = timedelta(days=1)


def personamem_timeline(messages: list[dict], end: int) -> tuple[str | None, list[list[Turn]], datetime]:
    """The first ``end`` messages as (profile seed, sessions of turns, the time right after them).

    PERSONAMEM has no timestamps: messages are two minutes apart; the first system message (the
    persona) seeds the core profile, and a later system message starts a new session a day later.
    Consecutive user messages stay separate turns (the first without a reply).
    """
    t = PM_START.astimezone()
    seed: str | None = None
    sessions: list[list[Turn]] = [[]]
    pending: Turn | None = None
    for _n, msg in enumerate(messages[:end]):
        role = str(msg.get("role") or "").lower() if isinstance(msg, dict) else ""
        content = str(msg.get("content") or "").strip() if isinstance(msg, dict) else ""
        if role == "system":
            if seed is None and not any(sessions):
                seed = content
            elif any(sessions[-1:]) or pending:
                if pending is not None:
                    sessions[-1].append(pending)
                    pending = None
                sessions.append([])
                t += PM_SESSION_SPACING
            continue
        if not content:
            continue
        if role == "user":
            if pending is not None:
                sessions[-1].append(pending)
            pending = Turn(at=t, user=content)
        elif role == "assistant":
            if pending is not None:
                pending.assistant = content
                sessions[-1].append(pending)
                pending = None
            else:  # a reply with no question before it: kept as an assistant-only round
                sessions[-1].append(Turn(at=t, user="", assistant=content))
        t += PM_MESSAGE_SPACING
    if pending is not None:
        sessions[-1].append(pending)
    return seed, [s for s in sessions if s], t


# --- scoring and the run -------------------------------------------------------------------------


def summarize_personamem(rows: list[dict]) -> dict:
    types = list(dict.fromkeys(r["task"] for r in rows))
    return {"types": {t: {"label": PERSONAMEM_TYPES.get(t, t), **tally([r for r in rows if r["task"] == t])}
                      for t in types},
            "overall": tally(rows)}


def run_personamem(data: Path, context: str, questions: list[PMQuestion], log: ResultLog, settings: RunSettings,
                   progress: Progress | None = None) -> dict:
    """Replay each shared context up to each question's end index, asking the questions in order."""
    progress = progress or Progress()
    groups: dict[str, list[PMQuestion]] = {}
    for q in questions:
        if q.key not in log.done:
            groups.setdefault(q.context_id, []).append(q)
    stats = {"contexts": 0, "replayed_turns": 0, "replay_s": 0.0, "update_s": 0.0, "ask_s": 0.0, "asked": 0,
             "skipped": len(questions) - sum(len(g) for g in groups.values())}
    if not groups:
        return stats
    contexts = load_shared_contexts(data, context, groups)
    for cid, qs in groups.items():
        qs.sort(key=lambda q: (q.end_index, q.index))
        messages = contexts[cid]
        stats["contexts"] += 1
        with scratch("personavlm-personamem-") as tmp:
            store = temporary_store(Path(tmp), settings.text_encoder, settings.image_encoder)
            try:
                model = settings.model_factory()
                r = Replayer(store, model, "the user", update=settings.update, prompt_profile=settings.prompt_profile,
                             recent_turns=settings.recent_turns, session_gap_minutes=settings.session_gap_minutes)
                replayed: list[int] = []  # turns already written, per session
                seeded = False
                for q in qs:
                    t0 = time.perf_counter()
                    seed, sessions, after = personamem_timeline(messages, q.end_index)
                    if seed and not seeded:
                        r.seed_profile(seed, PM_START.astimezone() - timedelta(minutes=1))
                        seeded = True
                    for s_index, turns in enumerate(sessions):
                        already = replayed[s_index] if s_index < len(replayed) else 0
                        if already and s_index == len(replayed) - 1 and turns[already - 1].assistant:
                            # the previous cut fell between this session's last message and its reply
                            r.complete_last_reply(turns[already - 1].assistant or "", turns[already - 1].at)
                        if turns[already:]:
                            progress.describe(f"{cid[:8]}: replaying to message {q.end_index}")
                            r.replay_session(f"pm-{cid[:8]}-s{s_index + 1}", turns[already:])
                        if s_index < len(replayed):
                            replayed[s_index] = len(turns)
                        else:
                            replayed.append(len(turns))
                    stats["replay_s"] += time.perf_counter() - t0
                    progress.describe(f"{cid[:8]}: asking")
                    item = q.item()
                    asked_at = after - PM_MESSAGE_SPACING + timedelta(minutes=1)  # a minute after the last message
                    answer = r.ask(item["text"], asked_at,
                                   force_retrieve=settings.force_retrieve, sampling=settings.sampling)
                    row = score_item(item, answer)
                    row.update(question_type=q.question_type, context=cid, end_index=q.end_index, index=q.index)
                    log.add(row)
                    stats["ask_s"] += answer.seconds
                    stats["asked"] += 1
                    progress.advance(1)
                stats["replayed_turns"] += r.turns
                stats["update_s"] += r.update_seconds
            finally:
                store.close()
    return stats
