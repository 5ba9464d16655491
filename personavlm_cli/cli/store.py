"""`personavlm store migrate`: move this home's memories between this machine and the servers.

A home moves whole: every user of the home (``--user`` names one), each copied and verified before the
home's ``store.kind`` is switched; a user left in the other kind of store (``--user``) is refused by
every command with one line saying where their memories are (``cli/env.py``), never shown empty.

``--to server`` copies the embedded store of this home (SQLite records, image files) to PostgreSQL
(``store.database_url``) and re-embeds the vectors on the Chroma server (``store.url``); ``--to
embedded`` copies the server store back into this home. Either way:

* refuses when the target already holds memories of the user, unless they are this same migration's,
  interrupted (a progress marker in the target's meta, ``migration``, names the source store);
* resumable: each batch of records is copied in one transaction with the marker, images are put by
  sha256 (idempotent), vectors are (re-)embedded for the records that have none yet, so a kill at any
  point is finished by running the same command again;
* verified before anything is switched: the same ids, the sha256 of every memory (all its fields) and
  of every image, the personality history, audit and pending work, and a vector for every memory;
* then switched: ``store.kind`` is written in this home's config file, and an embedded source is moved
  aside to ``<user dir>/before-migration-<time>/`` (never deleted by this command; the output says where).
  A server source is left alone: other machines may still use it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

from personavlm_cli.cli.common import JsonOpt, count, err, line, make_env, out, print_json
from personavlm_cli.core.errors import ConfigError, NotFoundError

app = typer.Typer(help="Where the memories live: this machine (embedded) or servers (PostgreSQL + Chroma).",
                  no_args_is_help=True)

@app.command()
def migrate(
    to: Annotated[str, typer.Option("--to", help="server (PostgreSQL + Chroma server) or embedded (this machine).")],
    user: Annotated[str | None, typer.Option(
        "--user", "-u", help="Move only this user (default: every user of this home).", show_default=False)] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, hidden=True, help="Records per transaction.")] = 500,
    json: JsonOpt = False,
):
    """Copy this home's users (or one, with --user): memories, images, personality and history, to the
    other kind of store, verify every one (counts and sha256), then switch this home to it. Safe to
    re-run after a kill; never overwrites."""
    if to not in ("server", "embedded"):
        raise typer.BadParameter("--to must be server or embedded")
    env = make_env(user)
    s = env.settings
    missing = [k for k in ("store.url", "store.database_url") if not s[k]]
    if missing:
        raise ConfigError(f"store migrate needs {' and '.join(missing)} set (the Chroma server and the PostgreSQL "
                          "database: see docs/deploy.md)")
    from personavlm_cli.adapters.pg_records import require_psycopg

    require_psycopg()  # psycopg missing: one line naming the install command
    names = [env.user] if user else _home_users(env, to)
    reports = {}
    for name in names:  # every user copied and verified before the home is switched
        reports[name] = _migrate_user(make_env(name), to, batch)
    _switch_config(env, to)
    moved = {}
    if to == "server":
        for name in names:
            moved[name] = _retire_embedded(make_env(name).user_dir(create=True))
    left = _left_behind(env, to, names)
    source_kind = "embedded" if to == "server" else "server"
    report = {"to": to, "from": source_kind, "switched": True,
              "memories": sum(r["memories"] for r in reports.values()),
              "images": sum(r["images"] for r in reports.values()),
              "personality_updates": sum(r["personality_updates"] for r in reports.values()),
              "verified": all(r["verified"] for r in reports.values()),
              "users": reports, "left_in_the_other_store": left,
              "embedded_copy_moved_to": (str(moved[names[0]]) if len(names) == 1 and moved.get(names[0]) else None)}
    if json:
        print_json(report)
    else:
        for name, r in reports.items():
            out.print(line(f"Migrated {count(r['memories'], 'memory')} and {count(r['images'], 'image')} of user "
                           f"'{name}' to the {to} store; verified (counts and sha256 of every memory and image)."))
        out.print(line(f"This home now uses store.kind {to}."))
    for name, where in moved.items():
        if where:
            err.print(line((f"The embedded copy of '{name}' was moved to {where}: it still holds every memory; "
                            f"remove it (personavlm does not) once you are satisfied.", "yellow")))
    if left:
        err.print(line((f"Still in the {source_kind} store of this home: {', '.join(left)}; every command refuses "
                        f"them until they move too (personavlm store migrate --to {to} --user NAME).", "yellow")))
    if s.origin("store.kind") == "env" and s["store.kind"] != to:
        err.print(line((f"PERSONAVLM_STORE_KIND={s['store.kind']} in the environment still overrides the config "
                        f"file: unset it.", "yellow")))


def _home_users(env, to: str) -> list[str]:
    """The users of this home whose memories are in the store ``to`` is not: every directory with an
    embedded record file (``--to server``), or with a schema on the server (``--to embedded``)."""
    from personavlm_cli.core import users as users_core

    s = env.settings
    names = users_core.list_users(s)
    if to == "server":
        found = [n for n in names if (users_core.user_dir(s, n) / "personavlm.db").exists()]
        if not found:
            raise NotFoundError("no user of this home has embedded memories to migrate")
        return found
    found = [n for n in dict.fromkeys([*names, env.user]) if _on_server(s, n)]
    if not found:
        raise NotFoundError("no user of this home has memories on the server store to migrate")
    return found


def _on_server(s, name: str) -> bool:
    from personavlm_cli.adapters.pg_records import PgRecordStore

    try:
        PgRecordStore(s["store.database_url"], name, readonly=True).close()
        return True
    except NotFoundError:
        return False


def _left_behind(env, to: str, moved: list[str]) -> list[str]:
    """Users of this home still in the other kind of store after this migration (``--user``)."""
    from personavlm_cli.core import users as users_core

    s = env.settings
    rest = [n for n in users_core.list_users(s) if n not in moved]
    if to == "server":
        return [n for n in rest if (users_core.user_dir(s, n) / "personavlm.db").exists()]
    return [n for n in rest if not (users_core.user_dir(s, n) / "personavlm.db").exists() and _on_server(s, n)]


def _migrate_user(env, to: str, batch: int) -> dict:
    """Copy and verify one user (under the user's local lock and the server's writer lock)."""
    from personavlm_cli.adapters.lock import StoreLock
    from personavlm_cli.core import migration

    path = env.user_dir(create=True)
    lock = StoreLock(path, env.user).acquire()
    source = target = None
    try:
        if to == "server":
            if not (path / "personavlm.db").exists():
                raise NotFoundError(f"user '{env.user}' has no embedded memories in this home to migrate")
            source = _embedded_store(env, path)
            target = server = _server_store(env, path)
        else:
            source = server = _server_store(env, path, must_exist=True)
            target = _embedded_store(env, path)
        with server.exclusive("store migrate"):
            return migration.migrate(source, target, to, batch, _Shown())
    finally:
        for st in (source, target):
            if st is not None:
                st.close()
        lock.release()


# -- the two stores ---------------------------------------------------------------------------------


def _embedded_store(env, path: Path):
    from personavlm_cli.adapters.image_store import DirImages
    from personavlm_cli.adapters.records import RecordStore
    from personavlm_cli.cli.env import _image_encoder, _text_encoder
    from personavlm_cli.core.store import MemoryStore

    s = env.settings

    def vectors():
        from personavlm_cli.adapters.vectors import VectorIndex

        return VectorIndex(path=path / "chroma")

    return MemoryStore(path, text_encoder=_text_encoder, image_encoder=lambda: _image_encoder(s), vectors=vectors,
                       records=lambda readonly=False: RecordStore(path, readonly=readonly),
                       images=DirImages(path / "images"))


def _server_store(env, path: Path, must_exist: bool = False):
    from personavlm_cli.adapters.image_store import ServerImages
    from personavlm_cli.adapters.pg_records import PgRecordStore
    from personavlm_cli.cli.env import _image_encoder, _text_encoder, namespace
    from personavlm_cli.core.store import MemoryStore

    s, user = env.settings, env.user
    url = s["store.database_url"]
    if must_exist:
        PgRecordStore(url, user, readonly=True).close()  # NotFoundError: nothing of the user's there
    holder = {}

    def vectors():
        from personavlm_cli.adapters.vectors import VectorIndex

        return VectorIndex(url=s["store.url"], namespace=namespace(user, holder["store"].records))

    store = MemoryStore(path, text_encoder=_text_encoder, image_encoder=lambda: _image_encoder(s), vectors=vectors,
                        records=lambda readonly=False: PgRecordStore(url, user, readonly=readonly,
                                                                     retry_s=s["store.retry_seconds"]),
                        images=ServerImages(path / ServerImages.CACHE))
    holder["store"] = store
    return store


# -- progress -------------------------------------------------------------------------------------


class _Shown:
    """A migration's progress (core/migration.py) as dim lines on stderr."""

    def resuming(self, copied: int, total: int) -> None:
        err.print(line((f"Resuming the interrupted migration ({copied} of {total} memories already copied).",
                        "yellow")))

    def memories(self, done: int, total: int) -> None:
        err.print(line((f"memories {done}/{total}", "dim")))

    def images(self, done: int, total: int) -> None:
        err.print(line((f"images {done}/{total}", "dim")))

    def embedding(self) -> None:
        err.print(line(("embedding the vectors in the target store…", "dim")))


