"""The model registry: named GGUF chat models (path, projector, context) in ``models.yaml``, and the
recommended models that `personavlm model pull NAME` knows by name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personavlm_cli.core.config import Locations
from personavlm_cli.core.errors import ConfigError, NotFoundError


def load(locations: Locations) -> dict[str, Any]:
    import yaml

    path = locations.models_file
    if not path.exists():
        return {"default": None, "models": {}}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        raise ConfigError(f"model registry {path} is not valid YAML") from None
    if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
        raise ConfigError(f"model registry {path} is malformed")
    data.setdefault("models", {})
    data.setdefault("default", None)
    return data


def save(locations: Locations, data: dict[str, Any]) -> None:
    import yaml

    path = locations.models_file
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)  # owner-only, whatever the umask
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(yaml.safe_dump(data, sort_keys=True))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def resolve(locations: Locations, value: str) -> tuple[Path, Path | None]:
    """A registered name gives its path and projector; anything else is taken as a file path."""
    registry = load(locations)
    entry = registry["models"].get(value)
    if entry is not None:
        mmproj = entry.get("mmproj")
        return Path(entry["path"]), Path(mmproj) if mmproj else None
    path = Path(value).expanduser()
    if not path.exists() and os.sep not in value and not value.endswith(".gguf"):
        raise NotFoundError(f"no model named '{value}' (see `personavlm model list`) and no such file")
    return path, None


# --- recommended models for `personavlm model pull NAME` -------------------------------------------


@dataclass(frozen=True)
class Recommended:
    name: str
    repo: str
    file: str
    mmproj: str | None
    approx_size: str
    note: str


# Repository and file names as published by ggml-org (llama.cpp's own multimodal list) and Qwen on the
# Hugging Face hub. They are to be verified against the hub from time to time: a renamed file makes
# `model pull NAME` fail with "no file ... (404)", never download something else. Checksums are not
# pinned here: each download is verified against the sha256 the hub publishes for the file.
RECOMMENDED: dict[str, Recommended] = {
    r.name: r
    for r in [
        Recommended("qwen2.5-vl-3b", "ggml-org/Qwen2.5-VL-3B-Instruct-GGUF", "Qwen2.5-VL-3B-Instruct-Q4_K_M.gguf",
                    "mmproj-Qwen2.5-VL-3B-Instruct-Q8_0.gguf", "2.7 GB",
                    "the smallest Qwen2.5-VL (the paper's family)"),
        Recommended("qwen2.5-vl-7b", "ggml-org/Qwen2.5-VL-7B-Instruct-GGUF", "Qwen2.5-VL-7B-Instruct-Q4_K_M.gguf",
                    "mmproj-Qwen2.5-VL-7B-Instruct-Q8_0.gguf", "5.5 GB",
                    "the size of the PersonaVLM weights"),
        Recommended("gemma-3-4b-it", "ggml-org/gemma-3-4b-it-GGUF", "gemma-3-4b-it-Q4_K_M.gguf",
                    "mmproj-model-f16.gguf", "3.3 GB", "Google Gemma 3, 4B"),
        Recommended("smolvlm2-2.2b", "ggml-org/SmolVLM2-2.2B-Instruct-GGUF", "SmolVLM2-2.2B-Instruct-Q4_K_M.gguf",
                    "mmproj-SmolVLM2-2.2B-Instruct-Q8_0.gguf", "1.7 GB", "small, quick on a CPU"),
        Recommended("qwen2.5-3b-instruct", "Qwen/Qwen2.5-3B-Instruct-GGUF", "qwen2.5-3b-instruct-q4_k_m.gguf",
                    None, "2.1 GB", "a small text-only chat model"),
    ]
}


def models_dir(locations: Locations) -> Path:
    """Where `model pull` keeps what it downloads, in the hub cache layout:
    ``<data dir>/models/models--<owner>--<repo>/snapshots/<commit>/<file>``."""
    return locations.data_dir / "models"


def register(locations: Locations, label: str, path: Path, mmproj: Path | None = None) -> None:
    data = load(locations)
    # Absolute, links kept: a pulled file is the hub cache's snapshot link, whose target is named by hash.
    data["models"][label] = {"path": os.path.abspath(path),
                             **({"mmproj": os.path.abspath(mmproj)} if mmproj else {})}
    save(locations, data)
