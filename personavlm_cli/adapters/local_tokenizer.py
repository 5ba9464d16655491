"""Token counts of a served model made on this machine: its GGUF's vocabulary loaded alone by llama.cpp
(``LocalTokenizer``), or an estimate by characters that errs towards too many where neither this machine
nor the server can count.
"""

from __future__ import annotations

import math
import os
import threading

# Characters per token for the estimate used when the server has no tokenizer endpoint: low on
# purpose (English averages about 4), so the estimate errs towards "too long" and a message is
# trimmed a little early rather than overflowing the context.
CHARS_PER_TOKEN = 3.0


class LocalTokenizer:
    """The served model's tokenizer from its GGUF file on this machine: llama.cpp loads the vocabulary
    only (``vocab_only``, no weights: a fraction of a second, a few MB). One per file in the process."""

    _loaded: dict[str, LocalTokenizer | None] = {}
    _guard = threading.Lock()

    def __init__(self, llm) -> None:
        self._llm = llm
        self._lock = threading.Lock()

    @classmethod
    def for_file(cls, path: str | os.PathLike | None) -> LocalTokenizer | None:
        """The tokenizer of the GGUF at ``path``; None when there is no such file or llama.cpp cannot read it."""
        if not path:
            return None
        key = os.path.realpath(os.fspath(path))
        with cls._guard:
            if key not in cls._loaded:
                cls._loaded[key] = cls._load(key)
            return cls._loaded[key]

    @classmethod
    def _load(cls, key: str) -> LocalTokenizer | None:
        if not key.lower().endswith(".gguf") or not os.path.isfile(key):
            return None
        try:
            from personavlm_cli.adapters.llama_runtime import bindings

            return cls(bindings().Llama(key, vocab_only=True, verbose=False))
        except Exception:
            return None

    def count(self, text: str) -> int:
        with self._lock:
            return len(self._llm.tokenize(text.encode("utf-8", "surrogatepass"), add_bos=False, special=False))


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN)) if text else 0
