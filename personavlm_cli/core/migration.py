"""Moving one user's memories from one store to another (``personavlm store migrate``): copy, verify, resume.

The target must be empty of the user's memories, unless it holds this same migration, interrupted (a
progress marker in the target's meta, ``migration``, names the source store). Each batch of records
is copied in one transaction with the marker, images are put by sha256 (idempotent), vectors are
(re-)embedded for the records that have none yet, so a kill at any point is finished by running the
same migration again. Before the caller switches anything, the copy is verified: the same ids, the
sha256 of every memory (all its fields) and of every image, the personality history, the audit log,
the pending work, the meta (personality, learning state), and a vector for every memory.

Written against the ports: two :class:`MemoryStore` (whatever their record stores and vector indexes
are); which stores, the locks around them and switching the home to the target are the caller's
(``cli/store.py``, the composition root).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Protocol

from personavlm_cli.core.errors import StoreError
from personavlm_cli.core.memory import Memory, MemoryType
from personavlm_cli.core.store import IMAGES, TEXT, MemoryStore

if TYPE_CHECKING:
    from personavlm_cli.core.ports import RecordStore

# Meta keys that describe one store, not the user's memory: never copied (``compact_parts`` and
# ``lexical_lengths`` are the PostgreSQL store's: which partitions to rewrite, how BM25 counts lengths).
LOCAL_META = {"format_version", "created_at", "compact_pending", "compact_parts", "migration", "owner",
              "lexical_lengths"}
# Pending work that names the source's own vectors: meaningless in the target (its vectors are made anew).
LOCAL_JOBS = {"vector_delete"}


class Progress(Protocol):
    """What a migration reports as it goes (the CLI shows it on stderr)."""

    def resuming(self, copied: int, total: int) -> None:
        """An interrupted migration goes on: ``copied`` of ``total`` memories are in the target already."""

    def memories(self, done: int, total: int) -> None:
        """A batch of records was committed."""

    def images(self, done: int, total: int) -> None:
        """An image was copied."""

    def embedding(self) -> None:
        """The target's vectors are being made."""


def migrate(source: MemoryStore, target: MemoryStore, to: str, batch: int, progress: Progress) -> dict[str, Any]:
    """Copy ``source`` into ``target`` (the ``to`` kind: ``server`` or ``embedded``) and verify the copy;
    StoreError (one line, nothing switched) when the target holds other memories, an image is missing,
    the vectors cannot be made or the verification fails. Returns the counts, ``verified`` True."""
    src, dst = source.records, target.records
    run = {"source": src.store_id(), "from": "embedded" if to == "server" else "server"}
    marker = dst.get_meta("migration")
    ours = bool(marker) and marker.get("source") == run["source"] and marker.get("from") == run["from"]
    held = dst.count()
    if held and not ours:
        raise StoreError(f"the {to} store already holds {held} memories of this user; refusing to overwrite them "
                         "(a migration goes into an empty store)")
    memories = src.list(include_superseded=True)
    wanted = {m.image_sha256: m.meta["path"] for m in memories if m.image_sha256 and m.meta.get("path")}
    done_report = {"memories": len(memories), "images": len(wanted),
                   "personality_updates": len(src.personality_history()), "verified": True}
    if ours and marker.get("phase") == "done":
        # Migrated already (a kill before the switch, or a second run): switch if the target still holds
        # exactly the source; refuse if it has changed since (it is in use: nothing is overwritten).
        if verify(source, target, memories, wanted):
            raise StoreError(f"the {to} store already holds {held} memories of this user, changed since they "
                             "were migrated; refusing to overwrite them")
        return done_report
    if ours:
        progress.resuming(held, len(memories))
    else:
        with dst.transaction():
            for key, value in _meta_items(src).items():  # personality, consolidation state, store id, ...
                dst.set_meta(key, value)
            for rec in src.personality_history():
                dst.add_personality(rec)
            for entry in src.audit_log():
                dst.audit(entry["operation"], entry["ids"])
            for job in src.jobs():
                if job["kind"] not in LOCAL_JOBS:
                    dst.add_job(job["kind"], job["payload"])
            dst.set_meta("migration", {**run, "phase": "memories", "copied": 0})
    # Records, a batch per transaction with the marker.
    have = {m.id for m in dst.list(include_superseded=True)}
    todo = [m for m in memories if m.id not in have]
    done = len(memories) - len(todo)
    for i in range(0, len(todo), batch):
        chunk = todo[i:i + batch]
        with dst.transaction():
            dst.insert(chunk)
            done += len(chunk)
            dst.set_meta("migration", {**run, "phase": "memories", "copied": done})
        progress.memories(done, len(memories))
    # Images, by content (idempotent).
    for n, (sha, rel) in enumerate(sorted(wanted.items()), 1):
        if (got := target.image_bytes(sha)) is not None and _sha(got[1]) == sha:
            continue
        blob = source.image_bytes(sha)
        if blob is None or _sha(blob[1]) != sha:
            raise StoreError(f"image {sha[:12]}… is missing or damaged in the {run['from']} store; nothing switched")
        target.put_image_bytes(sha, rel.rsplit(".", 1)[-1], blob[1])
        progress.images(n, len(wanted))
    # Vectors: every record without one is embedded (a kill here leaves the rest for the next run).
    progress.embedding()
    target.sync_vectors()
    if target.vectors_down:  # they cannot be verified: say why, not only that they are missing
        target.take_notices()
        raise StoreError(f"{target.vectors_down}; every memory needs its vector before the switch: nothing "
                         "switched: run the command again once it is back")
    problems = verify(source, target, memories, wanted)
    if problems:
        raise StoreError(f"verification failed ({problems[0]}); nothing switched: run the command again")
    with dst.transaction():
        dst.set_meta("migration", {**run, "phase": "done", "copied": len(memories)})
    return done_report


