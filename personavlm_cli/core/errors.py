"""Domain errors and the program's exit statuses. The CLI turns each error into one line on stderr and a
non-zero exit status."""

from enum import IntEnum, unique


@unique
class ExitStatus(IntEnum):
    """How a command ends: the process's exit status (only ``cli.main`` exits; commands return or raise)."""

    OK = 0
    ERROR = 1  # a domain error (one ``Error:`` line), a failed line of a script, a refused confirmation
    USAGE = 2  # a bad option or argument (Click's usage error)
    INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it


class PersonaError(Exception):
    """An error the user can act on; its message is one line, shown as is, with every credential in it
    masked (``core.secrets``: a URL's password, an API key), wherever the message was made."""

    exit_code = ExitStatus.ERROR

    def __init__(self, *args: object) -> None:
        from personavlm_cli.core.secrets import masked

        super().__init__(*(masked(a) if isinstance(a, str) else a for a in args))


class ConfigError(PersonaError):
    """The configuration file or an option value is wrong."""


class UserNameError(PersonaError):
    """A user name that could escape its directory or is otherwise unusable."""


class ImageError(PersonaError):
    """An attached image is missing, unreadable, not an image, or unsafe to decode."""


class ModelError(PersonaError):
    """The chat model file is missing, not a GGUF, truncated or unsupported."""


class NoAnswer(ModelError):
    """The model's answer was empty or only whitespace (after one plain retry): nothing to store."""


class StoreError(PersonaError):
    """The user's store cannot be opened or written."""


class StoreBusyError(StoreError):
    """Another process holds the user's store."""


class UnreachableError(StoreError):
    """A server of the store (the vector server, the record database) does not answer: the store may
    go on without it (vectors wait in the record store) or say so in one line."""


class NotFoundError(PersonaError):
    """A memory, user or model that does not exist."""


class DiskFullError(StoreError):
    """A write ran out of space (ENOSPC, SQLite's "database or disk is full"): nothing was lost."""


def disk_full(where: object) -> DiskFullError:
    """The one line for a full disk: what is full, what to do, and that nothing was lost."""
    return DiskFullError(f"no space left on {where}: free some space; nothing was lost")


def is_disk_full(exc: BaseException) -> bool:
    """Is ``exc`` an out-of-space error (OSError ENOSPC/EDQUOT, or SQLite's SQLITE_FULL)?"""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    text = str(exc).lower()
    return type(exc).__module__ == "sqlite3" and ("disk is full" in text or "database or disk is full" in text)


class ModelInterrupted(PersonaError):
    """A background model call was stopped: an answer needs the model, or the chat is quitting."""
