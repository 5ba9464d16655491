"""`personavlm model ...`: a small registry of GGUF chat models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from personavlm_cli.cli.common import JsonOpt, err, human_size, make_env, out, print_json
from personavlm_cli.core import models as registry
from personavlm_cli.core.errors import NotFoundError, PersonaError

app = typer.Typer(help="Register, list and choose GGUF chat models.", no_args_is_help=True)


def _describe(name: str, entry: dict, default: str | None) -> dict:
    from personavlm_cli.adapters.llm import inspect_gguf

    row = {"name": name, "path": entry["path"], "mmproj": entry.get("mmproj"), "default": name == default,
           "vision": bool(entry.get("mmproj"))}
    try:
        g = inspect_gguf(Path(entry["path"]))
        row.update(architecture=g.architecture, quantization=g.quantization, size=g.size_bytes,
                   context=g.context_length)
    except PersonaError as exc:
        row["problem"] = str(exc)
    return row


@app.command("list")
def list_(json: JsonOpt = False):
    """Registered models, plus the embedded default."""
    from personavlm_cli.adapters.llm import embedded_model_path

    env = make_env(None)
    data = registry.load(env.settings.locations)
    rows = [_describe("embedded", {"path": str(embedded_model_path())}, data["default"] or "embedded")]
    rows += [_describe(n, e, data["default"]) for n, e in sorted(data["models"].items())]
    if json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(box=None)
    for col in ("", "name", "architecture", "quant", "size", "context", "vision", "path"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row("*" if r["default"] else "", r["name"], r.get("architecture", "?"), r.get("quantization", "?"),
                      human_size(r["size"]) if "size" in r else "?", str(r.get("context", "?")),
                      "yes" if r["vision"] else "no", r.get("problem") or r["path"])
    out.print(table)


@app.command()
def add(path: Annotated[Path, typer.Argument(help="A GGUF chat model file.")],
        name: Annotated[Optional[str], typer.Option("--name", help="Name to register it under.")] = None,
        mmproj: Annotated[Optional[Path], typer.Option("--mmproj", help="Its vision projector GGUF.")] = None):
    """Register a GGUF model (its metadata is read and checked)."""
    from personavlm_cli.adapters.llm import inspect_gguf

    g = inspect_gguf(path)
    if g.is_projector:
        raise PersonaError(f"{path} is a vision projector (mmproj), not a chat model; pass it with --mmproj")
    if mmproj is not None and not inspect_gguf(mmproj).is_projector:
        raise PersonaError(f"{mmproj} is not a vision projector (mmproj) file")
    env = make_env(None)
    data = registry.load(env.settings.locations)
    label = name or (g.name or path.stem).replace(" ", "-").lower()
    data["models"][label] = {"path": str(path.resolve()), **({"mmproj": str(mmproj.resolve())} if mmproj else {})}
    registry.save(env.settings.locations, data)
    err.print(f"Registered '{label}': {g.architecture} {g.quantization}, context {g.context_length}")


@app.command()
def default(name: Annotated[str, typer.Argument(help="A registered name, or 'embedded'.")]):
    """Use this model when no --model is given (sets model.path in config.yaml)."""
    import yaml

    env = make_env(None)
    loc = env.settings.locations
    data = registry.load(loc)
    if name != "embedded" and name not in data["models"]:
        raise NotFoundError(f"no model named '{name}' (see `personavlm model list`)")
    data["default"] = None if name == "embedded" else name
    registry.save(loc, data)
    cfg = {}
    if loc.config_file.exists():
        cfg = yaml.safe_load(loc.config_file.read_text()) or {}
    cfg.setdefault("model", {})["path"] = data["default"]
    loc.config_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    loc.config_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    err.print(f"Default model: {name}")


@app.command()
def rm(name: Annotated[str, typer.Argument(help="A registered name.")]):
    """Forget a registered model (the file itself is left alone)."""
    env = make_env(None)
    data = registry.load(env.settings.locations)
    if name not in data["models"]:
        raise NotFoundError(f"no model named '{name}'")
    del data["models"][name]
    if data["default"] == name:
        data["default"] = None
    registry.save(env.settings.locations, data)
    err.print(f"Removed '{name}' from the registry")