def verify(source: MemoryStore, target: MemoryStore, memories: list[Memory], images: dict[str, str]) -> list[str]:
    """What differs between the target and the source (``memories`` and ``images`` are the source's):
    one line each, empty when the copy is whole."""
    src, dst = source.records, target.records
    problems = []
    copied = {m.id: m for m in dst.list(include_superseded=True)}
    if set(copied) != {m.id for m in memories}:
        problems.append(f"{len(copied)} memories in the target, {len(memories)} in the source")
    bad = [m.id for m in memories if m.id in copied and _digest(copied[m.id]) != _digest(m)]
    if bad:
        problems.append(f"memory {bad[0]} differs (sha256)")
    for sha in images:
        got = target.image_bytes(sha)
        if got is None or _sha(got[1]) != sha:
            problems.append(f"image {sha[:12]}… is missing or differs (sha256)")
            break
    if _history(dst.personality_history()) != _history(src.personality_history()):
        problems.append("the personality history differs")
    if [(a["operation"], a["ids"]) for a in dst.audit_log()] != [(a["operation"], a["ids"]) for a in src.audit_log()]:
        problems.append("the audit log differs")
    if [(j["kind"], j["payload"]) for j in dst.jobs() if j["kind"] not in LOCAL_JOBS] != \
            [(j["kind"], j["payload"]) for j in src.jobs() if j["kind"] not in LOCAL_JOBS]:
        problems.append("the pending work differs")
    if _meta_items(dst) != _meta_items(src):
        problems.append("the personality or learning state differs")
    if dst.unembedded(1):
        problems.append("some memories have no vector yet")
    else:
        vectors = target.vectors
        if vectors.ids(TEXT) != set(copied):
            problems.append("the text vectors do not match the memories")
        with_images = {m.id for m in memories if m.type == MemoryType.IMAGE and m.meta.get("path")}
        if with_images and not with_images <= vectors.ids(IMAGES):
            problems.append("an image memory has no image vector")
    return problems


def _meta_items(records: RecordStore) -> dict[str, Any]:
    return {k: v for k, v in records.meta_items().items() if k not in LOCAL_META}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _digest(m: Memory) -> str:
    return _sha(json.dumps(m.to_dict(), sort_keys=True, ensure_ascii=False).encode())


def _history(rows: list[dict[str, Any]]) -> str:
    return _sha(json.dumps(rows, sort_keys=True).encode())
