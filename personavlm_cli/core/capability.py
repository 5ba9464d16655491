"""What the model the user has can carry, decided once per model (a size rule, documented).

The embedded SmolLM2-135M model (98 MB) cannot extract facts without inventing them, loses the thread
in a long system prompt, and does not follow a search protocol; a 3B-8B instruct model at 4 bits
(2-5 GB) can do all three. The line is drawn at the GGUF file's size: under ``SMALL_MODEL_BYTES`` a
model learns by rules (``memory.extractor``) and gets the compact prompt (``model.prompt_style``);
a model on a server is taken to be capable. Either setting can be forced in the configuration.
"""

from __future__ import annotations

from typing import Any

SMALL_MODEL_BYTES = 3_000_000_000  # about 4B parameters at 4 bits


def is_small(model: Any) -> bool:
    """Under the size line; a model whose weights are elsewhere (a server) is taken to be capable."""
    if model is None:  # no model loaded (recall-only work): what a small one would get
        return True
    size = model.weights_bytes
    return size is not None and size < SMALL_MODEL_BYTES


def extractor_for(setting: str, small: bool) -> str:
    """``memory.extractor``: rules or model (``auto``: rules for a small model)."""
    if setting in ("rules", "model"):
        return setting
    return "rules" if small else "model"


def prompt_style_for(setting: str, small: bool) -> str:
    """``model.prompt_style``: compact or full (``auto``: compact for a small model)."""
    if setting in ("compact", "full"):
        return setting
    return "compact" if small else "full"


def choose_extractor(setting: str, model: Any) -> str:
    return extractor_for(setting, is_small(model))


def choose_prompt_style(setting: str, model: Any) -> str:
    return prompt_style_for(setting, is_small(model))
