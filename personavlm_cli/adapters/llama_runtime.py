"""The llama.cpp runtime in this process (llama-cpp-python): importing the bindings with their native
logging routed here (load failures explained in one line, the offloaded-layers count kept), the AMX
workaround, GPU layers, loading a model file (the load line), the grammar check, and the bare baseline
``Llama`` that `bench` compares with.

llama_cpp is imported only inside the functions that load or run a model: importing this module is cheap.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personavlm_cli.adapters.gguf import GGUFInfo
from personavlm_cli.adapters.json_output import one_line
from personavlm_cli.core.errors import ModelError


def runtime_info() -> dict:
    """What `doctor` shows of the llama.cpp runtime: GPU offload support and the build's features
    (the bindings only: no model is loaded)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    return {"gpu offload": bool(llama_cpp.llama_supports_gpu_offload()),
            "build": (info.decode() if isinstance(info, bytes) else str(info)).strip()}


# --------------------------------------------------------------------------------------------------
# GPU layers
# --------------------------------------------------------------------------------------------------


def parse_gpu_layers(value: str | int) -> str | int:
    """``auto``, ``all`` (also ``-1``, llama.cpp's spelling of it) or a number of layers >= 0."""
    if isinstance(value, bool):
        raise ModelError(f"invalid GPU layers value {value!r}: use auto, all or a number of layers")
    if isinstance(value, int):
        n = value
    else:
        s = str(value).strip().lower()
        if s in ("auto", "all"):
            return s
        if not re.fullmatch(r"[+-]?\d{1,6}", s):
            raise ModelError(f"invalid GPU layers value {str(value)!r}: use auto, all or a number of layers")
        n = int(s)
    if n == -1:
        return "all"
    if n < 0:
        raise ModelError(f"invalid GPU layers value {value!r}: use auto, all or a number of layers (0 or more)")
    return n


# --------------------------------------------------------------------------------------------------
# Native log capture
# --------------------------------------------------------------------------------------------------

_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")


class _NativeLog:
    """Swallows llama.cpp/ggml log text (it would otherwise land on the user's terminal) while keeping
    what we need from it: the offloaded-layers count, and recent lines to explain a load failure."""

    # ggml_log_level in this llama.cpp: 1 debug, 2 info, 3 warn, 4 error, 5 continues the previous
    # message. (llama-cpp-python's own _logger.py still maps the older numbering.)
    WARN, ERROR, CONT = 3, 4, 5

    def __init__(self) -> None:
        self.lines: collections.deque[tuple[int, str]] = collections.deque(maxlen=50)
        self.partial = ""
        self.level = 0
        self.offloaded: tuple[int, int] | None = None
        self.callback: Any = None  # the ctypes function object; must stay referenced while installed

    def reset(self) -> None:
        self.lines.clear()
        self.partial = ""
        self.offloaded = None

    def feed(self, level: int, text: str) -> None:
        if level != self.CONT:
            self.level = level
        text = self.partial + text
        *done, self.partial = text.split("\n")
        for line in done:
            line = line.strip()
            if not line:
                continue
            self.lines.append((self.level, line))
            m = _OFFLOADED.search(line)
            if m:
                self.offloaded = (int(m.group(1)), int(m.group(2)))

    def failure_reason(self) -> str | None:
        lines = list(self.lines) + ([(self.level, self.partial.strip())] if self.partial.strip() else [])
        # The first error is the specific one; later lines only repeat "failed to load model".
        tests = (
            lambda lv, t: lv == self.ERROR,
            lambda lv, t: re.search(r"\berror\b", t, re.IGNORECASE),
            lambda lv, t: lv == self.WARN and re.search(r"fail|invalid|unsupported|not supported|cannot", t, re.I),
        )
        for test in tests:
            for lv, line in lines:
                if test(lv, line):
                    return _strip_prefix(line)
        return None


