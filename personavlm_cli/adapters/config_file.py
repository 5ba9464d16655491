"""Writing the user's YAML files (``config.yaml``, ``models.yaml``): atomic, owner-only, and keeping
what the user wrote.

A change (``model default`` sets ``model.path``) is made with a round-trip YAML library (ruamel.yaml), so the
user's comments, key order and quoting stay as they were; the new text goes to a temporary file of the same
directory (0600, fsynced) that replaces the old one in one rename: a crash leaves the old file or the new
one, never half of one, and never a file others can read.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

from personavlm_cli.core.errors import ConfigError, disk_full, is_disk_full


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically: a 0600 temporary file beside it, fsynced, renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            if is_disk_full(exc):
                raise disk_full(path.parent) from None
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    try:  # the rename is durable once the directory is
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def set_value(path: Path, dotted: str, value: Any) -> None:
    """Set ``dotted`` (``model.path``) in the YAML file ``path`` to ``value`` (None: empty), keeping every
    comment and the layout of the rest; the file is created if missing. A flat ``model.path:`` key, if the
    file has one, is the one changed."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.error import YAMLError

    path = Path(path)
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    text = ""
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = yaml.load(text) if text.strip() else None
    except YAMLError:
        raise ConfigError(f"{path} is not valid YAML: fix it before it is changed") from None
    if data is None:
        data = CommentedMap()
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys: fix it before it is changed")
    if dotted in data:
        data[dotted] = value
    else:
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = CommentedMap()
                node[part] = child
            node = child
        node[parts[-1]] = value
    buffer = io.StringIO()
    yaml.dump(data, buffer)
    write_private(path, buffer.getvalue())
