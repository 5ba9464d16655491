"""The model registry: named GGUF chat models (path, projector, context) in ``models.yaml``."""

from __future__ import annotations

import os
from pathlib import Path

from personavlm_cli.core.config import Locations
from personavlm_cli.core.errors import ConfigError, NotFoundError


def load(locations: Locations) -> dict:
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


def save(locations: Locations, data: dict) -> None:
    import yaml

    path = locations.models_file
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=True), encoding="utf-8")
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
