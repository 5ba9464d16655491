"""A file from the model hub, fetched on the terminal: its size said first, a progress bar on a terminal,
Ctrl-C keeping what came. Shared by `model pull` (cli/models.py) and `model pull clip` (cli/clip.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from personavlm_cli.cli.common import err, human_size, line
from personavlm_cli.cli.env import is_tty
from personavlm_cli.cli.terminal import active
from personavlm_cli.core.errors import ExitStatus


def fetch_with_progress(repo: str, filename: str, revision: str, cache_dir: Path | None) -> Path:
    """One file from the hub: its size said first, a progress bar on a terminal (and nothing but the
    result otherwise); Ctrl-C keeps what came for the next run."""
    from personavlm_cli.adapters import downloads

    if downloads.offline():
        path = downloads.fetch(repo, filename, revision, cache_dir)  # the cache, or one line saying why not
        err.print(line(f"{filename}: already downloaded ({path})"))
        return path
    remote = downloads.remote_info(repo, filename, revision)
    have = downloads.partial_size(remote, cache_dir)
    size = human_size(remote.size) if remote.size else "size unknown"
    resuming = f", resuming at {human_size(have)}" if have else ""
    err.print(line(f"{repo}/{filename}: {size}{resuming}"))
    try:
        return _download(downloads, remote, cache_dir)
    except KeyboardInterrupt:
        kept = downloads.partial_size(remote, cache_dir)
        err.print(line((f"Download interrupted: {human_size(kept)} of {filename} kept; run the same command again "
                        "to resume.", "yellow")))
        raise typer.Exit(ExitStatus.INTERRUPTED) from None


def _download(downloads, remote, cache_dir: Path | None) -> Path:
    """One file, with a progress bar on a terminal (and nothing but the result otherwise)."""
    if not is_tty(sys.stderr):
        path = downloads.download(remote, cache_dir)
        err.print(line(f"Downloaded {remote.filename}, checksum verified"))
        return path
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=active().err, transient=False) as progress:
        tasks = {}

        def report(phase: str, done: int, total):
            if phase not in tasks:
                label = remote.filename if phase == "download" else "  checking sha256"
                tasks[phase] = progress.add_task(label, total=total, completed=done)
            progress.update(tasks[phase], completed=done, total=total)

        path = downloads.download(remote, cache_dir, progress=report)
        if "verify" in tasks:
            progress.remove_task(tasks["verify"])  # the bar that stays is the download's
    err.print(line(f"{remote.filename}: checksum verified" + ("" if "download" in tasks else " (already downloaded)")))
    return path
