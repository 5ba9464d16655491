"""Which CLIP space the image vectors are in, and moving them to another one (re-embedding).

Out of the box images are embedded with a seeded random initialisation of CLIP: good for finding the
same or a near-identical image, useless for finding one by words. Once real weights are configured
(`personavlm model pull clip`), every image vector must be made again with them: vectors of two
encoders do not compare. The record store's meta says which space the image vectors are in
(``image_space``: the encoder's ``model_id``); a move to another space is a durable job
(``image_reembed``: target, the last image done, how many) so that a kill or a Ctrl-C loses at most
one batch: the next run continues after the last image done. The image collection is emptied first,
so that a search never mixes the two spaces.

Text search over images (a CLIP text vector against the image vectors) is on only when the vectors
are all in a real (not random) space that is the configured encoder's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from personavlm_cli.core.errors import PersonaError
from personavlm_cli.core.memory import Memory, MemoryType

if TYPE_CHECKING:
    from personavlm_cli.core.ports import RecordStore
    from personavlm_cli.core.store import MemoryStore

SPACE = "image_space"
JOB = "image_reembed"
BATCH = 16
log = logging.getLogger("personavlm.reembed")


def is_random(space: str | None) -> bool:
    """A space of seeded random weights (``open_clip:ViT-B-32:random-seed0``)."""
    return bool(space) and ":random-seed" in str(space)


@dataclass
class Status:
    space: str | None   # the space the image vectors are in (None: not recorded, an older store)
    target: str         # the configured encoder's space
    images: int         # image memories
    done: int           # re-embedded so far, when a move is under way
    moving: bool        # a move to ``target`` is under way (started, not finished)

    @property
    def needed(self) -> bool:
        if self.moving:
            return True
        if self.space == self.target or self.images == 0:
            return False
        # An older store does not say; its images were embedded with the default, random, weights.
        return not (self.space is None and is_random(self.target))

    @property
    def text_search(self) -> bool:
        """Whether a text query can find images by what they show."""
        return not self.needed and not is_random(self.target) and self.images > 0

    def why_no_text_search(self) -> str | None:
        """One line on why text cannot find images by what they show, or None when it can (or there are none)."""
        if self.images == 0 or self.text_search:
            return None
        if is_random(self.target):
            return (f"text search does not look inside your {self.images} image(s): CLIP has no real weights "
                    "(clip.weights none); run `personavlm model pull clip` once to fetch them")
        return (f"text search does not look inside your images yet: re-embedding with the new CLIP weights, "
                f"{self.done} of {self.images} done (it continues in the background of the chat, or now with "
                "`personavlm model pull clip`)")


def _images(records: RecordStore) -> list[Memory]:
    return sorted((m for m in records.list(types=[MemoryType.IMAGE], include_superseded=True) if m.meta.get("path")),
                  key=lambda m: m.id)


def status(records: RecordStore, target: str) -> Status:
    job = records.get_meta(JOB)
    moving = isinstance(job, dict) and job.get("to") == target
    return Status(space=records.get_meta(SPACE), target=target, images=records.count(types=[MemoryType.IMAGE]),
                  done=int(job.get("done", 0)) if moving else 0, moving=moving)


def settle(records: RecordStore, target: str) -> Status:
    """Record the space when nothing has to move (no images yet, or an older store on the default)."""
    st = status(records, target)
    if not st.needed and st.space != target:
        with records.transaction():
            records.set_meta(SPACE, target)
            records.set_meta(JOB, None)
        st.space = target
    return st


def run(store: MemoryStore, target: str, progress: Callable[[int, int], None] | None = None,
        stop: threading.Event | None = None, batch: int = BATCH) -> Status:
    """Re-embed every image into ``target`` (``store.image_encoder``'s space), resuming a move a previous
    run left. Returns the status at the end (``needed`` still true if ``stop`` was set)."""
    from personavlm_cli.core.store import IMAGES

    records = store.records
    st = settle(records, target)
    if not st.needed:
        return st
    encoder = store.image_encoder
    if encoder.model_id != target:
        raise PersonaError(f"the image encoder is {encoder.model_id}, not {target}")
    job = records.get_meta(JOB)
    if not (isinstance(job, dict) and job.get("to") == target):
        job = {"to": target, "after": "", "done": 0, "emptied": False}
        with records.transaction():
            records.set_meta(JOB, job)
        log.info("re-embedding images into %s", target)
    if not job.get("emptied"):
        store.vectors.drop([IMAGES])  # no search mixes the two spaces; the old vectors are not kept
        job["emptied"] = True
        with records.transaction():
            records.set_meta(JOB, job)
    images = _images(records)
    todo = [m for m in images if m.id > job["after"]]
    total = len(images)
    done = total - len(todo)
    if progress:
        progress(done, total)
    for start in range(0, len(todo), batch):
        if stop is not None and stop.is_set():
            return status(records, target)
        chunk = todo[start:start + batch]
        try:
            _put(store, chunk)
        except PersonaError:  # one image that cannot be read does not stop the move: the others go in
            for m in chunk:
                try:
                    _put(store, [m])
                except PersonaError as e:
                    log.warning("image %s not re-embedded: %s", m.id, " ".join(str(e).split())[:200])
        done += len(chunk)
        job.update(after=chunk[-1].id, done=done)
        with records.transaction():
            records.set_meta(JOB, job)
        if progress:
            progress(done, total)
    with records.transaction():
        records.set_meta(SPACE, target)
        records.set_meta(JOB, None)
    log.info("re-embedded %d images into %s", total, target)
    return status(records, target)


def _put(store: MemoryStore, memories: list[Memory]) -> None:
    from personavlm_cli.core.store import IMAGES, vector_metadata

    vectors = store.image_encoder.embed_images([store.image_path(m.meta["path"]) for m in memories])
    store.vectors.upsert(IMAGES, [m.id for m in memories], vectors, metadatas=[vector_metadata(m) for m in memories])


def text_vector(store: MemoryStore, text: str) -> Any:
    """The CLIP text vector of ``text`` when the image vectors are in the configured real space, else None.
    Reads the record store's meta first: the encoder (torch) is loaded only when the answer can be yes."""
    records = store.records
    space = records.get_meta(SPACE)
    if not space or is_random(space) or records.get_meta(JOB) is not None:
        return None
    encoder = store.image_encoder
    if encoder.model_id != space or not hasattr(encoder, "embed_texts"):
        return None
    return encoder.embed_texts([text])[0]