# -- switching ----------------------------------------------------------------------------------------


def _switch_config(env, to: str) -> None:
    """``store.kind: to`` in this home's config file (the other keys as they were), written atomically."""
    import yaml

    loc = env.settings.locations
    cfg = {}
    if loc.config_file.exists():
        cfg = yaml.safe_load(loc.config_file.read_text(encoding="utf-8")) or {}
    if "store.kind" in cfg:
        cfg["store.kind"] = to
    else:
        store = cfg.get("store") if isinstance(cfg.get("store"), dict) else {}
        store["kind"] = to
        cfg["store"] = store
    loc.config_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = loc.config_file.with_name(loc.config_file.name + ".tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(yaml.safe_dump(cfg, sort_keys=False))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, loc.config_file)


def _retire_embedded(path: Path) -> Path | None:
    """Move the embedded store's files (records, vectors, images) aside, so that this home cannot read a
    stale copy; the server store's image cache starts empty in their place."""
    from personavlm_cli.core.memory import now

    names = [p for p in path.iterdir() if p.name.startswith("personavlm.db") or p.name in ("chroma", "images")]
    # (the server store's image cache, "image-cache", stays: it is the new store's)
    if not names:
        return None
    dest = path / f"before-migration-{now().strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir(mode=0o700)
    for p in names:
        shutil.move(str(p), dest / p.name)
    return dest
