"""The local chat model (llama-cpp-python) behind the ``ChatModel`` port: loading with the GPU fallback,
streaming, constrained (JSON schema / GBNF) completion, ``fork``, ``interrupt`` and ``prefill``, with every
bad input turned into one line. The file checks are ``adapters/gguf.py``, the native runtime
``adapters/llama_runtime.py``, the messages ``adapters/chat_messages.py``.

llama_cpp is imported only inside the functions that load or run a model: importing this module is cheap.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from personavlm_cli.adapters import llama_runtime
from personavlm_cli.adapters.chat_base import ChatModelBase
from personavlm_cli.adapters.chat_messages import prepare_messages
from personavlm_cli.adapters.gguf import inspect_chat_model, inspect_projector
from personavlm_cli.adapters.json_output import one_line
from personavlm_cli.adapters.llama_runtime import LoadInfo, load_llama, n_gpu_layers, parse_gpu_layers
from personavlm_cli.core.errors import ModelError, ModelInterrupted

FORK_BATCH = 32  # prompt batch of a background context (``ChatModel.fork``): tokens between two interrupt checks


class ChatModel(ChatModelBase):
    """A GGUF chat model in this process (llama-cpp-python), optionally with a vision projector.

    Implements :class:`personavlm_cli.core.ports.ChatModel`.
    """

    load_info: LoadInfo
    last_usage: dict[str, int]

    def __init__(self, path, *, n_ctx: int = 4096, gpu_layers: str | int = "auto", mmproj=None,
                 threads: int | None = None, seed: int = 0, chat_format: str | None = None,
                 batch: int | None = None) -> None:
        self._llm = None
        info = inspect_chat_model(path)
        proj = inspect_projector(mmproj) if mmproj is not None else None
        requested = parse_gpu_layers(gpu_layers)
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 0:
            raise ModelError(f"invalid context size {n_ctx!r}: use a number of tokens, or 0 for the model's own")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ModelError(f"invalid thread count {threads!r}: use a number of 1 or more")

        llama_cpp = llama_runtime.bindings()
        offload_supported = bool(llama_cpp.llama_supports_gpu_offload())
        n_gpu = n_gpu_layers(requested, offload_supported)
        self.info = info
        self.projector = proj
        self._seed = int(seed)
        self._dirty = False
        # llama.cpp contexts are not thread-safe: every use of the model is serialised here.
        self._lock = threading.RLock()
        self._grammars_ok: set[str] = set()
        self._abort = threading.Event()
        self._params = dict(path=path, n_ctx=n_ctx, gpu_layers=gpu_layers, threads=threads, seed=seed,
                            chat_format=chat_format, batch=batch)
        self._abortable = False  # a complete() call is running: interrupt() stops it between two batches
        self._prefill_stop = None  # a prefill() is running: asked between two batches
        self.last_usage: dict[str, int] = {}

        t0 = time.perf_counter()
        fallback_reason = None
        try:
            llm = load_llama(llama_cpp, info, proj, n_ctx, n_gpu, threads, chat_format, batch)
        except ModelError as first:
            # Only "auto" may quietly change what was asked for: an explicit layer count that does
            # not fit is the user's to fix, and they should hear about it.
            if requested != "auto" or n_gpu == 0:
                raise
            fallback_reason = str(first)
            n_gpu = 0
            llm = load_llama(llama_cpp, info, proj, n_ctx, 0, threads, chat_format, batch)
        load_seconds = time.perf_counter() - t0
        self._llm = llm
        self._guard_decode(llm)

        total = (info.block_count + 1) if info.block_count is not None else 0
        offloaded = 0
        logged = llama_runtime.offloaded_layers()
        if logged is not None:
            offloaded, total = logged
        self.load_info = LoadInfo(
            model_path=info.path,
            name=info.display_name,
            architecture=info.architecture,
            quantization=info.quantization,
            n_ctx=int(llm.n_ctx()),
            gpu_layers_requested=str(requested),
            gpu_layers_offloaded=offloaded,
            total_layers=total,
            load_seconds=load_seconds,
            gpu_offload_supported=offload_supported,
            vision=proj is not None,
            cpu_fallback_reason=fallback_reason,
            mmproj_path=proj.path if proj else None,
        )

    def _guard_decode(self, llm) -> None:
        """Let :meth:`interrupt` stop a :meth:`complete` call between two native decodes, in the prompt
        as well as in the answer: llama-cpp-python evaluates a prompt in batches of ``n_batch`` tokens
        and counts a batch only once it is decoded, so the context stays consistent. An exception
        raised inside llama.cpp's own callbacks would be swallowed by ctypes; here it is not."""
        context = getattr(llm, "_ctx", None)
        decode = getattr(context, "decode", None)
        if context is None or decode is None:
            return
        abort = self._abort

        def guarded(batch):
            if self._abortable and abort.is_set():
                abort.clear()
                raise ModelInterrupted("the model call was interrupted")
            stop = self._prefill_stop
            if stop is not None and stop():
                raise ModelInterrupted("the prefill was stopped")
            return decode(batch)

        context.decode = guarded

    def _model(self):
        if self._llm is None:
            raise ModelError("the model is closed")
        if self._dirty:
            # A stream that was abandoned (Ctrl-C, break) may have stopped between a native decode
            # and the Python bookkeeping of it; start from a clean cache rather than trust it.
            self._llm.reset()
            self._dirty = False
        return self._llm

    # -- generation --------------------------------------------------------------------------------

    def _stream(self, messages: Sequence[Mapping[str, Any]], *, max_tokens: int = 512, temperature: float = 0.7,
               top_p: float = 0.95, stop: list[str] | None = None, repeat_penalty: float = 1.1) -> Iterator[str]:
        """Text pieces of the answer as they are generated.

        Stopping early (``break``, ``close()``, KeyboardInterrupt between pieces) leaves the model
        usable for the next call.
        """
        msgs = prepare_messages(messages, vision=self.vision)
        llm = self._model()
        before = [int(t) for t in llm.input_ids[: llm.n_tokens]]
        self._dirty = True
        it = None
        pieces = 0
        try:
            try:
                it = llm.create_chat_completion(msgs, stream=True, max_tokens=max_tokens, temperature=temperature,
                                                top_p=top_p, stop=stop or [], seed=self._seed,
                                                repeat_penalty=repeat_penalty)
                for chunk in it:
                    piece = chunk["choices"][0]["delta"].get("content")
                    if piece:
                        pieces += 1
                        if pieces == 1:
                            self._note_usage(llm, before, 1)
                        yield piece
            except (ValueError, RuntimeError) as e:
                raise ModelError(one_line(f"the model could not answer: {e}")) from None
            self._dirty = False
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
            if pieces:
                self.last_usage["completion_tokens"] = pieces

    def _note_usage(self, llm, before: list[int], generated: int) -> None:
        """Prompt tokens of the call now running, and how many of them llama.cpp's cache already held
        (the longest common prefix with what the context held before)."""
        now = llm.input_ids[: llm.n_tokens]
        prompt = max(0, int(llm.n_tokens) - generated)
        cached = 0
        for a, b in zip(before, now[:prompt]):
            if a != int(b):
                break
            cached += 1
        self.last_usage = {"prompt_tokens": prompt, "cached_tokens": min(cached, prompt), "context_used": prompt}

    @property
    def weights_bytes(self) -> int | None:
        try:
            return self.info.path.stat().st_size
        except OSError:
            return None

    def fork(self) -> ChatModel:
        """A second context over the same model file, for background work: the answers' KV cache
        survives the update stage. The weights are memory-mapped, so on the CPU they are shared by
        both (the page cache holds one copy); the fork costs its own KV cache and compute buffers."""
        params = dict(self._params)
        # Background prompts are short (a message, a session's user turns): a smaller context keeps the
        # fork's KV cache small (measured in docs/benchmarks.md).
        params["n_ctx"] = 4096 if not params["n_ctx"] else min(int(params["n_ctx"]), 4096)
        # Small prompt batches: an answer that arrives waits for at most one batch of a background
        # prompt (interrupt() is honoured between batches), not for the whole prompt.
        params["batch"] = FORK_BATCH
        return ChatModel(**params)

    def prefill(self, messages: Sequence[Mapping[str, Any]], stop=None) -> bool:
        """Evaluate ``messages`` (with the chat template, then one sampled token, discarded) into the
        context, in batches of ``FORK_BATCH`` tokens with ``stop()`` asked before each: a message that
        arrives waits for one small batch. What was evaluated before a stop stays (llama-cpp-python
        counts a batch only once it is decoded), so the context is never left inconsistent."""
        with self._lock:
            msgs = prepare_messages(messages, vision=self.vision)
            llm = self._model()
            saved = llm.n_batch
            llm.n_batch = min(saved, FORK_BATCH * 2)
            self._prefill_stop = stop
            it = None
            try:
                it = llm.create_chat_completion(msgs, stream=True, max_tokens=1, temperature=0.0, seed=self._seed)
                for _chunk in it:
                    break
                return True
            except ModelInterrupted:
                return False
            except (ValueError, RuntimeError) as e:
                self._dirty = True  # a native failure: start the next call from a clean cache
                raise ModelError(one_line(f"the model could not evaluate the prompt: {e}")) from None
            finally:
                self._prefill_stop = None
                llm.n_batch = saved
                close = getattr(it, "close", None)
                if close is not None:
                    close()

    def drop_cache(self) -> None:
        """Forget the evaluated prompt, as a new process starts: `bench` measures a new chat's first
        message with it (the next call evaluates its whole prompt)."""
        with self._lock:
            if self._llm is not None:
                self._llm.reset()

    def interrupt(self) -> None:
        """Stop the call in progress at its next token (a background call an answer is waiting for)."""
        self._abort.set()

    def _complete(self, messages: Sequence[Mapping[str, Any]], *, max_tokens: int = 256, temperature: float = 0.0,
                 grammar: str | None = None, json_schema: dict | None = None, stop: list[str] | None = None,
                 seed: int | None = None) -> str:
        """The whole answer at once, optionally constrained by a GBNF grammar or a JSON schema."""
        if grammar is not None and json_schema is not None:
            raise ValueError("pass either grammar or json_schema, not both")
        msgs = prepare_messages(messages, vision=self.vision)
        llm = self._model()
        kwargs: dict[str, Any] = {}
        if json_schema is not None:
            self._check_schema_grammar(json_schema)
            # Only the "json_object" form with a schema constrains generation in llama-cpp-python;
            # the OpenAI "json_schema" form is silently ignored.
            kwargs["response_format"] = {"type": "json_object", "schema": json_schema}
        if grammar is not None:
            self._check_grammar(grammar)
            kwargs["grammar"] = llama_runtime.bindings().LlamaGrammar.from_string(grammar, verbose=False)
        abort = self._abort  # set by interrupt(), possibly just before this call: honoured at once
        if abort.is_set():
            abort.clear()
            raise ModelInterrupted("the model call was interrupted")
        self._dirty = True
        self._abortable = True
        pieces: list[str] = []
        it = None
        try:
            # Streamed, so that interrupt() can stop the call between two tokens (an exception raised
            # inside llama.cpp's sampler callback would be swallowed by ctypes); while the prompt is
            # evaluated, between two of its batches (``_guard_decode``).
            it = llm.create_chat_completion(msgs, max_tokens=max_tokens, temperature=temperature, stream=True,
                                            stop=stop or [], seed=self._seed if seed is None else seed, **kwargs)
            for chunk in it:
                if abort.is_set():
                    abort.clear()
                    raise ModelInterrupted("the model call was interrupted")
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    pieces.append(piece)
        except (ValueError, RuntimeError) as e:
            raise ModelError(one_line(f"the model could not answer: {e}")) from None
        finally:
            self._abortable = False
            close = getattr(it, "close", None)
            if close is not None:
                close()
        self._dirty = False
        return "".join(pieces)

    def _check_grammar(self, gbnf: str) -> None:
        """Raise ValueError for GBNF text llama.cpp cannot parse (``llama_runtime.check_grammar``), once per text."""
        if gbnf in self._grammars_ok:
            return
        llama_runtime.check_grammar(self._model()._model.vocab, gbnf)
        self._grammars_ok.add(gbnf)

    def _check_schema_grammar(self, schema: dict) -> None:
        key = json.dumps(schema, sort_keys=True)
        if key in self._grammars_ok:
            return
        try:
            from llama_cpp.llama_grammar import json_schema_to_gbnf

            gbnf = json_schema_to_gbnf(json.dumps(schema))
        except Exception:  # llama-cpp-python then falls back to its plain JSON grammar
            gbnf = None
        if gbnf is not None:
            self._check_grammar(gbnf)
        self._grammars_ok.add(key)

    def stream(self, messages: Sequence[Mapping[str, Any]], *, max_tokens: int = 512, temperature: float = 0.7,
               top_p: float = 0.95, stop: list[str] | None = None, repeat_penalty: float = 1.1) -> Iterator[str]:
        """Text pieces of the answer as they come; see ``_stream``. Holds the model while streaming."""
        with self._lock:
            yield from self._stream(messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                    stop=stop, repeat_penalty=repeat_penalty)

    def complete(self, messages: Sequence[Mapping[str, Any]], *, max_tokens: int = 256, temperature: float = 0.0,
                 grammar: str | None = None, json_schema: dict | None = None, stop: list[str] | None = None,
                 seed: int | None = None) -> str:
        """The whole answer at once; see ``_complete``."""
        with self._lock:
            return self._complete(messages, max_tokens=max_tokens, temperature=temperature, grammar=grammar,
                                  json_schema=json_schema, stop=stop, seed=seed)

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        with self._lock:
            return len(self._model().tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()

