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
from collections.abc import ItemsView, Mapping
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
    choices: tuple[str, ...] = ()
    nullable: bool = False
    low: float | None = None  # the smallest value allowed (numbers only)
    high: float | None = None  # the largest value allowed (numbers only)


def _num_text(value: float) -> str:
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
        Key("model.api_key", str, None, "API key for that server (sent as a Bearer token); better in the "
            "environment (PERSONAVLM_MODEL_API_KEY) or in model.api_key_file than in this file", nullable=True),
        Key("model.api_key_file", str, None, "a file (0600) whose first line is the API key, read when "
            "model.api_key is not set", nullable=True),
        Key("model.vision", bool, False, "that server's model sees images"),
        Key("clip.model", str, "ViT-B-32", "open_clip architecture for image memories"),
        Key("clip.weights", str, "none",
            "CLIP weights: none (seeded random init: exact and near-duplicate image matching only), "
            "a local weights file, or an open_clip tag such as laion2b_s34b_b79k in the hub cache (the standard "
            "one, where `personavlm model pull clip` puts it and sets this key, or cache_dir/clip)"),
        Key("archive.max_member_mb", int, 1024, "largest member of an imported archive once decompressed, "
            "in MiB (memories.jsonl, personality.json, state.json: checked from the zip's headers and while "
            "reading)", low=1, high=4096),
        Key("archive.max_ratio", int, 200, "largest compression ratio of an imported archive's member over 1 MiB "
            "(a zip bomb expands a thousand times)", low=2, high=100_000),
        Key("archive.max_line_kb", int, 2048, "longest line of an imported archive's memories.jsonl, in KiB",
            low=1, high=1 << 20),
        Key("store.kind", str, "embedded", "embedded ChromaDB on disk, or a ChromaDB server",
            choices=("embedded", "server")),
        Key("store.url", str, None, "ChromaDB server URL (store.kind server)", nullable=True),
        Key("store.database_url", str, None,
            "PostgreSQL URL of the records (store.kind server): postgresql://user:password@host:port/database; "
            "empty = the records stay in the local user directory; the password is better left out of it, in "
            "PGPASSWORD or ~/.pgpass (read by libpq)", nullable=True),
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
    out: Any  # a bool, int, float or str, as key.type says
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
            if isinstance(value, (bool, int, float)) and key.name not in _NUMBERS_AS_TEXT:
                # YAML read the text as a number or a boolean (``user: 123``, ``user: 0123`` is 83,
                # ``user: yes`` is true): taken as a string it would silently change.
                what = "true or false" if isinstance(value, bool) else f"the number {_shown(value)}"
                raise ConfigError(f"{origin}: '{key.name}' must be text, but YAML reads the value as {what}: "
                                  f"write it in quotes ({key.name.rpartition('.')[2]}: \"...\")")
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
# Text keys whose value may be written as a number in YAML (``gpu_layers: 20``).
_NUMBERS_AS_TEXT = ("model.gpu_layers",)


def shown_value(name: str, value: Any) -> Any:
    """``value`` as it may be printed: a secret setting as ``***``, a URL's or connection string's
    credentials masked (the one policy: ``core.secrets``)."""
    from personavlm_cli.core.secrets import shown_setting

    return shown_setting(name, value)


def _num(value: float | None) -> str:
    return "any" if value is None else (str(int(value)) if float(value).is_integer() else str(value))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_TYPE_WORDS = {bool: "bool", int: "int", float: "a finite float", str: "str"}


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
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
    def resolve(cls, environ: Mapping[str, str] | None = None) -> Locations:
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

    def __init__(self, values: dict[str, Any], origins: dict[str, str], locations: Locations,
                 warnings: tuple[str, ...] = ()):
        self._values = values
        self._origins = origins
        self.locations = locations
        self.warnings = warnings  # said once per run by the CLI (a secret in a file others can read)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def origin(self, key: str) -> str:
        return self._origins[key]

    def items(self) -> ItemsView[str, Any]:
        return self._values.items()

    def with_overrides(self, overrides: dict[str, Any]) -> Settings:
        values, origins = dict(self._values), dict(self._origins)
        for name, value in overrides.items():
            if value is None:
                continue
            values[name] = _coerce(KEYS[name], value, "option")
            origins[name] = "flag"
        _remember_secrets(values)
        return Settings(values, origins, self.locations, self.warnings)

    @classmethod
    def load(cls, overrides: dict[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
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

        warnings = []
        if any(origins[n] == "file" for n in KEYS) and _readable_by_others(path) and any(
                origins[n] == "file" and _holds_secret(n, values[n]) for n in KEYS):
            warnings.append(f"{_shown_path(path)} holds a secret and other users can read it: run chmod 600 on "
                            "it, or move the secret to the environment (PERSONAVLM_MODEL_API_KEY, PGPASSWORD) or "
                            "to model.api_key_file")
        if values["model.api_key"] is None and values["model.api_key_file"]:
            values["model.api_key"], warning = _read_key_file(Path(values["model.api_key_file"]).expanduser())
            origins["model.api_key"] = "key file"
            if warning:
                warnings.append(warning)
        _remember_secrets(values)
        settings = cls(values, origins, locations, tuple(warnings))
        return settings.with_overrides(overrides or {})


def _holds_secret(name: str, value: Any) -> bool:
    from personavlm_cli.core.secrets import holds_secret

    return holds_secret(name, value)


def _remember_secrets(values: dict[str, Any]) -> None:
    """Every secret of the settings is masked wherever it later appears (a server's echo, a log line)."""
    from personavlm_cli.core.secrets import SECRET_KEYS, URL_KEYS, remember, secrets_in

    for name in SECRET_KEYS:
        remember(values.get(name))
    for name in URL_KEYS:
        if isinstance(values.get(name), str):
            for found in secrets_in(values[name]):
                remember(found)


def _readable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & 0o044)
    except OSError:
        return False


def _read_key_file(path: Path) -> tuple[str, str | None]:
    """The API key in ``path`` (its first line), and a warning when others can read the file."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(65_537)
    except OSError as exc:
        raise ConfigError(f"cannot read model.api_key_file {_shown_path(path)}: {exc.strerror or exc}") from None
    if len(raw) > 65_536:
        raise ConfigError(f"model.api_key_file {_shown_path(path)} is too large to hold an API key")
    try:
        key = (raw.decode("utf-8").splitlines() or [""])[0].strip()
    except UnicodeDecodeError:
        raise ConfigError(f"model.api_key_file {_shown_path(path)} is not UTF-8 text") from None
    if not key:
        raise ConfigError(f"model.api_key_file {_shown_path(path)} is empty: its first line must be the API key")
    warning = None
    if _readable_by_others(path):
        warning = (f"model.api_key_file {_shown_path(path)} can be read by other users: run chmod 600 on it")
    return key, warning


def env_var(name: str) -> str:
    return "PERSONAVLM_" + name.upper().replace(".", "_")


# Variables read outside the settings (`PERSONAVLM_HOME` moves everything; `PERSONAVLM_DEBUG=1` shows
# tracebacks). Any other `PERSONAVLM_*` variable is a misspelling, refused like an unknown file key.
OTHER_VARIABLES = ("PERSONAVLM_HOME", "PERSONAVLM_DEBUG")


def _check_variables(env: Mapping[str, str]) -> None:
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
