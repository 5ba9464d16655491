"""`personavlm model ...`: a small registry of GGUF chat models, and downloads from the Hugging Face hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from personavlm_cli.cli.common import JsonOpt, err, human_size, line, listing_table, make_env, one_line, out, print_json
from personavlm_cli.cli.hub import fetch_with_progress
from personavlm_cli.core import models as registry
from personavlm_cli.core.errors import NotFoundError, PersonaError

app = typer.Typer(help="Download, register, list and choose GGUF chat models.", no_args_is_help=True)


def _describe(name: str, entry: dict, default: str | None) -> dict:
    from personavlm_cli.adapters.gguf import inspect_gguf

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
    from personavlm_cli.adapters.gguf import embedded_model_path

    env = make_env(None)
    data = registry.load(env.settings.locations)
    rows = [_describe("embedded", {"path": str(embedded_model_path())}, data["default"] or "embedded")]
    rows += [_describe(n, e, data["default"]) for n, e in sorted(data["models"].items())]
    if json:
        print_json(rows)
        return
    # One block per model: its facts on one line, then each file's path alone on its own line, never
    # broken by us (a terminal too narrow wraps it, and a copy still gives the whole path).
    width = max(len(one_line(r["name"])) for r in rows)
    for r in rows:
        mark = ("* ", "bold green") if r["default"] else "  "
        name = (one_line(r["name"]).ljust(width), "bold")
        facts: str | tuple[str, str]
        if "problem" in r:
            facts = (one_line(r["problem"]), "yellow")
        else:
            facts = " · ".join([one_line(r.get("architecture") or "?"), one_line(r.get("quantization") or "?"),
                                human_size(r["size"]), f"context {one_line(r.get('context') or '?')}",
                                "vision" if r["vision"] else "text only"])
        out.print(line(mark, name, "  ", facts), soft_wrap=True)
        out.print(line("    ", r["path"]), soft_wrap=True)
        if r.get("mmproj"):
            out.print(line("    ", ("mmproj ", "dim"), r["mmproj"]), soft_wrap=True)
    err.print(line(("* the default model (personavlm model default NAME)", "dim")))


@app.command()
def add(path: Annotated[Path, typer.Argument(help="A GGUF chat model file.")],
        name: Annotated[str | None, typer.Option("--name", help="Name to register it under.")] = None,
        mmproj: Annotated[Path | None, typer.Option("--mmproj", help="Its vision projector GGUF.")] = None):
    """Register a GGUF model (its metadata is read and checked)."""
    env = make_env(None)
    _register(env, path, mmproj, name, lambda g: (g.name or path.stem))


def _register(env, path: Path, mmproj: Path | None, name: str | None, default_label) -> str:
    """Check the files' metadata, register them under ``name`` (or ``default_label(info)``), say so."""
    from personavlm_cli.adapters.gguf import inspect_gguf

    g = inspect_gguf(path)
    if g.is_projector:
        raise PersonaError(f"{path} is a vision projector (mmproj), not a chat model; pass it with --mmproj")
    if mmproj is not None and not inspect_gguf(mmproj).is_projector:
        raise PersonaError(f"{mmproj} is not a vision projector (mmproj) file")
    label = name or default_label(g).replace(" ", "-").lower()
    registry.register(env.settings.locations, label, path, mmproj)
    vision = ", vision" if mmproj is not None else ""
    err.print(line(f"Registered '{label}': {one_line(g.architecture)} {one_line(g.quantization)}, "
                   f"context {g.context_length}{vision}"))
    return label


@app.command()
def default(name: Annotated[str, typer.Argument(help="A registered name, or 'embedded'.")]):
    """Use this model when no --model is given (sets model.path in config.yaml)."""
    _set_default(make_env(None), name)


def _set_default(env, name: str) -> None:
    loc = env.settings.locations
    data = registry.load(loc)
    if name != "embedded" and name not in data["models"]:
        raise NotFoundError(f"no model named '{name}' (see `personavlm model list`)")
    data["default"] = None if name == "embedded" else name
    registry.save(loc, data)
    _write_default(loc, data["default"])
    err.print(line(f"Default model: {name}"))


def _write_default(loc, value: str | None) -> None:
    """model.path in config.yaml names the default model (empty: the embedded one). Only that value
    changes: the user's comments and layout stay; the file is replaced atomically, owner-only."""
    from personavlm_cli.adapters.config_file import set_value

    set_value(loc.config_file, "model.path", value)


