"""Persona-MME (paper §6.2, Table 4) as an evaluation of the whole assistant.

Each user's folder (``samples/<bucket>/<user>/user_data.json`` and its images) is replayed into a
fresh temporary store with the gold replies (``evals/replay.py``), then each question is asked in situ
at its own time and read by the strict parser (``evals/scoring.py``); the personality-alignment items
(PA) ask whether a chosen and a rejected response fit the user. Nothing here knows anything about
particular questions: the loaders, the replay and the scoring are the same for any data in the
published layout.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from personavlm_cli.core.errors import PersonaError
from personavlm_cli.evals.replay import Replayer, RunSettings, Turn, parse_when
from personavlm_cli.evals.scoring import ResultLog, format_question, option_letter, score_item, tally
from personavlm_cli.evals.workspace import Progress, scratch, temporary_store

# --- Persona-MME's tasks (paper §6.2, Table 5): abbreviation -> (aspect `type`, `question_type`) ---------

MME_TASKS: dict[str, tuple[str, str]] = {
    "VDR": ("Memory Recall", "Visual Detail Recall"),
    "SIR": ("Memory Recall", "Semantic Information Recall"),
    "EII": ("Intent Inference", "Explicit Intent Inference"),
    "IIR": ("Intent Inference", "Implicit Intent Recognition"),
    "LPR": ("Preference Recognition", "Latest Preference Recognition"),
    "IEA": ("Preference Recognition", "Interest Evolution Analysis"),
    "IPR": ("Preference Recognition", "Implicit Preference Recommendation"),
    "BPR": ("Behavioral Awareness", "Behavioral Pattern Recognition"),
    "LGT": ("Behavioral Awareness", "Long-term Goal Tracking"),
    "RR": ("Relationship Understanding", "Relationship Recognition"),
    "RDC": ("Relationship Understanding", "Relationship Dynamics Comprehension"),
    "TED": ("Personalized Growth Modeling", "Tiered Explanation Delivery"),
    "GNS": ("Personalized Growth Modeling", "Generalizing to New Scenarios"),
    "PA": ("Personality Alignment", "Personality Alignment"),
}
MME_ORDER = tuple(MME_TASKS)  # Table 4's column order
_ABBR_OF = {qt.lower(): abbr for abbr, (_t, qt) in MME_TASKS.items()}
CONTEXT_BUCKETS = {"32k": ("50", "100"), "128k": ("200", "500"), "all": ("50", "100", "200", "500")}
RANDOM_BASELINE = {"mcq": 0.25, "alignment": 0.5}
ALIGNMENT_OPTIONS = {"(a)": "Yes, it aligns well.", "(b)": "No, it misaligns."}


def mme_tasks(spec: str | None) -> list[str]:
    """``--tasks VDR,SIR,PA`` (abbreviations or full task names) -> abbreviations, in Table 4's order."""
    if not spec:
        return list(MME_ORDER)
    wanted = set()
    for raw in spec.split(","):
        name = raw.strip()
        if not name:
            continue
        abbr = name.upper() if name.upper() in MME_TASKS else _ABBR_OF.get(name.lower())
        if abbr is None:
            raise PersonaError(f"unknown Persona-MME task '{name}' (use {', '.join(MME_ORDER)})")
        wanted.add(abbr)
    return [a for a in MME_ORDER if a in wanted]


def alignment_question(query: str, response: str) -> str:
    """The reference's personality-alignment item: the query, then the response to judge (yes/no)."""
    return (f"{query}\n"
            "Evaluate the following response based on the user's personality, which was revealed from the "
            "conversation history.\n"
            f"\nResponse to Evaluate:\n\"{response}\"\n"
            "\nQuestion:\nDoes the provided response align with and adapt to the user's personality?\n"
            "\nOptions:\n(a) Yes, it aligns well.\n(b) No, it misaligns.\n"
            "\nPlease provide only the final letter of your choice: (a) or (b).")


# --- the layout -----------------------------------------------------------------------------------


@dataclass
class MMEQuestion:
    index: int  # position in Persona-MME.json
    key: str  # stable id for resuming: "<bucket>/<user>/<n>-<hash>"
    bucket: str
    user: str
    user_dir: Path
    type: str
    question_type: str
    task: str  # abbreviation (VDR, ...)
    time: str
    query: str
    choices: dict[str, str]
    answer: str  # "b"
    alignment: dict | None = None

    def items(self, tasks: Iterable[str]) -> list[dict]:
        """The scored items of this question under ``tasks``: the MCQ, and the two alignment yes/no items."""
        wanted = set(tasks)
        out = []
        if self.task in wanted:
            out.append({"key": self.key, "kind": "mcq", "task": self.task,
                        "text": format_question(self.query, self.choices), "choices": self.choices,
                        "answer": self.answer})
        if "PA" in wanted and self.alignment:
            for side, expected in (("chosen", "a"), ("rejected", "b")):
                response = self.alignment.get(side)
                if isinstance(response, str) and response.strip():
                    out.append({"key": f"{self.key}/{side}", "kind": "alignment", "task": "PA",
                                "text": alignment_question(self.query, response.strip()),
                                "choices": ALIGNMENT_OPTIONS, "answer": expected})
        return out


