"""`personavlm config ...`, `users ...` and `doctor`."""

from __future__ import annotations

import platform
import sys
from typing import Annotated

import typer

from personavlm_cli.cli.common import (
    JsonOpt,
    UserOpt,
    err,
    human_size,
    line,
    listing_table,
    make_env,
    one_line,
    out,
    print_json,
    safe,
)
from personavlm_cli.core import users as users_core
from personavlm_cli.core.config import KEYS, env_var
from personavlm_cli.core.errors import ExitStatus, PersonaError

config_app = typer.Typer(help="Show the configuration and where everything lives.", no_args_is_help=True)
users_app = typer.Typer(help="The users on this machine.", no_args_is_help=True)


@config_app.command("show")
def config_show(json: JsonOpt = False,
                show_secrets: Annotated[bool, typer.Option(
                    "--show-secrets", help="Show API keys and passwords in full (they are *** otherwise).")] = False):
    """Every setting, its value, and where the value came from (flag, env, file, default)."""
    s = make_env(None).settings
    from personavlm_cli.core.config import shown_value

    rows = [{"key": k, "value": v if show_secrets else shown_value(k, v), "origin": s.origin(k), "env": env_var(k),
             "doc": KEYS[k].doc} for k, v in s.items()]
    if json:
        print_json(rows)
        return
    table = listing_table("key", "value", "from", "meaning", styles={"key": "cyan", "from": "dim"}, wrap=True)
    for r in rows:
        table.add_row(r["key"], "" if r["value"] is None else one_line(r["value"]), r["origin"], r["doc"])
    out.print(table)


@config_app.command("path")
def config_path(user: UserOpt = None, json: JsonOpt = False):
    """Where the config file, the data and the current user's store live."""
    env = make_env(user)
    loc = env.settings.locations
    paths = {"config_file": str(loc.config_file), "models_file": str(loc.models_file),
             "data_dir": str(loc.data_dir), "users_dir": str(loc.users_dir), "cache_dir": str(loc.cache_dir),
             "user_dir": str(users_core.user_dir(env.settings, env.user)),
             "log_file": str(users_core.user_dir(env.settings, env.user) / "personavlm.log")}
    if json:
        print_json(paths)
    else:
        for k, v in paths.items():
            out.print(line(f"{k:<12} ", v), soft_wrap=True)


@users_app.command("list")
def users_list(json: JsonOpt = False):
    """Users with a store on this machine."""
    env = make_env(None)
    names = users_core.list_users(env.settings)
    if json:
        print_json(names)
    else:
        for n in names:
            out.print(safe(n))
        if not names:
            err.print("no users yet")


@users_app.command("rm")
def users_rm(name: Annotated[str, typer.Argument(help="The user to remove, with all their data.")],
             yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False):
    """Remove a user and everything they have (memories, images, history), on the servers too."""
    import contextlib

    from personavlm_cli.adapters.lock import StoreLock
    from personavlm_cli.core.errors import NotFoundError

    env = make_env(name)
    server = env.settings["store.kind"] == "server"
    try:
        path = env.user_dir(create=False)
    except NotFoundError:
        # A server store's user may have no directory on this machine: their data is the servers'.
        if not env.database_url() or not _has_server_records(env):
            raise
        path = None
    if not yes:
        if not sys.stdin.isatty():
            raise typer.BadParameter("refusing without confirmation: pass --yes")
        if not typer.confirm(f"Remove user '{name}' and all their data?", err=True):
            raise typer.Exit(ExitStatus.ERROR)
    with StoreLock(path, name) if path is not None else contextlib.nullcontext():
        if server:
            # The vectors (and, with a record database, the records and images) live on the servers,
            # not in the user directory: they go first, then the directory.
            from personavlm_cli.adapters.vectors import VectorIndex
            from personavlm_cli.cli.env import namespace

            try:
                records = env.records(readonly=False, check_kind=False)
            except NotFoundError:
                records = None
            if records is not None:
                try:
                    VectorIndex(url=env.settings["store.url"], namespace=namespace(name, records)).drop(
                        ["memories", "images"])
                finally:
                    if env.database_url():
                        records.destroy()
                    else:
                        records.close()
        if path is not None:
            users_core.remove_user(env.settings, name)
    err.print(line(f"Removed user '{name}'"))


def _has_server_records(env) -> bool:
    from personavlm_cli.core.errors import NotFoundError

    try:
        env.records(readonly=True, check_kind=False).close()
        return True
    except NotFoundError:
        return False


