"""Users: validated names and one owner-only directory per user."""

from __future__ import annotations

import getpass
import os
import re
import shutil
from pathlib import Path

from personavlm_cli.core.config import Settings
from personavlm_cli.core.errors import NotFoundError, StoreError, UserNameError, disk_full, is_disk_full

# Letters, digits, dot, dash and underscore; must start with a letter or digit, so that no
# name can be "..", hidden, absolute, or carry a separator or a control character.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def validate_name(name: str) -> str:
    if name is None or name == "":
        raise UserNameError("user name is empty")
    if not _NAME.fullmatch(name) or ".." in name:
        shown = name.encode("unicode_escape").decode("ascii")[:80]
        raise UserNameError(
            f"invalid user name '{shown}': use 1-64 letters, digits, '.', '-' or '_', starting with a letter or digit"
        )
    return name


def default_name(settings: Settings) -> str:
    if settings["user"]:
        return validate_name(settings["user"])
    try:
        login = getpass.getuser()
    except (KeyError, OSError):
        login = ""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", login).lstrip("._-")[:64]
    return cleaned or "default"


def user_dir(settings: Settings, name: str) -> Path:
    return settings.locations.users_dir / validate_name(name)


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it owner-only, whatever the umask; one line if it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path.parent) from None
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            raise StoreError(f"cannot create the directory {path}: a file is in the way") from None
        raise StoreError(f"cannot create the directory {path}: {exc.strerror or exc}") from None
    return path


def open_user_dir(settings: Settings, name: str, create: bool = True) -> Path:
    path = user_dir(settings, name)
    try:
        is_dir = path.is_dir()
    except OSError:
        is_dir = False
    if not is_dir:
        if not create:
            raise NotFoundError(f"unknown user '{name}' (see `personavlm users list`)")
        ensure_private_dir(settings.locations.data_dir)
        ensure_private_dir(settings.locations.users_dir)
        ensure_private_dir(path)
    _same_name(path, name)
    return path


def _same_name(path: Path, name: str) -> None:
    """Users apart on a file system that ignores case (macOS, Windows): ``ann`` must not open the
    directory of ``Ann``. The directory's own spelling is read back; another spelling is refused."""
    try:
        listed = os.listdir(path.parent)
    except OSError:
        return
    if name not in listed:
        other = next((n for n in listed if n.lower() == name.lower()), None)
        raise UserNameError(f"user name '{name}' is taken by '{other or '?'}' on this file system, which "
                            "ignores case; use another name") from None


def list_users(settings: Settings) -> list[str]:
    root = settings.locations.users_dir
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _NAME.fullmatch(p.name))


def remove_user(settings: Settings, name: str) -> None:
    path = user_dir(settings, name)
    if not path.is_dir():
        raise NotFoundError(f"unknown user '{name}'")
    shutil.rmtree(path)
