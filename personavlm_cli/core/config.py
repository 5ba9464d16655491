"""Configuration: one object, loaded once, passed down.

Precedence, highest first:
  1. command-line flags (the CLI passes them as ``overrides``)
  2. environment variables ``PERSONAVLM_<KEY>`` (dots become underscores: ``model.path`` is
     ``PERSONAVLM_MODEL_PATH``)
  3. the YAML file ``config.yaml`` in the config directory
  4. the defaults in ``KEYS`` below

``PERSONAVLM_HOME`` moves everything (config and data) under one directory; without it the
platform's user config and data directories are used (platformdirs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personavlm_cli.core.errors import ConfigError

APP_NAME = "personavlm"


@dataclass(frozen=True)
class Key:
    name: str
    type: type
    default: Any
    doc: str
    choices: tuple = ()
    nullable: bool = False


# Every setting the program reads. `config show` prints them and docs/configuration.md
# documents them; an unknown key in the file is an error, not silently ignored.
KEYS: dict[str, Key] = {
    k.name: k
    for k in [
        Key("user", str, None, "default user name (else the login name)", nullable=True),
        Key("model.kind", str, "llama-cpp", "where the chat model runs",
            choices=("llama-cpp", "openai-compatible")),
        Key("model.path", str, None, "GGUF file or registered model name; empty = the embedded SmolLM2-135M",
            nullable=True),
        Key("model.mmproj", str, None, "vision projector GGUF (mmproj) for a vision model", nullable=True),
        Key("model.context", int, 4096, "context window in tokens (0 = the model's own)"),
        Key("model.gpu_layers", str, "auto", "layers offloaded to the GPU: auto, all or a number"),
        Key("model.threads", int, None, "CPU threads for generation (empty = llama.cpp's choice)", nullable=True),
        Key("model.max_tokens", int, 512, "most tokens in one answer"),
        Key("model.temperature", float, 0.7, "sampling temperature for answers"),
        Key("model.prompt_profile", str, "generic", "prompt surface: generic, or persona-vlm for the released weights",
            choices=("generic", "persona-vlm")),
        Key("model.url", str, None, "base URL of an OpenAI-compatible server (model.kind openai-compatible)",
            nullable=True),
        Key("model.name", str, None, "model name to ask that server for", nullable=True),
        Key("model.api_key", str, None, "API key for that server (sent as a Bearer token)", nullable=True),
        Key("model.vision", bool, False, "that server's model sees images"),
        Key("clip.model", str, "ViT-B-32", "open_clip architecture for image memories"),
        Key("clip.weights", str, "none",
            "CLIP weights: none (seeded random init: exact and near-duplicate image matching only), "
            "a hub tag such as openai (downloaded by `personavlm doctor --download-clip`), or a local file"),
        Key("store.kind", str, "embedded", "embedded ChromaDB on disk, or a ChromaDB server",
            choices=("embedded", "server")),
        Key("store.url", str, None, "ChromaDB server URL (store.kind server)", nullable=True),
        Key("chat.session_gap_minutes", int, 60, "minutes of silence that start a new chat session"),
        Key("chat.history", bool, True, "keep a per-user input history for the REPL"),
        Key("chat.recent_turns", int, 20, "most recent-context turns (of the last session gap) put in the prompt"),
        Key("memory.update", bool, True, "run the update stage (memory extraction) after each answer"),
    ]
}


def _coerce(key: Key, value: Any, origin: str) -> Any:
    if value is None or (isinstance(value, str) and value.strip() == "" and key.nullable):
        if key.nullable:
            return None
        raise ConfigError(f"{origin}: '{key.name}' must not be empty")
    try:
        if key.type is bool:
            if isinstance(value, bool):
                out = value
            elif isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                out = True
            elif isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                out = False
            else:
                raise ValueError
        elif key.type is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            out = int(value)
        elif key.type is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
        else:
            if isinstance(value, (dict, list)):
                raise ValueError
            out = str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{origin}: '{key.name}' must be {key.type.__name__}, got {value!r}"
        ) from None
    if key.choices and out not in key.choices:
        raise ConfigError(f"{origin}: '{key.name}' must be one of {', '.join(key.choices)}, got {out!r}")
    return out


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in data.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and any(key.startswith(name + ".") for key in KEYS):
            flat.update(_flatten(v, name + "."))
        else:
            flat[name] = v
    return flat


@dataclass(frozen=True)
class Locations:
    """Where configuration and data live; every path `config path` prints."""

    config_dir: Path
    data_dir: Path
    cache_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.yaml"

    @property
    def users_dir(self) -> Path:
        return self.data_dir / "users"

    @property
    def models_file(self) -> Path:
        return self.config_dir / "models.yaml"

    @classmethod
    def resolve(cls, environ: dict | None = None) -> "Locations":
        env = os.environ if environ is None else environ
        home = env.get("PERSONAVLM_HOME")
        if home:
            root = Path(home).expanduser().absolute()
            return cls(root, root / "data", root / "cache")
        import platformdirs

        return cls(
            Path(platformdirs.user_config_dir(APP_NAME)),
            Path(platformdirs.user_data_dir(APP_NAME)),
            Path(platformdirs.user_cache_dir(APP_NAME)),
        )


class Settings:
    """Resolved settings: ``settings["model.path"]``; ``origin(key)`` says where a value came from."""

    def __init__(self, values: dict[str, Any], origins: dict[str, str], locations: Locations):
        self._values = values
        self._origins = origins
        self.locations = locations

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def origin(self, key: str) -> str:
        return self._origins[key]

    def items(self):
        return self._values.items()

    def with_overrides(self, overrides: dict[str, Any]) -> "Settings":
        values, origins = dict(self._values), dict(self._origins)
        for name, value in overrides.items():
            if value is None:
                continue
            values[name] = _coerce(KEYS[name], value, "option")
            origins[name] = "flag"
        return Settings(values, origins, self.locations)

    @classmethod
    def load(cls, overrides: dict[str, Any] | None = None, environ: dict | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        locations = Locations.resolve(env)
        values = {name: key.default for name, key in KEYS.items()}
        origins = {name: "default" for name in KEYS}

        path = locations.config_file
        if path.exists():
            for name, raw in _read_file(path).items():
                values[name] = _coerce(KEYS[name], raw, str(path))
                origins[name] = "file"

        for name, key in KEYS.items():
            var = env_var(name)
            if var in env:
                values[name] = _coerce(key, env[var], f"environment {var}")
                origins[name] = "env"

        settings = cls(values, origins, locations)
        return settings.with_overrides(overrides or {})


def env_var(name: str) -> str:
    return "PERSONAVLM_" + name.upper().replace(".", "_")


def _read_file(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    flat = _flatten(data)
    unknown = sorted(set(flat) - set(KEYS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key '{unknown[0]}' (see `personavlm config show`)")
    return flat
