"""A URL as messages and ``doctor`` show it: never its credentials."""

from __future__ import annotations


def shown_url(url: str) -> str:
    """``url`` without user, password, query or fragment: scheme, host, port and path ("(not a URL)"
    when it has no scheme). A port that is not a number is shown as written, still without credentials."""
    from urllib.parse import urlsplit

    from personavlm_cli.core.secrets import masked

    # Masked first: a password holding "/", "#" or "?" unencoded would end a URL parser's host early.
    u = urlsplit(masked((url or "").strip()))
    try:
        host = u.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if u.port:
            host += f":{u.port}"
    except ValueError:
        host = (u.netloc or "").rpartition("@")[2]
    return f"{u.scheme}://{host}{u.path}" if u.scheme else "(not a URL)"
