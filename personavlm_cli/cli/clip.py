"""`personavlm model pull clip [ARCH[:TAG]]`: real CLIP weights for image memories, and moving the images'
vectors into their space (re-embedding), with progress; the chat continues a move in its background.

The weights come the way open_clip users get them: the file open_clip's pretrained table names for the
tag, from the hub through ``huggingface_hub``, into the standard hub cache, where open_clip (offline)
finds it. Then ``clip.model`` and ``clip.weights`` are set in config.yaml.
"""

from __future__ import annotations

import threading
from typing import Any

from personavlm_cli.cli.common import count, err, line
from personavlm_cli.core.errors import ExitStatus

# The default: the fastest architecture on a CPU among open_clip's (docs/benchmarks.md, "CLIP weights"),
# with the weights most open_clip users of it have.
DEFAULT = ("ViT-B-32", "laion2b_s34b_b79k")


def parse(spec: str | None) -> tuple[str, str]:
    """``ARCH:TAG``, ``ARCH`` (its recommended tag), or nothing (the default)."""
    if not spec:
        return DEFAULT
    arch, _, tag = spec.partition(":")
    if tag:
        return arch, tag
    if arch == DEFAULT[0]:
        return DEFAULT
    from personavlm_cli.adapters.image_encoder import _import_open_clip

    tags = _import_open_clip().list_pretrained_tags_by_model(arch)
    if not tags:
        from personavlm_cli.core.errors import NotFoundError

        raise NotFoundError(f"open_clip has no pretrained weights for '{arch}' (try {DEFAULT[0]}, or ARCH:TAG)")
    return arch, tags[0]


def write_clip_config(loc, model: str, weights: str) -> None:
    """clip.model and clip.weights in config.yaml (the rest of the file as it was)."""
    import yaml

    cfg: dict[str, Any] = {}
    if loc.config_file.exists():
        cfg = yaml.safe_load(loc.config_file.read_text()) or {}
    cfg.setdefault("clip", {}).update({"model": model, "weights": weights})
    loc.config_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = loc.config_file.with_name(loc.config_file.name + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    tmp.replace(loc.config_file)


def pull_clip(env, spec: str | None, revision: str = "main") -> None:
    from personavlm_cli.adapters import downloads
    from personavlm_cli.adapters.image_encoder import hub_files
    from personavlm_cli.cli.hub import fetch_with_progress

    arch, tag = parse(spec)
    repo, candidates = hub_files(arch, tag)
    chosen = None
    for i, name in enumerate(candidates):  # the safetensors form first, as open_clip looks for it
        if downloads.cached(repo, name, revision) is not None:
            chosen = name
            break
        if downloads.offline():
            continue
        try:
            downloads.remote_info(repo, name, revision)
            chosen = name
            break
        except downloads.DownloadError as e:
            if "(404)" not in str(e) or i == len(candidates) - 1:
                raise
    if chosen is None:
        raise downloads.DownloadError(f"CLIP weights {arch}:{tag} are not in the cache and downloads are off: "
                                      "HF_HUB_OFFLINE is set (unset it to download)")
    fetch_with_progress(repo, chosen, revision, None)
    write_clip_config(env.settings.locations, arch, tag)
    err.print(line(("CLIP weights ready: ", "green"), f"{arch} {tag} (clip.model, clip.weights in config.yaml)"))
    env._settings = None  # read again: the new weights
    reembed_now(env)


def target_space(settings) -> str:
    from personavlm_cli.adapters.image_encoder import space_id

    w = settings["clip.weights"]
    return space_id(settings["clip.model"], None if w in (None, "none") else w)


def reembed_now(env) -> None:
    """Move the images into the configured space now, with a progress bar (Ctrl-C keeps what is done)."""
    from personavlm_cli.core import reembed
    from personavlm_cli.core.errors import NotFoundError, StoreBusyError

    target = target_space(env.settings)
    try:
        store = env.store(write=True, create=False)
    except NotFoundError:
        return  # no memories yet: nothing to move
    except StoreBusyError:
        err.print(line(("A chat holds the store: its images are re-embedded in the background of the next chat "
                        "(restart the chat to use the new weights).", "yellow")))
        return
    try:
        st = reembed.status(store.records, target)
        if not st.needed:
            reembed.settle(store.records, target)
            return
        err.print(line(f"Re-embedding {count(st.images, 'image')} with the new weights…"))
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=err, transient=True) as bar:
            task = bar.add_task("images", total=st.images)
            try:
                reembed.run(store, target, progress=lambda done, total: bar.update(task, completed=done, total=total))
            except KeyboardInterrupt:
                left = reembed.status(store.records, target)
                err.print(line((f"Interrupted: {left.done} of {left.images} images re-embedded; the rest continues "
                                "in the background of the next chat, or run `personavlm model pull clip` again.",
                                "yellow")))
                import typer

                raise typer.Exit(ExitStatus.INTERRUPTED) from None
        err.print(line(("Re-embedded ", "green"), f"{count(st.images, 'image')}: text search now looks inside them."))
    finally:
        env.close()


def start_background(store, settings, stop: threading.Event) -> threading.Thread | None:
    """In a chat: continue (or start) a move of the images into the configured space in a thread, on the
    store's own fork; None when nothing is to move. Progress goes to the user's log (`personavlm logs`)."""
    from personavlm_cli.core import reembed

    try:
        target = target_space(settings)
        if not reembed.status(store.records, target).needed:
            return None
    except Exception:  # never in the chat's way
        return None

    def work() -> None:
        import logging

        log = logging.getLogger("personavlm.reembed")
        fork = None
        try:
            fork = store.fork()
            reembed.run(fork, target, stop=stop,
                        progress=lambda done, total: log.info("re-embedded %d of %d images", done, total))
        except Exception as e:  # reported in the log, retried at the next chat
            log.warning("re-embedding images stopped: %s", " ".join(str(e).split())[:200])
        finally:
            if fork is not None:
                fork.close()

    thread = threading.Thread(target=work, name="personavlm-reembed", daemon=True)
    thread.start()
    return thread
