"""Multiple-choice answers, read strictly, and the per-item results log that lets a run resume.

The answer is read by a **strict parser** (``parse_choice``): "(b)", "b)", "B", "Answer: b",
"the answer is (b)", a letter followed by its option's exact text, or the option's exact text.
Anything else is wrong and counted as unparsed. The reference code's parser (the character before
the first ")") is kept alongside for comparison (``reference_choice``): it accepts "(b)" inside any
text, and also "a)" inside "(as in a) sketch", which is why it is not the one scored (paper §6.4).

Results are appended one item per line to a JSONL file as soon as each is known, so an interrupted
run resumes where it stopped: items already in the file are not asked again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from personavlm_cli.core.errors import PersonaError

ANSWER_SUFFIX = "Please give your final answer (a), (b), (c) or (d)."


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
            self._read(self.path)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append(self.path, {"header": header})

    def _read(self, path: Path) -> None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise PersonaError(f"cannot read the results file {path}: {exc}") from None
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
                raise PersonaError(f"{path} has results but no header line: not a results file of this tool")
            self._append(path, {"header": self.header})
            return
        keys = ("benchmark", "model", "update", "force_retrieve", "max_tokens")
        differ = [k for k in keys if header.get(k) != self.header.get(k)]
        if differ:
            k = differ[0]
            raise PersonaError(f"{path} holds results of another run ({k}: {header.get(k)!r}, this run: "
                               f"{self.header.get(k)!r}); use another --resume file, or the same settings")

    def _append(self, path: Path, row: dict) -> None:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()

    def add(self, row: dict) -> None:
        self.done[row["key"]] = row
        if self.path is not None:
            self._append(self.path, row)


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


# --- scoring --------------------------------------------------------------------------------------


@dataclass
class Answer:
    """What an asked question got: the answer's text, its time, the retrieval steps and memories used."""

    text: str
    seconds: float
    retrievals: int = 0
    used: int = 0
    error: str | None = None


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
