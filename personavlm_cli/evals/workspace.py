"""What every evaluation and benchmark shares: a fresh temporary store wired with the real parts, a
scratch folder, progress callbacks, the removal of an asked question, figures and the results file.

Nothing here touches the user's own memories: each store lives in its own temporary folder.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from personavlm_cli.core.errors import PersonaError


def scratch(prefix: str) -> tempfile.TemporaryDirectory:
    """A temporary folder (``with scratch("personavlm-x-") as tmp``), removed afterwards."""
    return tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True)


def temporary_store(path: Path, text_encoder, image_encoder: Callable | None = None):
    """A fresh store in ``path`` with the real record file, Chroma index and encoders.

    ``text_encoder`` is an encoder shared between stores; ``image_encoder`` a factory (called when
    the first image is embedded, so text-only benchmarks never load CLIP).
    """
    from personavlm_cli.adapters.image_store import embedded_parts
    from personavlm_cli.adapters.vectors import VectorIndex
    from personavlm_cli.core.store import MemoryStore

    def no_images():
        raise PersonaError("this benchmark has no images to embed")

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return MemoryStore(path, **embedded_parts(path), text_encoder=lambda: text_encoder,
                       image_encoder=image_encoder or no_images,
                       vectors=lambda: VectorIndex(path=path / "chroma"))


def forget_exchange(store, ex) -> None:
    """Remove an asked question and its answer (and their vectors) through the store, so that the next
    question does not see it: a benchmark's questions leave no trace."""
    if ex is None:
        return
    ids = [ex.user_turn.id, *(m.id for m in ex.images)]
    if ex.assistant_turn is not None:
        ids.append(ex.assistant_turn.id)
    store.erase(ids, "benchmark question", purge=False)


@dataclass
class Progress:
    """Callbacks the CLI turns into a progress bar (all optional)."""

    describe: Callable[[str], None] = lambda _text: None
    advance: Callable[[int], None] = lambda _n: None


def percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile of ``values``, linearly interpolated between ranks (NaN when empty)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * pct / 100
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def model_line(llm) -> str:
    """The loaded model in one line (its load summary), for reports."""
    info = getattr(llm, "load_info", None)
    return info.summary_line() if info is not None else type(llm).__name__


def write_json(path: Path | None, result: dict) -> None:
    """The results as indented JSON in ``path`` (nothing when None); one clear error if it cannot be written."""
    if path is None:
        return
    try:
        Path(path).write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise PersonaError(f"cannot write {path}: {exc.strerror or exc}") from None
