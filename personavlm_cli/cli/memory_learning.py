"""`memory update` (run pending learning now) and `memory verify` (re-check what was learnt)."""

from __future__ import annotations

from typing import Annotated

import typer

from personavlm_cli.cli.common import UserOpt, count, err, line, log_to_file, make_env, out, print_json, short
from personavlm_cli.core.errors import ExitStatus
from personavlm_cli.core.memory import MemoryType


def update(user: UserOpt = None):
    """Run the pending learning now (otherwise it runs in the background of your next chat)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from personavlm_cli.core.capability import choose_extractor
    from personavlm_cli.core.update_queue import UpdateQueue
    from personavlm_cli.core.update_stage import UpdateStage

    env = make_env(user)
    try:
        store = env.store(write=True)
        log_to_file(env)
        pending = UpdateQueue(store.records).pending()
        if not pending:
            err.print("Nothing left to learn.")
            return
        with err.status("Loading the model…", spinner="dots"):
            model = env.model()
        stage = UpdateStage(store, model, env.user, env.model_lock,
                            extractor=choose_extractor(env.settings["memory.extractor"], model),
                            enabled=env.settings["memory.update"])
        done = 0
        try:
            with Progress(TextColumn("Learning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=err, transient=False) as progress:
                task = progress.add_task("update", total=len(pending))
                done = stage.run_pending(progress=lambda d, t: progress.update(task, completed=d, total=t))
        except KeyboardInterrupt:
            left = len(stage.pending())
            err.print(f"[yellow]Stopped: {count(left, 'update')} left; they run at the next chat or the next "
                      "`personavlm memory update`.[/yellow]")
            raise typer.Exit(ExitStatus.INTERRUPTED) from None
        err.print(f"Learnt from {count(done, 'update')}.")
    finally:
        env.close()


def verify(
    user: UserOpt = None,
    drop: Annotated[bool, typer.Option("--drop", help="Erase the learnt memories that fail the check (asks "
                                                      "first; --yes to skip the question).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="With --drop: do not ask.")] = False,
    json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
):
    """Re-check every learnt memory against your own words in the turns it cites.

    A question, request or hypothetical learnt as a fact, habit or goal is reported too. A learnt statement
    (semantic, procedural, episodic) or core profile value is supported when each of its content words
    occurs in the user turns it came from; the assistant's turns are never evidence.
    What you wrote yourself (/remember, `memory edit`) is your own word. Nothing is erased without --drop
    and your yes.
    """
    env = make_env(user)
    try:
        store = env.store(write=drop)
        findings = unsupported(store)
        if json:
            print_json([{"id": f["memory"].id, "type": f["memory"].type, "text": f["text"], "field": f["field"],
                         "reason": f["reason"]} for f in findings])
        else:
            learnt = [MemoryType.SEMANTIC, MemoryType.PROCEDURAL, MemoryType.EPISODIC, MemoryType.CORE]
            checked = store.records.count(types=learnt, include_superseded=False)
            if not findings and not checked:
                out.print("No learnt memories yet: nothing to verify.")
            elif not findings:
                said = "The learnt memory is" if checked == 1 else f"All {checked} learnt memories are"
                out.print(f"{said} supported by your own words.")
            for f in findings:
                what = f"{f['memory'].id} ({f['field']})" if f["field"] else f["memory"].id
                out.print(line("  ", what, ": ", short(f["text"], 70), " ", (f"({f['reason']})", "dim")))
            if findings:
                out.print(f"{count(len(findings), 'learnt statement')} not supported by your own words"
                          + ("" if drop else "; `memory verify --drop` erases them"))
        if not (drop and findings):
            return
        if not yes and not typer.confirm(f"Erase {count(len(findings), 'unsupported statement')}?",
                                         default=False, err=True):
            err.print("Nothing was erased.")
            return
        erased = drop_unsupported(store, findings)
        err.print(f"Erased {count(erased, 'unsupported statement')}.")
    finally:
        env.close()


def unsupported(store) -> list[dict]:
    """Learnt memories (and core values) that the user's own turns they cite do not support."""
    from personavlm_cli.core.learning import grounding, profile

    records = store.records
    findings = []
    for m in records.list(types=[MemoryType.SEMANTIC, MemoryType.PROCEDURAL, MemoryType.EPISODIC, MemoryType.CORE]):
        origin = (m.meta or {}).get("origin")
        if origin in ("/remember", "edited by the user", "imported"):
            continue
        sources = [s for s in records.get_many(m.source_ids) if s.type == MemoryType.TURN and s.role == "user"]
        said = [s.text for s in sources]
        if m.type in (MemoryType.SEMANTIC, MemoryType.PROCEDURAL):
            kind = grounding.not_a_fact(m.text) or (grounding.not_a_fact(" ".join(said)) if said else None)
            if kind:  # "What's my sister's name?" learnt as a fact, "What do you love?" as a habit
                findings.append({"memory": m, "field": None, "text": m.text, "reason": f"a {kind}, not a fact"})
                continue
        if m.type == MemoryType.CORE:
            facts = (m.meta or {}).get("facts") or {}
            cited = (m.meta or {}).get("sources") or {}
            for key, value in facts.items():
                evidence = [s.text for s in records.get_many([cited[key]])] if key in cited else said
                if key not in profile.FIELDS:
                    findings.append({"memory": m, "field": key, "text": f"{key}: {value}",
                                     "reason": "not a profile field"})
                elif evidence and not grounding.supported(str(value), [grounding.stated(e) for e in evidence]) \
                        and grounding.supported(str(value), evidence):
                    findings.append({"memory": m, "field": key, "text": f"{key}: {value}",
                                     "reason": "said in a question, request or hypothetical, not stated"})
                elif not grounding.supported(str(value), evidence):
                    findings.append({"memory": m, "field": key, "text": f"{key}: {value}",
                                     "reason": "not in the user's words" if evidence else "no user turn cited"})
            continue
        if not grounding.supported(m.text, said):
            findings.append({"memory": m, "field": None, "text": m.text,
                             "reason": "not in the user's words" if said else "no user turn cited"})
    return findings


def drop_unsupported(store, findings: list[dict]) -> int:
    """Erase unsupported statements; a core profile loses only its unsupported fields (a new version)."""
    from personavlm_cli.core import forgetting
    from personavlm_cli.core.learning import profile
    from personavlm_cli.core.memory import iso, now
    from personavlm_cli.core.store import new_memory

    whole = [f["memory"].id for f in findings if f["field"] is None]
    cores: dict[str, list[str]] = {}
    for f in findings:
        if f["field"] is not None:
            cores.setdefault(f["memory"].id, []).append(f["field"])
    for core_id, fields in cores.items():
        old = store.records.get(core_id)
        if old is None:
            continue
        facts = {k: v for k, v in (old.meta.get("facts") or {}).items() if k not in fields}
        sources = {k: v for k, v in (old.meta.get("sources") or {}).items() if k in facts}
        text = profile.profile_text(facts)
        if facts:
            new = new_memory(MemoryType.CORE, text, old.occurred_at, source_ids=list(old.source_ids),
                             session_id=old.session_id, meta={"facts": facts, "sources": sources,
                                                              "origin": "verified"})
            store.supersede(old, new, at=iso(now()), operation="verify-drop")
        whole.append(old.id)  # the version that stated them goes, for real
    if not whole:
        return 0
    # Only what was found unsupported, and what was derived from it: never the user's turns.
    forgetting.forget_ids(store, whole, operation="verify-drop").erase()
    return len(findings)