def _strip_prefix(line: str) -> str:
    # llama.cpp prefixes lines with the C function name ("llama_model_load: error loading ...").
    return re.sub(r"^[A-Za-z_][A-Za-z0-9_]*:\s+", "", line).strip()


_native_log = _NativeLog()


def offloaded_layers() -> tuple[int, int] | None:
    """(layers offloaded to the GPU, layers of the model) as llama.cpp logged them at the last load."""
    return _native_log.offloaded


def bindings():
    """Import llama_cpp and route its native logging to :data:`_native_log` (once per process)."""
    import ctypes

    import llama_cpp

    if _native_log.callback is None:

        @llama_cpp.llama_log_callback
        def _on_log(level, text, user_data):
            try:
                _native_log.feed(level, text.decode("utf-8", errors="replace") if text else "")
            except Exception:  # an exception must never cross back into C
                pass

        _native_log.callback = _on_log
        llama_cpp.llama_log_set(_on_log, ctypes.c_void_p(0))
        if _cpu_has_amx():
            _no_extra_buffer_types(llama_cpp)
    return llama_cpp


def raw_llama(info: LoadInfo, threads: int | None = None):
    """A bare ``llama_cpp.Llama`` on the same file and settings as a loaded model (``info``), loaded
    through :func:`bindings`: the baseline `personavlm bench` compares the chat path with."""
    kwargs: dict[str, Any] = {"n_ctx": info.n_ctx, "n_gpu_layers": -1 if info.gpu_layers_offloaded else 0,
                              "verbose": False}
    if threads:
        kwargs["n_threads"] = kwargs["n_threads_batch"] = threads
    return bindings().Llama(str(info.model_path), **kwargs)


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_int8" in line.split() or "amx_tile" in line.split()
    except OSError:
        pass
    return False


def _no_extra_buffer_types(llama_cpp) -> None:
    """Load models without llama.cpp's extra CPU buffer types (weight repacking, AMX).

    A build for a CPU that reports AMX (``-march=native``) multiplies Q4 weights with AMX tiles,
    and in virtual machines that do not give the guest the AMX state (Firecracker here) the first
    prompt of more than one token dies in ``ggml_backend_amx_mul_mat`` with SIGSEGV. Without extra
    buffer types the plain CPU kernels run; they are correct everywhere (docs/dependencies.md).
    """
    binding = llama_cpp.llama_cpp
    original = binding.llama_model_default_params
    if getattr(original, "_personavlm_no_extra", False):
        return

    def params():
        p = original()
        if hasattr(p, "use_extra_bufts"):
            p.use_extra_bufts = False
        return p

    params._personavlm_no_extra = True  # type: ignore[attr-defined]  # a mark on the function: installed once
    binding.llama_model_default_params = params


def _quiet_mtmd(llama_cpp) -> None:
    """The projector code (clip/mtmd) has its own logger; route it to the same sink."""
    import ctypes

    try:
        from llama_cpp import mtmd_cpp
    except Exception:  # a build without mtmd simply has nothing to quiet
        return
    for name in ("mtmd_log_set", "mtmd_helper_log_set"):
        fn = getattr(mtmd_cpp, name, None)
        if fn is not None:
            try:
                fn(_native_log.callback, ctypes.c_void_p(0))
            except Exception:  # quieting native logs is best effort
                pass


class _Captured:
    text = ""


@contextlib.contextmanager
def _captured_stderr():
    """Collect what native code writes to file descriptor 2 meanwhile (text is set on exit)."""
    import sys
    import tempfile

    out = _Captured()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield out  # no usable descriptor 2 (embedded interpreter): nothing to capture
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.text = tmp.read(64 * 1024).decode("utf-8", errors="replace")



# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


