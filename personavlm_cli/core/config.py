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

import difflib
import math
import os
from dataclasses import dataclass, replace
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
    low: float | None = None  # the smallest value allowed (numbers only)
    high: float | None = None  # the largest value allowed (numbers only)


def _num_text(value) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


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
        Key("model.context", int, 4096, "context window in tokens (0 = the model's own)", low=0, high=1 << 20),
        Key("model.gpu_layers", str, "auto", "layers offloaded to the GPU: auto, all or a number"),
        Key("model.threads", int, None, "CPU threads for generation (empty = llama.cpp's choice)", nullable=True,
            low=1, high=1024),
        Key("model.max_tokens", int, 512, "most tokens in one answer", low=1, high=1 << 20),
        Key("model.temperature", float, 0.7, "sampling temperature for answers (0 = greedy)", low=0, high=5),
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
            "a local weights file, or an open_clip tag such as openai already in the cache (cache_dir/clip, see "
            "`personavlm config path`; personavlm downloads nothing)"),
        Key("store.kind", str, "embedded", "embedded ChromaDB on disk, or a ChromaDB server",
            choices=("embedded", "server")),
        Key("store.url", str, None, "ChromaDB server URL (store.kind server)", nullable=True),
        Key("store.database_url", str, None,
            "PostgreSQL URL of the records (store.kind server): postgresql://user:password@host:port/database; "
            "empty = the records stay in the local user directory", nullable=True),
        Key("store.retry_seconds", int, 30, "how long an open server store waits for a lost PostgreSQL connection "
            "to come back (a restart, a failover) before it says the server is unreachable", low=0, high=3600),
        Key("chat.session_gap_minutes", int, 60, "minutes of silence that start a new chat session",
            low=1, high=525_600),
        Key("chat.history", bool, True, "keep a per-user input history for the REPL"),
        Key("chat.recent_turns", int, 20, "most recent-context turns (of the last session gap) put in the prompt",
            low=0, high=10_000),
        Key("memory.update", bool, True, "run the update stage (memory extraction) after each answer"),
        Key("memory.extractor", str, "auto",
            "who decides what is learnt: rules (the user's own sentences), model (the model's rephrasing, "
            "checked against the user's words), or auto (rules for models under 3 GB, model otherwise)",
            choices=("auto", "rules", "model")),
        Key("chat.retrieval", str, "retrieve-first",
            "retrieve-first: recall runs before every answer; model-decides: a separate model call decides "
            "(the paper's loop, one more model call per message)", choices=("retrieve-first", "model-decides")),
        Key("chat.model_search", bool, True,
            "let the model ask for another recall by opening its reply with 'SEARCH: keywords' (at most 3; "
            "with the full prompt style only)"),
        Key("model.prompt_style", str, "auto",
            "answer prompt layout: full (system text with profile, habits and style; dated memories), compact "
            "(no system text; memories as one Context line: small models), or auto (compact under 3 GB)",
            choices=("auto", "full", "compact")),
    ]
}

# Numbers with a range say so in their documentation (`config show`, docs/configuration.md).
KEYS = {name: (replace(k, doc=f"{k.doc} ({_num_text(k.low)} to {_num_text(k.high)})")
               if k.low is not None and k.high is not None else k) for name, k in KEYS.items()}


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
            if not math.isfinite(out):
                raise ValueError
        else:
            if isinstance(value, (dict, list)):
                raise ValueError
            out = str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{origin}: '{key.name}' must be {_TYPE_WORDS[key.type]}, got {_shown(value)}"
        ) from None
    if key.choices and out not in key.choices:
        raise ConfigError(f"{origin}: '{key.name}' must be one of {', '.join(key.choices)}, got {out!r}")
    if key.name in _URL_KEYS and out is not None:
        scheme = out.strip().split("://", 1)[0].lower() if "://" in out else ""
        if scheme not in _URL_KEYS[key.name]:
            raise ConfigError(f"{origin}: '{key.name}' must be a {_URL_KEYS[key.name][0]}:// URL, "
                              f"got {shown_value(key.name, out)!r}")
    if key.type in (int, float) and out is not None and not (
            (key.low is None or out >= key.low) and (key.high is None or out <= key.high)):
        raise ConfigError(f"{origin}: '{key.name}' must be between {_num(key.low)} and {_num(key.high)}, "
                          f"got {_shown(value)}")
    return out


# Keys whose value is a URL of one of these schemes (checked when read; the adapter checks the rest).
_URL_KEYS = {"store.database_url": ("postgresql", "postgres")}
# Keys whose value may hold a password: shown without it (`config show`, doctor, messages).
SECRET_URL_KEYS = ("store.database_url",)


def shown_value(name: str, value: Any) -> Any:
    """``value`` as it may be printed: a URL key's password replaced by ``***``."""
    if name not in SECRET_URL_KEYS or not isinstance(value, str):
        return value
    from urllib.parse import urlsplit, urlunsplit

    try:
        u = urlsplit(value.strip())
        if u.password is None:
            return value
        netloc = f"{u.username}:***@" + u.netloc.rpartition("@")[2]
        return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))
    except ValueError:
        return "(an invalid URL)"


def _num(value) -> str:
    return "any" if value is None else (str(int(value)) if float(value).is_integer() else str(value))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_TYPE_WORDS = {bool: "bool", int: "int", float: "a finite float", str: "str"}


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
            if "\0" in home:
                raise ConfigError("PERSONAVLM_HOME contains a NUL character")
            root = Path(home).expanduser().absolute()
            try:
                usable = root.is_dir() or not root.exists()
            except OSError:
                usable = False
            if not usable:
                raise ConfigError(f"PERSONAVLM_HOME={_shown_path(root)} is not a directory: point it at a directory "
                                  "(it is created if missing)")
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
        if path.exists() or path.is_symlink():
            for name, raw in _read_file(path).items():
                values[name] = _coerce(KEYS[name], raw, str(path))
                origins[name] = "file"

        _check_variables(env)
        for name, key in KEYS.items():
            var = env_var(name)
            if var in env:
                values[name] = _coerce(key, env[var], f"environment {var}")
                origins[name] = "env"

        settings = cls(values, origins, locations)
        return settings.with_overrides(overrides or {})


def env_var(name: str) -> str:
    return "PERSONAVLM_" + name.upper().replace(".", "_")


# Variables read outside the settings (`PERSONAVLM_HOME` moves everything; `PERSONAVLM_DEBUG=1` shows
# tracebacks). Any other `PERSONAVLM_*` variable is a misspelling, refused like an unknown file key.
OTHER_VARIABLES = ("PERSONAVLM_HOME", "PERSONAVLM_DEBUG")


def _check_variables(env) -> None:
    known = {env_var(name) for name in KEYS} | set(OTHER_VARIABLES)
    unknown = sorted(v for v in env if v.startswith("PERSONAVLM_") and v not in known)
    if unknown:
        near = difflib.get_close_matches(unknown[0], sorted(known), n=1, cutoff=0.75)
        hint = f" (did you mean {near[0]}?)" if near else " (see `personavlm config show`)"
        raise ConfigError(f"unknown environment variable {_shown_name(unknown[0])}{hint}")


def _shown_name(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")[:80]


def _shown_path(path: Path) -> str:
    return str(path).encode("unicode_escape", "backslashreplace").decode("ascii")[:200]


def _read_file(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    flat = _flatten(data)
    unknown = sorted(set(flat) - set(KEYS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key '{unknown[0]}' (see `personavlm config show`)")
    return flat