@app.command()
def rm(name: Annotated[str, typer.Argument(help="A registered name.")],
       delete_files: Annotated[bool, typer.Option(
           "--delete-files", help="Also delete its files, if `model pull` downloaded them.")] = False):
    """Forget a registered model (its files are left alone unless --delete-files)."""
    env = make_env(None)
    loc = env.settings.locations
    data = registry.load(loc)
    if name not in data["models"]:
        raise NotFoundError(f"no model named '{name}'")
    entry = data["models"].pop(name)
    was_default = data["default"] == name
    if was_default:
        data["default"] = None
    registry.save(loc, data)
    if was_default:
        _write_default(loc, None)
    err.print(line(f"Removed '{name}' from the registry" + (" (the default is now the embedded model)" if was_default else "")))
    if delete_files:
        root = registry.models_dir(loc).resolve()
        still_used = {v for e in data["models"].values() for v in (e.get("path"), e.get("mmproj")) if v}
        for key in ("path", "mmproj"):
            value = entry.get(key)
            if not value:
                continue
            f = Path(value)
            if not f.resolve().is_relative_to(root):
                err.print(line(f"Kept {f}: not downloaded by `model pull`"))
            elif value in still_used:
                err.print(line(f"Kept {f}: another registered model uses it"))
            elif f.exists():
                from personavlm_cli.adapters.downloads import delete_file

                delete_file(f)
                err.print(line(f"Deleted {f}"))


@app.command()
def pull(
    model: Annotated[str | None, typer.Argument(
        help="A recommended model's name (run `personavlm model pull` alone for the list), a hub repository "
             "such as ggml-org/gemma-3-4b-it-GGUF, or clip (CLIP weights for image memories).",
        metavar="NAME|REPO|clip", show_default=False)] = None,
    file: Annotated[str | None, typer.Argument(
        help="With a repository: the GGUF file to download. With clip: an open_clip ARCH or ARCH:TAG "
             "(default: the recommended one).", metavar="FILE|ARCH", show_default=False)] = None,
    mmproj: Annotated[str | None, typer.Option(
        "--mmproj", help="With a repository: its vision projector file, downloaded too.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Name to register it under.")] = None,
    make_default: Annotated[bool, typer.Option("--default", help="Also make it the default model.")] = False,
    revision: Annotated[str, typer.Option("--revision", help="Branch, tag or commit on the hub.")] = "main",
):
    """Download a model from the Hugging Face hub (resumable, sha256-verified) and register it.

    Files go to the data directory's models/ folder, in the hub cache's layout. HF_ENDPOINT picks a
    mirror, HF_TOKEN opens gated repositories, HF_HUB_OFFLINE=1 forbids downloads. `model pull clip`
    fetches CLIP weights for image memories instead (see `personavlm model pull clip --help`).
    """
    from personavlm_cli.adapters import downloads

    if model is None:
        _print_recommended()
        return
    if model == "clip":
        from personavlm_cli.cli.clip import pull_clip

        pull_clip(make_env(None), file, revision)
        return
    if model in registry.RECOMMENDED and file is None:
        rec = registry.RECOMMENDED[model]
        repo, files, label = rec.repo, [rec.file] + ([rec.mmproj] if rec.mmproj and mmproj is None else []), model
        if mmproj is not None:
            files.append(mmproj)
    elif "/" in model:
        if file is None:
            raise PersonaError(f"name the GGUF file to download: personavlm model pull {model} FILE.gguf")
        repo, files, label = model, [file] + ([mmproj] if mmproj else []), None
    else:
        names = ", ".join(registry.RECOMMENDED)
        raise NotFoundError(f"no recommended model named '{model}' (known: {names}, clip); or give a hub "
                            "repository and file: personavlm model pull OWNER/REPO FILE.gguf")
    downloads.check_repo(repo)
    for f in files:
        downloads.check_filename(f)
    env = make_env(None)
    folder = registry.models_dir(env.settings.locations)
    paths = [fetch_with_progress(repo, f, revision, folder) for f in files]
    label = _register(env, paths[0], paths[1] if len(paths) > 1 else None, name or label,
                      lambda g: g.display_name)
    if make_default:
        _set_default(env, label)
    else:
        err.print(line(f"Use it with `personavlm chat --model {label}`, or make it the default: "
                       f"`personavlm model default {label}`"))


def _print_recommended() -> None:
    out.print("Recommended models (personavlm model pull NAME)", markup=False)
    table = listing_table("name", "size", "vision", "repository", "about", styles={"name": "bold"}, wrap=True)
    for r in registry.RECOMMENDED.values():
        table.add_row(r.name, "~" + r.approx_size, "yes" if r.mmproj else "no", r.repo, r.note)
    out.print(table)
