"""What both chat model backends (``llm.ChatModel`` in this process, ``remote_llm.RemoteChatModel`` on a
server) have in common and derive the same way: the window and vision from their ``load_info``, the
constrained-JSON protocol over their own ``complete``, and ``with`` support. Each backend implements
the rest of :class:`personavlm_cli.core.ports.ChatModel`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from personavlm_cli.adapters.json_output import complete_json_with


class ChatModelBase(abc.ABC):
    """Mixin: ``n_ctx``, ``vision``, ``complete_json``, ``__enter__`` / ``__exit__``.

    A subclass sets ``load_info`` (with ``n_ctx`` and ``vision``), ``last_usage`` and ``_seed``, and
    implements ``complete`` and ``close``.
    """

    load_info: Any
    last_usage: dict[str, int]
    _seed: int

    @property
    def n_ctx(self) -> int:
        return self.load_info.n_ctx

    @property
    def vision(self) -> bool:
        return self.load_info.vision

    @abc.abstractmethod
    def complete(self, messages: Sequence[Mapping[str, Any]], *, max_tokens: int = 256, temperature: float = 0.0,
                 grammar: str | None = None, json_schema: dict | None = None, stop: list[str] | None = None,
                 seed: int | None = None) -> str:
        """Every backend generates in its own way (the port's ``complete``)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Every backend frees its own model or client."""

    def complete_json(self, messages: Sequence[Mapping[str, Any]], schema: dict, *, max_tokens: int = 256,
                      validate: Callable[[dict], str | None] | None = None, retries: int = 1) -> dict:
        """A JSON object that satisfies ``schema`` (checked here too: a grammar is not the whole schema,
        and a server may ignore it) and ``validate(obj)`` (None when the object is fine, else a reason
        or ValueError). Invalid output is retried ``retries`` times at a slightly higher temperature,
        then ModelOutputError is raised; a model error (a server that cannot be reached, an
        interrupted call) is raised at once, without a retry."""
        return complete_json_with(self.complete, messages, schema, max_tokens=max_tokens, validate=validate,
                                  retries=retries, seed=self._seed)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