@dataclass
class LoadInfo:
    model_path: Path
    name: str
    architecture: str
    quantization: str
    n_ctx: int
    gpu_layers_requested: str
    gpu_layers_offloaded: int
    total_layers: int
    load_seconds: float
    gpu_offload_supported: bool
    vision: bool
    cpu_fallback_reason: str | None = None
    mmproj_path: Path | None = None

    def summary_line(self) -> str:
        """One line for the terminal, e.g. ``SmolLM2-135M-Instruct · Q4_1 · ctx 4096 · GPU 0/31 layers
        (CPU build) · loaded in 0.12 s``."""
        gpu = f"GPU {self.gpu_layers_offloaded}/{self.total_layers} layers"
        if not self.gpu_offload_supported:
            gpu += " (CPU build)"
        elif self.cpu_fallback_reason:
            gpu += " (GPU load failed, fell back to CPU)"
        parts = [self.name, self.quantization, f"ctx {self.n_ctx}", gpu]
        if self.vision:
            parts.append("vision")
        parts.append(f"loaded in {self.load_seconds:.2f} s")
        return " · ".join(parts)


def n_gpu_layers(requested: str | int, offload_supported: bool) -> int:
    """llama.cpp's ``n_gpu_layers`` for a parsed GPU layers value (-1: all)."""
    if requested == "auto":
        return -1 if offload_supported else 0
    if requested == "all":
        return -1
    return int(requested)



def load_llama(llama_cpp, info: GGUFInfo, proj: GGUFInfo | None, n_ctx: int, n_gpu: int,
          threads: int | None, chat_format: str | None, batch: int | None = None):
    _native_log.reset()
    kwargs: dict[str, Any] = dict(n_ctx=n_ctx, n_gpu_layers=n_gpu, verbose=False)
    if batch is not None:
        kwargs["n_batch"] = batch
    if threads is not None:
        kwargs["n_threads"] = threads
        kwargs["n_threads_batch"] = threads
    handler = None
    what = f"cannot load model {info.path}"
    try:
        if proj is not None:
            _quiet_mtmd(llama_cpp)
            from llama_cpp import llama_chat_format as lcf

            cls = getattr(lcf, "MTMDChatHandler", None)
            if cls is not None:
                handler = cls(clip_model_path=str(proj.path), verbose=False, use_gpu=n_gpu != 0)
            else:
                handler = lcf.Llava15ChatHandler(clip_model_path=str(proj.path), verbose=False)
            kwargs["chat_handler"] = handler
        elif chat_format:
            kwargs["chat_format"] = chat_format
        llm = llama_cpp.Llama(str(info.path), **kwargs)
    except ModelError:
        raise
    except Exception as e:  # anything from the native side becomes one line
        reason = _native_log.failure_reason() or str(e) or type(e).__name__
        raise ModelError(one_line(f"{what}: {reason}")) from None
    if handler is not None and proj is not None and hasattr(handler, "_init_mtmd_context"):
        # The handlers open the projector lazily on the first image; open it now so that a bad or
        # mismatched mmproj fails at load time with the model, not in the middle of a chat.
        try:
            handler._init_mtmd_context(llm)
        except Exception as e:  # anything from the native side becomes one line
            reason = _native_log.failure_reason() or str(e) or type(e).__name__
            llm.close()
            raise ModelError(one_line(f"cannot load vision projector {proj.path}: {reason}")) from None
    return llm


def check_grammar(vocab, gbnf: str) -> None:
    """Raise ValueError for GBNF text llama.cpp cannot parse over ``vocab`` (a loaded model's).

    llama-cpp-python 0.3.36 parses a grammar only when sampling starts, and a grammar that fails
    to parse there crashes the whole process (a NULL sampler is used): parse it once here first.
    """
    llama_cpp = bindings()
    _native_log.reset()
    # The grammar parser reports errors with fprintf(stderr), not through the log callback.
    with _captured_stderr() as captured:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
    if not sampler:
        said = [ln.strip() for ln in captured.text.splitlines() if re.search(r"\berror\b", ln, re.I)]
        reason = (_strip_prefix(said[0]) if said else _native_log.failure_reason()) or "llama.cpp could not parse it"
        raise ValueError(one_line(f"invalid GBNF grammar: {reason}"))
    llama_cpp.llama_sampler_free(sampler)
