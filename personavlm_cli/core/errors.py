"""Domain errors. The CLI turns each into one line on stderr and a non-zero exit status."""


class PersonaError(Exception):
    """An error the user can act on; its message is one line, shown as is."""

    exit_code = 1


class ConfigError(PersonaError):
    """The configuration file or an option value is wrong."""


class UserNameError(PersonaError):
    """A user name that could escape its directory or is otherwise unusable."""


class ImageError(PersonaError):
    """An attached image is missing, unreadable, not an image, or unsafe to decode."""


class ModelError(PersonaError):
    """The chat model file is missing, not a GGUF, truncated or unsupported."""


class StoreError(PersonaError):
    """The user's store cannot be opened or written."""


class StoreBusyError(StoreError):
    """Another process holds the user's store."""


class NotFoundError(PersonaError):
    """A memory, user or model that does not exist."""