def doctor(
    user: UserOpt = None,
    load: Annotated[bool, typer.Option("--load/--no-load", help="Load the model to report offloaded layers.")] = True,
    json: JsonOpt = False,
):
    """Versions, llama.cpp build features, GPU offload, model, CLIP weights, store location and size."""
    from importlib.metadata import PackageNotFoundError, version

    import personavlm_cli

    env = make_env(user)
    s = env.settings
    report: dict = {"personavlm": personavlm_cli.__version__, "python": platform.python_version(),
                    "platform": platform.platform()}
    for pkg in ("llama-cpp-python", "chromadb", "torch", "open-clip-torch", "onnxruntime", "typer", "rich"):
        try:
            report[pkg] = version(pkg)
        except PackageNotFoundError:
            report[pkg] = None
    try:
        from personavlm_cli.adapters.llama_runtime import runtime_info

        runtime = runtime_info()
        report["llama.cpp gpu offload"] = runtime["gpu offload"]
        report["llama.cpp build"] = runtime["build"]
    except Exception as exc:  # doctor reports problems instead of failing on them
        report["llama.cpp"] = f"unavailable: {exc}"
    if s["model.kind"] == "openai-compatible":
        from personavlm_cli.adapters.remote_llm import RemoteChatModel

        report["model server"] = s["model.url"]
        try:
            report["model server check"] = RemoteChatModel(s["model.url"], s["model.name"]).check()
        except Exception as exc:
            report["model problem"] = str(exc).splitlines()[0]
        load = False
    if s["store.kind"] == "server":
        from personavlm_cli.adapters.vectors import VectorIndex

        report["store server"] = s["store.url"]
        try:
            VectorIndex(url=s["store.url"], namespace="u-doctor-check-")
            report["store server check"] = "reachable"
        except Exception as exc:
            report["store problem"] = str(exc).splitlines()[0]
    try:
        path, mmproj = env.model_path()
        report["model"] = str(path)
        report["mmproj"] = str(mmproj) if mmproj else None
        from personavlm_cli.adapters.gguf import inspect_gguf

        g = inspect_gguf(path)
        report["model architecture"] = g.architecture
        report["model quantization"] = g.quantization
        report["model size"] = human_size(g.size_bytes)
        from personavlm_cli.core.capability import SMALL_MODEL_BYTES, extractor_for, prompt_style_for

        small = g.size_bytes < SMALL_MODEL_BYTES
        report["learning"] = extractor_for(s["memory.extractor"], small) + " (memory.extractor)"
        report["prompt style"] = prompt_style_for(s["model.prompt_style"], small) + " (model.prompt_style)"
        if load:
            from personavlm_cli.adapters.llm import ChatModel

            check_ctx = min(s["model.context"] or 2048, 2048)  # a light load, to check that it loads
            m = ChatModel(path, n_ctx=check_ctx, gpu_layers=s["model.gpu_layers"])
            li = m.load_info
            report["gpu layers offloaded"] = f"{li.gpu_layers_offloaded}/{li.total_layers}"
            report["model load"] = li.summary_line() + " (this check's load; a chat's context is below)"
            m.close()
        report["chat context"] = (f"{s['model.context']} tokens (model.context)" if s["model.context"]
                                  else "the model's own (model.context 0)")
    except Exception as exc:
        report["model problem"] = str(exc).splitlines()[0]
    weights = s["clip.weights"]
    report["clip model"] = s["clip.model"]
    report["clip weights"] = weights
    if weights in (None, "none"):
        report["text-to-image search"] = ("unavailable: no CLIP weights (images still match exact and "
                                          "near-duplicate images); fix: `personavlm model pull clip`")
    else:
        report["text-to-image search"] = "available"
    udir = users_core.user_dir(s, env.user)
    report["user"] = env.user
    report["store"] = str(udir)
    size = sum(f.stat().st_size for f in udir.rglob("*") if f.is_file()) if udir.exists() else 0
    report["store size"] = human_size(size)
    report["store kind"] = s["store.kind"]
    if env.database_url():  # where the records live (never with the password)
        from personavlm_cli.adapters.pg_records import shown_database_url

        report["records"] = f"{shown_database_url(env.database_url() or '')} (PostgreSQL, schema per user)"
        try:
            env.records(readonly=True).close()
            report["records check"] = "reachable"
        except Exception as exc:  # doctor reports, never fails
            report["records check"] = str(exc).splitlines()[0]
    else:
        report["records"] = f"{udir / 'personavlm.db'} (SQLite, this machine)"
    from personavlm_cli.cli.server_doctor import server_report

    report.update(server_report(env))  # each server: reachable, version, latency, schema, outbox
    db = udir / "personavlm.db"
    if db.exists():
        try:
            from personavlm_cli.adapters.records import RecordStore

            records = RecordStore(udir, readonly=True)
            try:
                report["learning pending"] = len(records.pending_jobs())
                report["learnt statements dropped"] = int(records.get_meta("learning_dropped") or 0)
                from personavlm_cli.cli.clip import target_space
                from personavlm_cli.core import reembed

                st = reembed.status(records, target_space(s))
                if st.images:
                    report["image vectors"] = (f"re-embedding with the new CLIP weights: {st.done} of {st.images} "
                                               "done (continues in the chat's background; `personavlm logs`)"
                                               if st.needed and not reembed.is_random(st.target) else
                                               f"{st.images} images, text search "
                                               + ("on" if st.text_search else "off (`personavlm model pull clip`)"))
            finally:
                records.close()
        except Exception as exc:  # doctor reports, never fails
            report["store problem"] = str(exc).splitlines()[0]
    report["log"] = str(udir / "personavlm.log")
    from personavlm_cli.core.secrets import masked

    # The one secret policy: a URL's password, a key a server echoed, in any line of the report.
    report = {k: masked(v) if isinstance(v, str) else v for k, v in report.items()}
    if json:
        print_json(report)
        return
    for k, v in report.items():  # versions, paths and error text from libraries: shown literally
        out.print(line((f"{k:<22}", "bold"), " ", "none" if v is None else one_line(v)), soft_wrap=True)


def logs(user: UserOpt = None,
         lines: Annotated[int, typer.Option("--lines", "-n", min=1, help="How many of the last lines.")] = 40):
    """The log of background work (learning, dropped statements, errors): ids and counts, never memory text."""
    from personavlm_cli.cli.common import log_file

    env = make_env(user)
    path = log_file(env)
    if not path.exists():
        err.print(line("No log yet (", str(path), ")."))
        return
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise PersonaError(f"cannot read {path}: {exc.strerror or exc}") from None
    for entry in text[-lines:]:
        out.print(safe(entry), soft_wrap=True)
