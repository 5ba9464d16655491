"""Messages in the form llama-cpp-python's chat handlers (and an OpenAI-compatible server) take: the
system text merged into one message, images as data URIs for a vision model, text only otherwise."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from personavlm_cli.adapters.json_output import one_line
from personavlm_cli.core.errors import ImageError


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")


def _image_data_uri(path) -> str:
    # images.py validates the file (size, format, decompression bombs) and downscales it.
    from personavlm_cli.adapters.images import image_to_data_uri

    return image_to_data_uri(path)


def prepare_messages(messages: Sequence[Mapping[str, Any]], *, vision: bool) -> list[dict]:
    """OpenAI-style messages in the form llama-cpp-python's chat handlers take.

    All system text is merged into one system message first (several chat templates reject a
    second one). ``image_path`` parts become ``image_url`` data URIs for a vision model; a text-only
    model gets only the text (its caller has said in words that an image was attached).
    """
    system: list[str] = []
    out: list[dict] = []
    for m in messages:
        role = m.get("role")
        content = m.get("content")
        if role == "system":
            text = _text_of(content)
            if text.strip():
                system.append(text)
            continue
        if isinstance(content, list):
            if vision and role == "user":
                parts = []
                for p in content:
                    kind = p.get("type") if isinstance(p, Mapping) else None
                    if kind == "text":
                        parts.append({"type": "text", "text": p.get("text", "")})
                    elif kind == "image_path":
                        try:
                            parts.append({"type": "image_url", "image_url": {"url": _image_data_uri(p["path"])}})
                        except (OSError, KeyError) as e:
                            raise ImageError(one_line(f"cannot read image {p.get('path')}: {e}")) from None
                    elif kind == "image_url":
                        parts.append(dict(p))
                new = {**m, "content": parts}
            else:
                new = {**m, "content": _text_of(content)}
        else:
            new = dict(m)
        out.append(new)
    if system:
        out.insert(0, {"role": "system", "content": "\n\n".join(system)})
    return out