_SAMPLES = re.compile(r"(?:^|[\\/])samples[\\/]+([^\\/]+)[\\/]+([^\\/]+)(?:[\\/]+[^\\/]*)?$")


def find_mme_json(data: Path) -> Path:
    data = Path(data)
    if data.is_file():
        return data
    if not data.is_dir():
        raise PersonaError(f"no such directory: {data}")
    for candidate in (data / "Persona-MME.json", data / "data" / "Persona-MME" / "Persona-MME.json"):
        if candidate.is_file():
            return candidate
    found = sorted(data.glob("**/Persona-MME.json"))
    if found:
        return found[0]
    raise PersonaError(f"no Persona-MME.json in {data} (pass the folder that holds it and samples/)")


def _samples_root(json_path: Path, data: Path) -> list[Path]:
    roots = []
    for base in (data if data.is_dir() else data.parent, json_path.parent):
        for root in (base, base / "data" / "Persona-MME"):
            if root not in roots:
                roots.append(root)
    return roots


def load_persona_mme(data: Path, context: str = "32k", tasks: Iterable[str] | None = None) -> list[MMEQuestion]:
    """The questions of the chosen context (their users' folders resolved under ``data``), in file order."""
    data = Path(data)
    if context not in CONTEXT_BUCKETS:
        raise PersonaError(f"unknown context '{context}' (use {', '.join(CONTEXT_BUCKETS)})")
    buckets = CONTEXT_BUCKETS[context]
    path = find_mme_json(data)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersonaError(f"cannot read {path} as JSON: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(raw, list):
        raise PersonaError(f"{path}: expected Persona-MME's top-level array of questions")
    wanted = set(tasks or MME_ORDER)
    roots = _samples_root(path, data)
    per_user: dict[tuple[str, str], int] = {}
    out: list[MMEQuestion] = []
    for i, rec in enumerate(raw):
        if not isinstance(rec, dict):
            raise PersonaError(f"{path}: item {i} is not an object")
        try:
            data_path, qtype, query = str(rec["data_path"]), str(rec["question_type"]), str(rec["query"])
            choices, answer = rec["choices"], rec["answer"]
        except KeyError as exc:
            raise PersonaError(f"{path}: item {i} has no '{exc.args[0]}'") from None
        m = _SAMPLES.search(data_path.replace("\\", "/").rstrip("/"))
        if not m:
            raise PersonaError(f"{path}: item {i}: data_path '{data_path}' is not under samples/<bucket>/<user>/")
        bucket, user = m.group(1), m.group(2)
        if bucket not in buckets:
            continue
        n = per_user.get((bucket, user), 0)
        per_user[(bucket, user)] = n + 1
        task = _ABBR_OF.get(qtype.strip().lower())
        if task is None:
            raise PersonaError(f"{path}: item {i}: unknown question_type '{qtype}'")
        alignment = rec.get("alignment") if isinstance(rec.get("alignment"), dict) else None
        if task not in wanted and not ("PA" in wanted and alignment):
            continue
        if not isinstance(choices, dict) or not choices:
            raise PersonaError(f"{path}: item {i}: 'choices' must be an object of options")
        user_dir = next((r / "samples" / bucket / user for r in roots if (r / "samples" / bucket / user).is_dir()),
                        roots[0] / "samples" / bucket / user)
        digest = hashlib.sha1(query.encode("utf-8")).hexdigest()[:6]
        out.append(MMEQuestion(
            index=i, key=f"{bucket}/{user}/{n}-{digest}", bucket=bucket, user=user, user_dir=user_dir,
            type=str(rec.get("type") or MME_TASKS[task][0]), question_type=qtype, task=task,
            time=str(rec.get("time") or ""), query=query, choices={str(k): str(v) for k, v in choices.items()},
            answer=option_letter(answer), alignment=alignment))
    return out


@dataclass
class MMEUser:
    profile: object
    sessions: list[list[Turn]]

    @property
    def turn_count(self) -> int:
        return sum(len(s) for s in self.sessions)

    @property
    def first_time(self) -> datetime | None:
        return next((s[0].at for s in self.sessions if s), None)


def load_mme_user(user_dir: Path) -> MMEUser:
    """``user_data.json``: profile, sessions of {time, user, assistant}; each ``<img>`` takes the next image."""
    path = Path(user_dir) / "user_data.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PersonaError(f"no user history at {path} (the samples/ folders come from the HF dataset "
                           "ClareNie/Persona-MME)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersonaError(f"cannot read {path} as JSON: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("sessions"), list):
        raise PersonaError(f"{path}: expected an object with 'sessions' (a list of sessions)")
    images = [str(x) for x in raw.get("imgs") or []]
    next_image = 0
    sessions: list[list[Turn]] = []
    last: datetime | None = None
    for s_index, session in enumerate(raw["sessions"]):
        turns: list[Turn] = []
        for t_index, t in enumerate(session or []):
            where = f"{path}: session {s_index + 1}, turn {t_index + 1}"
            if not isinstance(t, dict):
                raise PersonaError(f"{where} is not an object")
            at = parse_when(t["time"], where) if t.get("time") else (last + timedelta(minutes=1) if last else None)
            if at is None:
                raise PersonaError(f"{where}: no time given")
            text = str(t.get("user") or "")
            attached = []
            for _ in range(text.count("<img>")):
                if next_image >= len(images):
                    raise PersonaError(f"{where}: more <img> tags than images in 'imgs'")
                image = Path(user_dir) / Path(images[next_image].replace("\\", "/")).name
                next_image += 1
                if not image.is_file():
                    raise PersonaError(f"{where}: image {image.name} is not in {user_dir}")
                attached.append(image)
            text = " ".join(text.replace("<img>", " ").split()) or ("[image]" if attached else "")
            reply = t.get("assistant")
            turns.append(Turn(at=at, user=text, assistant=None if reply is None else str(reply), images=attached))
            last = at
        sessions.append(turns)
    return MMEUser(profile=raw.get("profile"), sessions=sessions)


def mme_user_name(profile) -> str:
    if isinstance(profile, dict):
        for key in ("name", "Name", "user_name", "username"):
            if isinstance(profile.get(key), str) and profile[key].strip():
                return profile[key].strip()
    return "the user"


# --- scoring and the run -------------------------------------------------------------------------


def summarize_mme(rows: list[dict]) -> dict:
    by_task = {abbr: tally([r for r in rows if r["task"] == abbr]) for abbr in MME_ORDER}
    by_task = {abbr: {"name": MME_TASKS[abbr][1], "aspect": MME_TASKS[abbr][0], **t}
               for abbr, t in by_task.items() if t["items"]}
    aspects: dict[str, dict] = {}
    for aspect in dict.fromkeys(t for t, _q in MME_TASKS.values()):
        chosen = [r for r in rows if MME_TASKS[r["task"]][0] == aspect]
        if chosen:
            aspects[aspect] = tally(chosen)
    return {"tasks": by_task, "aspects": aspects, "overall": tally(rows),
            "overall_without_pa": tally([r for r in rows if r["task"] != "PA"]),
            "alignment": tally([r for r in rows if r["task"] == "PA"])}


def run_persona_mme(questions: list[MMEQuestion], tasks: list[str], log: ResultLog, settings: RunSettings,
                    progress: Progress | None = None) -> dict:
    """Ask every item of ``questions`` not yet in ``log``; returns timing and count figures."""
    progress = progress or Progress()
    users: dict[tuple[str, str], list[MMEQuestion]] = {}
    for q in questions:
        users.setdefault((q.bucket, q.user), []).append(q)
    stats = {"users": 0, "replayed_turns": 0, "replay_s": 0.0, "update_s": 0.0, "ask_s": 0.0, "asked": 0,
             "skipped": 0}
    for (bucket, user), qs in users.items():
        todo = [(q, item) for q in qs for item in q.items(tasks) if item["key"] not in log.done]
        stats["skipped"] += sum(len(q.items(tasks)) for q in qs) - len(todo)
        if not todo:
            continue
        history = load_mme_user(qs[0].user_dir)
        stats["users"] += 1
        with scratch("personavlm-mme-") as tmp:
            store = temporary_store(Path(tmp), settings.text_encoder, settings.image_encoder)
            try:
                model = settings.model_factory()
                r = Replayer(store, model, mme_user_name(history.profile), update=settings.update,
                             prompt_profile=settings.prompt_profile, recent_turns=settings.recent_turns,
                             session_gap_minutes=settings.session_gap_minutes)
                t0 = time.perf_counter()
                first = history.first_time or parse_when(qs[0].time, f"question {qs[0].key}")
                r.seed_profile(history.profile, first - timedelta(minutes=1))
                total, done = history.turn_count, 0
                for s_index, turns in enumerate(history.sessions, 1):
                    def step(total=total, bucket=bucket, user=user):
                        nonlocal done
                        done += 1
                        if done % 10 == 0 or done == total:
                            progress.describe(f"{bucket}/{user}: replaying {done}/{total} turns")
                    progress.describe(f"{bucket}/{user}: replaying {done}/{total} turns")
                    r.replay_session(f"mme-{bucket}-{user}-s{s_index}", turns, step)
                stats["replayed_turns"] += r.turns
                stats["replay_s"] += time.perf_counter() - t0
                stats["update_s"] += r.update_seconds
                progress.describe(f"{bucket}/{user}: asking")
                for q, item in todo:
                    at = parse_when(q.time, f"question {q.key}")
                    answer = r.ask(item["text"], at, force_retrieve=settings.force_retrieve,
                                   sampling=settings.sampling)
                    row = score_item(item, answer)
                    row.update(user=f"{bucket}/{user}", index=q.index, type=q.type, question_type=q.question_type,
                               time=q.time)
                    log.add(row)
                    stats["ask_s"] += answer.seconds
                    stats["asked"] += 1
                    progress.advance(1)
            finally:
                store.close()
    return stats
