"""Persona-MME and PERSONAMEM as evaluations of the whole assistant (paper §6, §9.2).

Both benchmarks are run the same way, following the reference protocol (paper §6.4):

1. Each user's history (a Persona-MME user folder, a PERSONAMEM shared context) is replayed into a
   fresh temporary store at its own timestamps with the **gold assistant replies**: the user's turn
   (and its images) and the gold reply are stored and embedded as a chat would store them, and the
   update stage runs on them (per turn, and per session at each session's end), but the chat model
   never answers during the replay. ``update=False`` skips the update stage (it is slow with a
   small CPU model).
2. Each question is then asked **in situ**, at its own time, through the full response stage
   (``Assistant.respond``: recent context, core profile, the model's own decision to retrieve,
   recall, the streamed answer). As in the reference (``update=False`` for questions), a question
   leaves no trace: its turn and answer are removed before the next one, so questions never see
   each other.
3. The answer is read by a **strict parser** (``parse_choice``): "(b)", "b)", "B", "Answer: b",
   "the answer is (b)", a letter followed by its option's exact text, or the option's exact text.
   Anything else is wrong and counted as unparsed. The reference code's parser (the character before
   the first ")") is kept alongside for comparison (``reference_choice``): it accepts "(b)" inside
   any text, and also "a)" inside "(as in a) sketch", which is why it is not the one scored.

Results are appended one item per line to a JSONL file as soon as each is known, so an interrupted
run resumes where it stopped: items already in the file are not asked again.

Nothing here knows anything about particular questions: the loaders, the replay and the scoring are
the same for any data in the published layouts.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Iterable

from personavlm_cli.core.errors import PersonaError
from personavlm_cli.core.memory import Memory, parse_time

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

ANSWER_SUFFIX = "Please give your final answer (a), (b), (c) or (d)."
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


# --- questions and the strict answer parser -------------------------------------------------------


def option_letter(key: str) -> str:
    """'(b)', 'b', 'B)', '(B)' -> 'b'."""
    m = re.fullmatch(r"\s*\(?\s*([A-Za-z])\s*\)?\s*", str(key))
    if not m:
        raise PersonaError(f"not an option label: '{key}' (expected '(a)' and the like)")
    return m.group(1).lower()


def format_question(query: str, choices: dict[str, str]) -> str:
    """The reference's user message: the query, "Options:" lines "(a). text", the answer request."""
    lines = [f"({option_letter(k)}). {v}" for k, v in choices.items()]
    return f"{query}\nOptions:\n" + "\n".join(lines) + "\n" + ANSWER_SUFFIX


def alignment_question(query: str, response: str) -> str:
    """The reference's personality-alignment item: the query, then the response to judge (yes/no)."""
    return (f"{query}\n"
            "Evaluate the following response based on the user's personality, which was revealed from the "
            "conversation history.\n"
            f"\nResponse to Evaluate:\n\"{response}\"\n"
            "\nQuestion:\nDoes the provided response align with and adapt to the user's personality?\n"
            "\nOptions:\n(a) Yes, it aligns well.\n(b) No, it misaligns.\n"
            "\nPlease provide only the final letter of your choice: (a) or (b).")


