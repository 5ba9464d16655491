"""`bench --only startup`: wall time of ``personavlm --help`` and ``personavlm memory list`` in a child process
(median of N), against a bare ``python -c pass`` (the interpreter's floor) and a minimal Typer app's ``--help``."""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from personavlm_cli.core.errors import PersonaError
from personavlm_cli.evals.bench.common import memories

# The yardstick of `personavlm --help`: a minimal Typer app's --help (two commands), in the same Python.
MINIMAL_TYPER_APP = """
import typer
app = typer.Typer(help="A minimal Typer app.")
@app.command()
def hello(name: str = "world") -> None:
    \"\"\"Say hello.\"\"\"
@app.command()
def bye() -> None:
    \"\"\"Say goodbye.\"\"\"
app()
"""


def bench_startup(home: Path, runs: int) -> dict:
    """Child-process wall time of --help and memory list (a store of 500 memories), and of a minimal Typer
    app's --help (the yardstick of ours), median of ``runs`` after one warm-up run each; the runs of each
    command alternate with the others', so that a busy moment of the machine falls on all of them."""
    from personavlm_cli.adapters.records import RecordStore
    from personavlm_cli.core import users
    from personavlm_cli.core.config import Settings

    environ = {**os.environ, "PERSONAVLM_HOME": str(home), "PERSONAVLM_USER": "bench", "HF_HUB_OFFLINE": "1",
               # As installed: compiled bytecode (the warm-up run writes it here, not into the source tree),
               # even where PYTHONDONTWRITEBYTECODE is set, which would compile every module at every start.
               "PYTHONPYCACHEPREFIX": str(home / "pycache")}
    environ.pop("PYTHONDONTWRITEBYTECODE", None)
    for var in list(environ):
        if var.startswith("PERSONAVLM_") and var not in ("PERSONAVLM_HOME", "PERSONAVLM_USER"):
            environ.pop(var)
    settings = Settings.load(environ=environ)
    user_dir = users.open_user_dir(settings, "bench", create=True)
    records = RecordStore(user_dir)
    rng = random.Random(3)
    with records.transaction():
        records.insert(memories(rng, 500, datetime(2024, 1, 1).astimezone()))
    records.close()
    script = Path(sys.executable).parent / "personavlm"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "personavlm_cli"]
    commands = {"python": [sys.executable, "-c", "pass"], "help": [*base, "--help"],
                "typer_help": [sys.executable, "-c", MINIMAL_TYPER_APP, "--help"],
                "memory_list": [*base, "memory", "list", "--limit", "20"]}
    out_: dict = {"command": " ".join(Path(base[0]).name if i == 0 else a for i, a in enumerate(base))}
    times: dict[str, list[float]] = {name: [] for name in commands}
    for i in range(runs + 1):
        for name, cmd in commands.items():
            t = time.perf_counter()
            proc = subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=120)
            elapsed = time.perf_counter() - t
            if proc.returncode != 0:
                raise PersonaError(f"`{' '.join(cmd[-3:])}` failed during the benchmark: "
                                   f"{(proc.stderr.strip().splitlines() or [''])[-1][:200]}")
            if i:  # the first run warms the file cache
                times[name].append(elapsed)
    for name, taken in times.items():
        out_[name] = {"median_s": round(statistics.median(taken), 3), "max_s": round(max(taken), 3), "runs": runs}
    # Our --help against the minimal app's, run by run (the pairs ran back to back), then the median.
    out_["help_vs_typer"] = round(statistics.median(h / t for h, t in zip(times["help"], times["typer_help"])), 3)
    return out_
