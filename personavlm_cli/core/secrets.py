"""The one secret policy: what can carry a credential, and how it is shown (masked, ``***``).

Everything the program prints or writes about its configuration, its status or an error goes through
``masked`` (messages, `doctor`, logs, debug tracebacks) or ``shown_setting`` (`config show`): every
credential is replaced by ``***`` wherever it sits in the text:

- a URL's password (``scheme://user:PASSWORD@host``), even one holding ``/``, ``#``, ``?`` or ``@``
  unencoded (libpq reads ``postgresql://u:pa#ss?@host/db`` that way; a URL parser would not);
- a URL's query parameter that names a credential (``?password=``, ``sslpassword``, ``api_key``,
  ``token``, ``secret``...);
- a PostgreSQL key=value connection string's ``password=...`` (quoted with ``'...'`` and ``\\'`` or not);
- an ``Authorization`` value (``Bearer ...``, ``Basic ...``);
- the value of every secret setting (``model.api_key``) and every password read from a setting,
  wherever it appears (a server that echoes it back), once ``remember`` has been told of it.

Standard library only: the CLI, the core and the adapters all mask with it.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# Settings whose whole value is a secret, and settings whose value is a URL or connection string that may
# carry one. `config show` shows the former as ``***`` and the latter masked.
SECRET_KEYS = ("model.api_key",)
URL_KEYS = ("model.url", "store.url", "store.database_url")

# Query parameters and connection-string keywords that hold a credential (compared lower-case, with
# ``-`` read as ``_``).
_SECRET_PARAMS = {"password", "passwd", "pass", "pwd", "sslpassword", "api_key", "apikey", "key", "token",
                  "access_token", "auth", "auth_token", "secret", "client_secret", "sig", "signature",
                  "x_api_key"}

# scheme://rest-of-the-URL, up to whitespace or a quote (a message quotes a URL with ' or ").
_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>[^\s'\"<>]*)")
# key = value of a libpq connection string (and the like): the value quoted ('...' with \' escapes) or not.
_KEYWORD = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|sslpassword|api[_-]?key|access[_-]?token|client[_-]?secret|secret)"
    r"\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|[^\s,;&'\"]+)",
    re.IGNORECASE)
_AUTH = re.compile(r"(?P<key>\b(?:Bearer|Basic)\s+)(?P<value>[A-Za-z0-9._~+/=-]{6,})")
_PARAM = re.compile(r"(?P<key>[?&;](?P<name>[A-Za-z0-9_.-]+)=)(?P<value>[^&#;]*)")

# Secret values met at run time (an API key, a URL's password): masked wherever they appear. Values under
# four characters are not remembered (masking them would garble ordinary words).
_KNOWN: set[str] = set()


def remember(value: Any) -> None:
    """Mask ``value`` (a secret, or the credentials inside a URL or connection string) from now on,
    wherever it appears in what ``masked`` is given."""
    if not isinstance(value, str) or not value:
        return
    for found in secrets_in(value) or [value]:
        if len(found) >= 4:
            _KNOWN.add(found)
            from urllib.parse import quote, unquote

            for form in {unquote(found), quote(found, safe="")}:  # as typed, and as a URL carries it
                if len(form) >= 4:
                    _KNOWN.add(form)


def secrets_in(text: str) -> list[str]:
    """The credentials ``masked`` would hide in ``text`` (for ``remember`` and the tests)."""
    found: list[str] = []
    _mask(text, found, known=False)
    return found


def masked(text: Any) -> str:
    """``text`` with every credential in it replaced by ``***`` (see the module's docstring)."""
    s = text if isinstance(text, str) else str(text)
    return _mask(s, None)


def _mask(s: str, found: list[str] | None, known: bool = True) -> str:
    if known:
        for value in sorted(_KNOWN, key=len, reverse=True):
            if value in s:
                s = s.replace(value, MASK)
    s = _URL.sub(lambda m: m.group("scheme") + _mask_url_rest(m.group("rest"), found), s)
    s = _KEYWORD.sub(lambda m: m.group("key") + _hide(m.group("value"), found, quoted=True), s)
    s = _AUTH.sub(lambda m: m.group("key") + (_hide(m.group("value"), found) if _credential(m) else m.group("value")), s)
    return s


def _credential(m: re.Match[str]) -> bool:
    """A ``Bearer`` value is a token; a ``Basic`` one only when it decodes to ``user:password``
    ("Basic information" stays as it is)."""
    if m.group("key").lower().startswith("bearer"):
        return True
    import base64
    import binascii

    try:
        return b":" in base64.b64decode(m.group("value"), validate=True)
    except (binascii.Error, ValueError):
        return False


def _hide(value: str, found: list[str] | None, quoted: bool = False) -> str:
    if value == MASK:
        return value
    if quoted and len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]:
        inner = value[1:-1]
        if found is not None and inner and inner != MASK:
            found.append(re.sub(r"\\(.)", r"\1", inner))
        return value[0] + MASK + value[0]
    if found is not None and value:
        found.append(value)
    return MASK


def _mask_url_rest(rest: str, found: list[str] | None) -> str:
    """The part of a URL after ``scheme://``: the password of its user information, and the
    credential parameters of its query."""
    # The user information ends at the LAST "@" (a password may hold "@", "/", "#", "?" unencoded);
    # it carries a password when a ":" comes before that "@".
    at = rest.rfind("@")
    if at != -1:
        userinfo, host = rest[:at], rest[at:]
        user, colon, password = userinfo.partition(":")
        if colon and password:
            if password != MASK and found is not None:
                from urllib.parse import unquote

                found.append(password)
                if unquote(password) != password:
                    found.append(unquote(password))
            rest = f"{user}:{MASK}{host}"

    def param(m: re.Match[str]) -> str:
        name = m.group("name").lower().replace("-", "_")
        if name in _SECRET_PARAMS and m.group("value"):
            return m.group("key") + _hide(m.group("value"), found)
        return m.group(0)

    return _PARAM.sub(param, rest)


def is_secret_setting(name: str) -> bool:
    return name in SECRET_KEYS or name in URL_KEYS


def shown_setting(name: str, value: Any) -> Any:
    """A setting's value as it may be printed: a secret setting as ``***``, a URL or connection string
    with its credentials masked; anything else unchanged."""
    if value is None or value == "":
        return value
    if name in SECRET_KEYS:
        return MASK
    if name in URL_KEYS and isinstance(value, str):
        return masked(value)
    return value


def holds_secret(name: str, value: Any) -> bool:
    """Does this setting's value carry a credential?"""
    if value is None or value == "" or not isinstance(value, str):
        return False
    return name in SECRET_KEYS or (name in URL_KEYS and bool(secrets_in(value)))
