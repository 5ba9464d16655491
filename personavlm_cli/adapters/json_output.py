"""The constrained-JSON protocol both chat model backends share (the local llama.cpp model and a model
server): ask under a JSON schema, parse, check the object against the schema with ``jsonschema`` (a
grammar is not the whole schema, and a server may ignore it) and against the caller's own check, retry
once at a slightly higher temperature, then give up with one line.

``jsonschema`` is imported only when an object is checked: importing this module is cheap.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from personavlm_cli.core.errors import PersonaError


class ModelOutputError(PersonaError):
    """The model answered, but not in the form that was asked for (JSON that fails its schema)."""


def one_line(text: str, limit: int = 300) -> str:
    """``text`` with its white space folded to single spaces, cut at ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def json_type(v: Any) -> str:
    """The JSON type name of a Python value as ``json.loads`` makes it (``True`` is a boolean, not 1)."""
    if v is None:
        return "null"
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                       (list, "array"), (dict, "object")):
        if isinstance(v, kind):
            return name
    return type(v).__name__


_VALIDATORS: dict[str, Any] = {}


def _validator(schema: Mapping[str, Any]):
    """A Draft 2020-12 validator for ``schema`` (kept: the same few schemas are checked every turn)."""
    key = json.dumps(schema, sort_keys=True, default=str)
    v = _VALIDATORS.get(key)
    if v is None:
        from jsonschema import Draft202012Validator

        v = Draft202012Validator(schema)
        if len(_VALIDATORS) >= 64:
            _VALIDATORS.pop(next(iter(_VALIDATORS)))
        _VALIDATORS[key] = v
    return v


def _where(root: str, path) -> str:
    return root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


_WORDING = {
    "enum": "{value!r} is not one of {listed!r}",
    "const": "must be {expected!r}",
    "maxLength": "longer than {expected} characters",
    "minLength": "shorter than {expected} characters",
    "minimum": "{value} is below the minimum {expected}",
    "maximum": "{value} is above the maximum {expected}",
    "maxItems": "more than {expected} items",
    "minItems": "fewer than {expected} items",
}


def _reasons(error, where: str) -> list[str]:
    """Our one-line wording of one jsonschema error (one reason per missing or unexpected key)."""
    kind, expected, value = error.validator, error.validator_value, error.instance
    if kind == "type":
        types = [expected] if isinstance(expected, str) else list(expected)
        return [f"{where}: expected {' or '.join(types)}, got {json_type(value)}"]
    if kind == "required":
        return [f"{where}: missing required key {k!r}" for k in expected if k not in value]
    if kind == "additionalProperties":
        known = error.schema.get("properties", {})
        return [f"{where}: unexpected key {k!r}" for k in value if k not in known]
    template = _WORDING.get(kind)
    if template is None:
        return [f"{where}: {one_line(error.message, 200)}"]
    listed = list(expected) if kind == "enum" else expected
    return [f"{where}: " + template.format(value=value, expected=expected, listed=listed)]


def validate_json(value: Any, schema: Mapping[str, Any], where: str = "$") -> list[str]:
    """Reasons ``value`` breaks ``schema`` (empty: it conforms), checked by ``jsonschema`` (Draft 2020-12).

    Each reason is one line that starts with the place in the value (``$.tags[3]: ...``). A value of
    the wrong type gets only that reason for its place; a boolean is never an integer (JSON's
    ``true`` is not ``1``), while ``3.0`` is the integer 3, as JSON Schema says.
    """
    errors = list(_validator(schema).iter_errors(value))
    mistyped = {tuple(e.absolute_path) for e in errors if e.validator == "type"}
    out: list[str] = []
    for e in errors:
        path = tuple(e.absolute_path)
        if path in mistyped and e.validator != "type":
            continue
        for reason in _reasons(e, _where(where, path)):
            if reason not in out:
                out.append(reason)
    return out


def complete_json_with(complete: Callable[..., str], messages, schema: dict, *, max_tokens: int,
                       validate: Callable[[dict], str | None] | None, retries: int, seed: int) -> dict:
    """The JSON protocol both model runtimes share: ask under the schema, parse, check against the
    schema and the caller's own check, retry at a slightly higher temperature, then raise
    ModelOutputError (one line, with the last reason).

    ``complete`` is the backend's ``complete(messages, max_tokens=, temperature=, json_schema=, seed=)``;
    its own errors (a server that cannot be reached, an interrupted call) pass through at once.
    ``validate(obj)`` returns None when the object is fine, or a reason (or raises ValueError).
    """
    reason = "no attempt made"
    attempts = max(0, int(retries)) + 1
    for attempt in range(attempts):
        raw = complete(messages, max_tokens=max_tokens, temperature=0.0 if attempt == 0 else 0.2,
                       json_schema=schema, seed=seed + attempt)
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            reason = f"not JSON ({e.msg} at character {e.pos}; the answer may have been cut off)"
            continue
        errors = validate_json(obj, schema)
        if not errors and validate is not None:
            try:
                extra = validate(obj)
            except ValueError as e:
                extra = str(e) or "rejected by the caller's check"
            if extra:
                errors = [str(extra)]
        if not errors:
            if not isinstance(obj, dict):
                reason = f"expected a JSON object, got {json_type(obj)}"
                continue
            return obj
        reason = errors[0]
    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    raise ModelOutputError(one_line(f"the model did not produce valid JSON after {tries}: {reason}"))