_DECOR = str.maketrans({"*": " ", "`": " ", "\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})
_PREFIX = (r"(?:(?:so|thus|therefore|hence)\s*,?\s*)?(?:(?:the|my)\s+)?(?:(?:final|correct|best)\s+)?"
           r"answer(?:\s+is)?\s*[:\-]?\s*")


def _squash(text: str) -> str:
    s = " ".join(str(text).translate(_DECOR).split())
    return s.strip().strip("\"'").strip()


def _plain(text: str) -> str:
    """Option text for comparison: lower case, single spaces, no surrounding quotes or final stop."""
    return _squash(text).lower().rstrip(" .!;").strip("\"'").strip()


def parse_choice(text: str, choices: dict[str, str] | Iterable[str]) -> str | None:
    """The option letter the answer gives, or None when it is not one of the accepted forms.

    Accepted (case-insensitive, surrounding whitespace, markdown emphasis and a final stop ignored):
    the bare label "(b)", "b)", "b" or "b."; "Answer: b", "the answer is (b)", "My final answer is
    (b)." and the like; a label followed by its option's exact text ("(b) Painting.", "Answer: (b).
    Painting"); the option's exact text alone. A letter that is not an option, a label followed by
    other words, two answers, or any explanation make it unparsed.
    """
    if isinstance(choices, dict):
        options = {option_letter(k): str(v) for k, v in choices.items()}
    else:
        options = {option_letter(k): "" for k in choices}
    s = _squash(text or "")
    if not s:
        return None
    plain = _plain(s)
    by_text = [letter for letter, body in options.items() if body and _plain(body) == plain]
    if len(by_text) == 1:
        return by_text[0]
    m = re.fullmatch(rf"(?:{_PREFIX})?(\(\s*[a-z]\s*\)|[a-z]\s*\)|[a-z](?=$|[.:]))\s*[.:]?\s*(.*)", s, re.I)
    if not m:
        return None
    letter = option_letter(m.group(1).replace(")", "").replace("(", ""))
    if letter not in options:
        return None
    rest = m.group(2).strip()
    if not rest:
        return letter
    if options[letter] and _plain(rest) == _plain(options[letter]):
        return letter
    return None


def reference_choice(text: str) -> str | None:
    """The reference code's reading: the character just before the first ")" (paper §6.4)."""
    if not text or ")" not in text:
        return None
    head = text.split(")")[0]
    return head[-1].lower() if head else None


# --- the result log (resume) ----------------------------------------------------------------------


class ResultLog:
    """Results appended one item per line; a rerun skips the items already there.

    The first line is a header naming the benchmark and the settings that change answers (model,
    update stage, forced retrieval, answer length); resuming with other settings is refused, so one
    file never mixes two runs' answers. A line cut off by a kill is ignored.
    """

    def __init__(self, path: Path | None, header: dict):
        self.path = Path(path) if path is not None else None
        self.header = header
        self.done: dict[str, dict] = {}
        if self.path is None:
            return
        if self.path.exists():
            self._read()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append({"header": header})

    def _read(self) -> None:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise PersonaError(f"cannot read the results file {self.path}: {exc}") from None
        header = None
        for line in lines:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by a kill
            if not isinstance(row, dict):
                continue
            if "header" in row:
                header = header or row["header"]
            elif "key" in row:
                self.done[row["key"]] = row
        if header is None:
            if self.done:
                raise PersonaError(f"{self.path} has results but no header line: not a results file of this tool")
            self._append({"header": self.header})
            return
        keys = ("benchmark", "model", "update", "force_retrieve", "max_tokens")
        differ = [k for k in keys if header.get(k) != self.header.get(k)]
        if differ:
            k = differ[0]
            raise PersonaError(f"{self.path} holds results of another run ({k}: {header.get(k)!r}, this run: "
                               f"{self.header.get(k)!r}); use another --resume file, or the same settings")

    def _append(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()

    def add(self, row: dict) -> None:
        self.done[row["key"]] = row
        if self.path is not None:
            self._append(row)


def results_path(json_out: Path | None, resume: Path | None) -> Path | None:
    """Where the per-item results go: ``--resume FILE``, else next to ``--json OUT`` (OUT.jsonl)."""
    if resume is not None:
        return Path(resume)
    if json_out is None:
        return None
    json_out = Path(json_out)
    if json_out.suffix == ".jsonl":
        return json_out.with_name(json_out.name + ".items")
    return json_out.with_suffix(".jsonl")


# --- temporary stores and the replay --------------------------------------------------------------


def temporary_store(path: Path, text_encoder, image_encoder: Callable | None = None):
    """A fresh store in ``path`` with the real record file, Chroma index and encoders.

    ``text_encoder`` is an encoder shared between stores; ``image_encoder`` a factory (called when
    the first image is embedded, so text-only benchmarks never load CLIP).
    """
    from personavlm_cli.adapters.vectors import VectorIndex
    from personavlm_cli.core.store import MemoryStore

    def no_images():
        raise PersonaError("this benchmark has no images to embed")

    Path(path).mkdir(parents=True, exist_ok=True, mode=0o700)
    return MemoryStore(Path(path), text_encoder=lambda: text_encoder, image_encoder=image_encoder or no_images,
                       vectors=lambda: VectorIndex(path=Path(path) / "chroma"))


@dataclass
class Turn:
    """One round of a history: the user's message (with its images) and the gold assistant reply."""

    at: datetime
    user: str
    assistant: str | None = None
    images: list[Path] = field(default_factory=list)


@dataclass
class Answer:
    text: str
    seconds: float
    retrievals: int = 0
    used: int = 0
    error: str | None = None


def _facts(profile) -> dict[str, str]:
    """A profile (dict, text or anything JSON) as the core memory's flat string facts."""
    if isinstance(profile, dict):
        out = {}
        for k, v in profile.items():
            if v in (None, "", [], {}):
                continue
            value = v.strip() if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
            out[str(k).strip()[:60] or "profile"] = value
        return out
    if isinstance(profile, str):
        return {"persona": profile.strip()} if profile.strip() else {}
    if profile in (None, [], {}):
        return {}
    return {"profile": json.dumps(profile, ensure_ascii=False)}


class Replayer:
    """One benchmark user: a temporary store, the history written into it, questions asked of it."""

    def __init__(self, store, model, user: str, *, update: bool, prompt_profile: str = "generic",
                 recent_turns: int = 20, session_gap_minutes: int = 60):
        from personavlm_cli.core.assistant import Assistant
        from personavlm_cli.core.update import UpdateStage

        self.store = store
        self.model = model
        self.update = update
        self.assistant = Assistant(store, model, user, profile=prompt_profile, recent_turns=recent_turns,
                                   session_gap_minutes=session_gap_minutes,
                                   vision=bool(getattr(model, "vision", False)))
        self.updates = UpdateStage(store, model, user, self.assistant.model_lock, enabled=update) if update else None
        self._session: str | None = None
        self.assistant.session_for = self._session_for  # the data's sessions, not the time gap
        self.turns = 0
        self.update_seconds = 0.0
        self.last_time: datetime | None = None
        self.last_exchange = None  # the last replayed message's Exchange (for complete_last_reply)

    def _session_for(self, at: datetime):
        from personavlm_cli.core.assistant import Assistant

        if self._session is not None:
            return self._session, None
        return Assistant.session_for(self.assistant, at)

    # -- the history ----------------------------------------------------------------------------

    def seed_profile(self, profile, at: datetime) -> Memory | None:
        """The user's given profile as the initial core memory (paper §6.4: `profile`)."""
        from personavlm_cli.core.store import new_memory

        facts = _facts(profile)
        if not facts:
            return None
        text = "\n".join(f"{k}: {v}" for k, v in facts.items())
        memory = new_memory("core", text, at, meta={"facts": facts, "origin": "benchmark profile"})
        self.store.add([memory])
        return memory

    def replay_session(self, session_id: str, turns: list[Turn], progress: Callable[[], None] | None = None) -> None:
        """Store the session's turns as a chat would (gold replies), then run its update jobs."""
        import time

        self._session = session_id
        pending: list[Memory] = []
        try:
            for turn in turns:
                user_turn, memories, reply = self._store_turn(session_id, turn)
                self.turns += 1
                self.last_time = max(self.last_time or turn.at, turn.at)
                if self.updates is not None and user_turn is not None:
                    self.store.embed(memories)  # the turn job recalls over what is stored
                    t = time.perf_counter()
                    self.updates.enqueue_turn(user_turn, reply)
                    self.updates.run_pending()
                    self.update_seconds += time.perf_counter() - t
                else:
                    pending.extend(memories)
                if progress is not None:
                    progress()
            self.store.embed(pending)
            if self.updates is not None and turns:
                t = time.perf_counter()
                self.updates.enqueue_session(session_id)
                self.updates.run_pending()
                self.update_seconds += time.perf_counter() - t
        finally:
            self._session = None

    def _store_turn(self, session_id: str, turn: Turn) -> tuple[Memory | None, list[Memory], Memory | None]:
        from personavlm_cli.core.store import new_memory

        if not turn.user.strip() and not turn.images:  # a reply with no message before it
            reply = new_memory("turn", (turn.assistant or "").strip(), turn.at, role="assistant",
                               session_id=session_id, meta={"reasoning": None, "gold": True})
            self.store.add([reply], embed=False)
            self.last_exchange = None
            return None, [reply], reply
        ex, _previous = self.assistant.store_user_turn(turn.user, turn.at, turn.images)
        memories = [ex.user_turn, *ex.images]
        reply = None
        if turn.assistant is not None and turn.assistant.strip():
            reply = self._store_reply(ex, turn.assistant, turn.at)
            memories.append(reply)
        self.last_exchange = ex
        return ex.user_turn, memories, reply

    def _store_reply(self, ex, text: str, at: datetime) -> Memory:
        ex.answer = text.strip()
        return self.assistant.store_assistant_turn(ex, at)

    def complete_last_reply(self, text: str, at: datetime) -> bool:
        """Add the gold reply to the last replayed message when a previous cut fell between the two."""
        ex = self.last_exchange
        if ex is None or ex.assistant_turn is not None or not text.strip():
            return False
        reply = self._store_reply(ex, text, at)
        self.store.embed([reply])
        if self.updates is not None:
            self.updates.enqueue_turn(ex.user_turn, reply)
            self.updates.run_pending()
        return True

    # -- questions -------------------------------------------------------------------------------

    def ask(self, text: str, at: datetime, *, force_retrieve: bool = False, sampling: dict | None = None) -> Answer:
        """Ask through the full response stage at ``at``; the question leaves no trace in the store."""
        import time

        from personavlm_cli.core.store import IMAGES, TEXT

        t = time.perf_counter()
        pieces: list[str] = []
        error = None
        ex = None
        try:
            ex, stream = self.assistant.respond(text, at, [], force_retrieve=force_retrieve, updates=None,
                                                sampling=sampling)
            for piece in stream:
                pieces.append(piece)
        except PersonaError as exc:
            error = str(exc) or type(exc).__name__
        finally:
            if ex is not None:
                ids = [ex.user_turn.id, *(m.id for m in ex.images)]
                if ex.assistant_turn is not None:
                    ids.append(ex.assistant_turn.id)
                with self.store.records.transaction():
                    self.store.records.delete(ids)
                self.store.vectors.delete(TEXT, ids)
                if ex.images:
                    self.store.vectors.delete(IMAGES, ids)
        r = ex.reasoning if ex is not None else None
        return Answer(text="".join(pieces).strip(), seconds=time.perf_counter() - t,
                      retrievals=sum(1 for s in r.steps if s.action == "retrieve") if r else 0,
                      used=len(r.used) if r else 0, error=error)


def parse_when(value, what: str) -> datetime:
    """The data's "YYYY-MM-DD HH:MM" (a trailing "(Weekday)" is dropped, as the reference does)."""
    text = str(value or "").split("(")[0].strip()
    if not text:
        raise PersonaError(f"{what}: no time given")
    return parse_time(text, what)


# --- Persona-MME ----------------------------------------------------------------------------------


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


# --- PERSONAMEM -----------------------------------------------------------------------------------


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
    for n, msg in enumerate(messages[:end]):
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


# --- asking and scoring ---------------------------------------------------------------------------


def score_item(item: dict, answer: Answer) -> dict:
    """The result row of one asked item."""
    parsed = None if answer.error else parse_choice(answer.text, item["choices"])
    ref = None if answer.error else reference_choice(answer.text)
    row = {k: v for k, v in item.items() if k not in ("text", "choices")}
    row.update(prediction=answer.text, parsed=parsed, correct=parsed == item["answer"],
               reference_parsed=ref, reference_correct=ref == item["answer"],
               seconds=round(answer.seconds, 2), retrievals=answer.retrievals, used=answer.used)
    if answer.error:
        row["error"] = answer.error
    return row


def tally(rows: list[dict]) -> dict:
    n = len(rows)
    correct = sum(1 for r in rows if r.get("correct"))
    return {"items": n, "correct": correct,
            "unparsed": sum(1 for r in rows if r.get("parsed") is None and not r.get("error")),
            "errors": sum(1 for r in rows if r.get("error")),
            "accuracy": round(correct / n, 4) if n else None,
            "reference_accuracy": round(sum(1 for r in rows if r.get("reference_correct")) / n, 4) if n else None}


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


def summarize_personamem(rows: list[dict]) -> dict:
    types = list(dict.fromkeys(r["task"] for r in rows))
    return {"types": {t: {"label": PERSONAMEM_TYPES.get(t, t), **tally([r for r in rows if r["task"] == t])}
                      for t in types},
            "overall": tally(rows)}


# --- the runs -------------------------------------------------------------------------------------


@dataclass
class Progress:
    """Callbacks the CLI turns into a progress bar (all optional)."""

    describe: Callable[[str], None] = lambda _text: None
    advance: Callable[[int], None] = lambda _n: None


@dataclass
class RunSettings:
    model_factory: Callable[[], object]  # the chat model, loaded on first need
    text_encoder: object
    image_encoder: Callable | None = None  # a factory; None: no images
    update: bool = False
    force_retrieve: bool = False
    sampling: dict = field(default_factory=lambda: {"max_tokens": 64, "temperature": 0.0})
    prompt_profile: str = "generic"
    recent_turns: int = 20
    session_gap_minutes: int = 60


def _scratch(prefix: str):
    import tempfile

    return tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True)


def run_persona_mme(questions: list[MMEQuestion], tasks: list[str], log: ResultLog, settings: RunSettings,
                    progress: Progress | None = None) -> dict:
    """Ask every item of ``questions`` not yet in ``log``; returns timing and count figures."""
    import time

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
        with _scratch("personavlm-mme-") as tmp:
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
                    def step():
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


def run_personamem(data: Path, context: str, questions: list[PMQuestion], log: ResultLog, settings: RunSettings,
                   progress: Progress | None = None) -> dict:
    """Replay each shared context up to each question's end index, asking the questions in order."""
    import time

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
        with _scratch("personavlm-personamem-") as tmp:
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
                            r.complete_last_reply(turns[already - 1].assistant, turns[already - 1].at)
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


def round_stats(stats: dict) -> dict:
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in stats.items()}
