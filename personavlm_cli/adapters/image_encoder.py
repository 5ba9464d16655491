"""Image (and matching text) embeddings with open_clip, ViT-B-32 by default.

Weights: ``None``/"none" builds the real architecture with a seeded random initialisation (no
download, deterministic; good for exact and near-duplicate matching, not for semantics); a local
file (.safetensors/.bin/.pt/.pth) or ``local-dir:/path`` loads offline; any other value is an
open_clip pretrained tag ("openai", "laion2b_s34b_b79k", ...) read from the hub cache: the standard
one (``HF_HUB_CACHE``, where `personavlm model pull clip` and open_clip itself put them) when the
tag's file is there, else ``cache_dir``. Unless the caller allows downloads the hub is put in offline
mode, so a tag that is not cached fails at once with a clear message instead of retrying the network
for most of a minute.

torch, torchvision and open_clip are imported on first use (about 4 s together).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
from pathlib import Path
from typing import Any

from personavlm_cli.core.errors import ImageError, PersonaError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
BATCH = 16

_IMPORT_LOCK = threading.Lock()
# The torch.library.Library holding our stand-in torchvision op schemas. It must stay referenced
# for the life of the process: a Library object removes its registrations when it is destroyed.
_TORCHVISION_STUB_LIB = None
TORCHVISION_STUB_SCHEMAS = {
    # Exactly torchvision's own schemas (csrc/ops/nms.cpp and the quantized qnms kernel), so that
    # torchvision/_meta_registrations.py can attach its fake (meta) kernels to them.
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def _torchvision_ops_load() -> bool:
    """Try to load torchvision's compiled ops (``_C.so``) without importing torchvision.

    True when they load (or there is no torchvision to look at); False when the library exists but
    cannot be loaded into this torch (the CUDA build of torchvision 0.28.0 beside the CPU build of
    torch 2.13.0 fails this way).
    """
    import importlib.util

    import torch

    try:
        spec = importlib.util.find_spec("torchvision")
    except (ImportError, ValueError):
        return True
    if spec is None or not spec.submodule_search_locations:
        return True
    pkg = Path(list(spec.submodule_search_locations)[0])
    libs = sorted(pkg.glob("_C*.so")) + sorted(pkg.glob("_C*.pyd")) + sorted(pkg.glob("_C*.dylib"))
    if not libs:
        return False
    for lib in libs:
        try:
            torch.ops.load_library(str(lib))
            return True
        except (OSError, RuntimeError, ImportError):
            continue
    return False


def _op_exists(torch, name: str) -> bool:
    try:
        torch._C._dispatch_has_kernel_for_dispatch_key(f"torchvision::{name}", "CPU")
        return True
    except RuntimeError:
        return False


def _register_torchvision_stubs() -> list[str]:
    """Define the torchvision op schemas that torchvision's import-time registrations need."""
    global _TORCHVISION_STUB_LIB
    import torch

    missing = [n for n in TORCHVISION_STUB_SCHEMAS if not _op_exists(torch, n)]
    if missing:
        if _TORCHVISION_STUB_LIB is None:
            _TORCHVISION_STUB_LIB = torch.library.Library("torchvision", "FRAGMENT")
        for name in missing:
            _TORCHVISION_STUB_LIB.define(TORCHVISION_STUB_SCHEMAS[name])
    return missing


def _import_open_clip():
    """Import open_clip, working around a torchvision build that does not match torch.

    Why: we keep the CPU build of torch 2.13.0 (small, no CUDA packages). The only torchvision
    release that matches it, 0.28.0, exists only as a CUDA build, whose compiled ops (``_C.so``)
    do not load into CPU torch. torchvision then still imports, with ``_has_ops()`` False, except
    for one thing: ``torchvision/_meta_registrations.py`` registers fake kernels for
    ``torchvision::nms`` and ``torchvision::qnms`` with ``torch.library.register_fake`` without
    checking ``_has_ops()``, and that raises "operator torchvision::nms does not exist" (every
    other registration is guarded). open_clip imports torchvision (transforms, ops.misc) but never
    calls nms/qnms, so declaring those two schemas ourselves, with no kernel behind them, lets the
    import succeed; calling torchvision.ops.nms would still fail with torchvision's own
    "Couldn't load custom C++ ops" error. We do this only when loading the compiled ops fails:
    with a matching torchvision nothing is registered here. (The other way, matching CUDA builds
    of both torch and torchvision, costs a venv of about 4.9 GB.)
    """
    if "open_clip" in sys.modules and hasattr(sys.modules["open_clip"], "create_model_and_transforms"):
        return sys.modules["open_clip"]
    with _IMPORT_LOCK:
        try:
            import torch  # noqa: F401 - imported for its failure only: open_clip without torch
        except ImportError as e:
            raise PersonaError(f"image embeddings need torch and open-clip-torch: {e}") from None
        if "torchvision" not in sys.modules and not _torchvision_ops_load():
            _register_torchvision_stubs()
        try:
            import open_clip
        except ImportError as e:
            raise PersonaError(f"image embeddings need open-clip-torch: {e}") from None
        except RuntimeError as e:
            raise PersonaError(f"cannot import open_clip (torch/torchvision mismatch?): "
                               f"{' '.join(str(e).split())[:200]}") from None
        return open_clip


@contextlib.contextmanager
def _quiet_logs():
    """Drops open_clip's log records while a model is created. It logs on the root logger, which
    prints to stderr when nothing is configured: "No pretrained weights loaded" for random init
    (intended), or an error it then raises anyway (we turn that into one ImageError line)."""
    import logging

    def drop_open_clip(record) -> bool:
        return "open_clip" not in (getattr(record, "pathname", "") or "")

    root = logging.getLogger()
    root.addFilter(drop_open_clip)
    # huggingface_hub warns on stderr at every retry of a failing download; the failure itself
    # reaches the user as one ImageError line.
    hub = logging.getLogger("huggingface_hub")
    hub_level = hub.level
    hub.setLevel(logging.ERROR + 1)
    try:
        yield
    finally:
        root.removeFilter(drop_open_clip)
        hub.setLevel(hub_level)


# The user's own choice, read before we set HF_HUB_OFFLINE ourselves.
_USER_HF_OFFLINE = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().lower() \
    in ("1", "true", "yes", "on")


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Hub offline mode (or the user's own setting) for the duration of model creation.

    huggingface_hub reads HF_HUB_OFFLINE once, at import, into ``constants.HF_HUB_OFFLINE``, and
    reads that constant at call time: the environment variable covers a first import, the
    constant an import that already happened.
    """
    hub: Any = sys.modules.get("huggingface_hub.constants")
    if hub is None or not hasattr(hub, "HF_HUB_OFFLINE"):
        yield
        return
    old = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True if offline else _USER_HF_OFFLINE
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = old


def _sha256_prefix(paths: list[Path], n: int = 12) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:n]


def _one_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def hub_files(model_name: str, tag: str) -> tuple[str, list[str]]:
    """Where open_clip gets a pretrained tag's weights on the hub: (repository, file names in the order
    open_clip tries them: the safetensors form first)."""
    open_clip = _import_open_clip()
    from open_clip import pretrained

    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if tag not in tags:
        known = ", ".join(tags[:8]) + (", ..." if len(tags) > 8 else "") if tags else "none"
        raise ImageError(f"unknown CLIP weights '{tag}' for {model_name} (known tags: {known})")
    hf_hub = (pretrained.get_pretrained_cfg(model_name, tag) or {}).get("hf_hub") or ""
    if not hf_hub:
        raise ImageError(f"open_clip's '{tag}' weights for {model_name} are not on the model hub (only at a URL); "
                         "download them yourself and set clip.weights to the file")
    repo, filename = os.path.split(hf_hub)
    filename = filename or "open_clip_pytorch_model.bin"
    safe = list(pretrained._get_safe_alternatives(filename)) if getattr(pretrained, "_has_safetensors", False) else []
    return repo, safe + [filename]


def _in_standard_cache(model_name: str, tag: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        repo, files = hub_files(model_name, tag)
        return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)
    except Exception:  # not there, as far as we can tell
        return False


def space_id(model_name: str, weights: str | None, seed: int = 0) -> str:
    """The embedding space (``ImageEncoder.model_id``) of these settings, without loading torch: vectors
    from encoders with different ids do not compare."""
    w = (weights or "").strip()
    base = f"open_clip:{model_name}"
    if w.lower() in ("", "none", "random"):
        return f"{base}:random-seed{int(seed)}"
    if w.startswith("local-dir:"):
        folder = Path(w[len("local-dir:"):]).expanduser()
        files = [folder / "open_clip_config.json"] + sorted(
            p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
        return f"open_clip:local-dir:{_sha256_prefix(files)}"
    if w.lower().endswith(WEIGHT_SUFFIXES) or os.sep in w or w.startswith((".", "~")) or Path(w).expanduser().is_file():
        return f"{base}:file:{_sha256_prefix([Path(w).expanduser()])}"
    return f"{base}:{w}"


class ImageEncoder:
    """open_clip model: ``embed_images(paths)`` and ``embed_texts(texts)`` -> float32 unit rows."""

    def __init__(self, weights: str | None = None, model_name: str = "ViT-B-32", seed: int = 0,
                 threads: int | None = None, *, cache_dir: str | os.PathLike | None = None,
                 allow_download: bool = False):
        self.model_name = model_name
        self.seed = int(seed)
        self.threads = int(threads) if threads else None
        self.cache_dir = str(cache_dir) if cache_dir else None
        self.allow_download = allow_download
        w = (weights or "").strip()
        self._weights_file: Path | None = None
        self._local_dir: Path | None = None
        self._tag: str | None = None
        if w.lower() in ("", "none", "random"):
            self.kind = "random"
        elif w.startswith("local-dir:"):
            self.kind = "local-dir"
            self._local_dir = Path(w[len("local-dir:"):]).expanduser()
            if not (self._local_dir / "open_clip_config.json").is_file():
                raise ImageError(f"CLIP weights directory {self._local_dir} has no open_clip_config.json")
        elif w.lower().endswith(WEIGHT_SUFFIXES) or os.sep in w or w.startswith((".", "~")) \
                or Path(w).expanduser().is_file():
            self.kind = "file"
            self._weights_file = Path(w).expanduser()
            if not self._weights_file.is_file():
                raise ImageError(f"CLIP weights file not found: {self._weights_file}")
        else:
            self.kind = "tag"
            self._tag = w
        self._model_id_cache: str | None = None
        self._create()

    # -- creation ----------------------------------------------------------------------------------

    def _create(self) -> None:
        import time

        if not self.allow_download and "huggingface_hub" not in sys.modules:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        open_clip = _import_open_clip()
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        t0 = time.perf_counter()
        name = self.model_name
        pretrained = None
        if self.kind == "local-dir":
            name = f"local-dir:{self._local_dir}"
        elif self.kind == "file":
            pretrained = str(self._weights_file)
        elif self.kind == "tag":
            tags = open_clip.list_pretrained_tags_by_model(self.model_name)
            if self._tag not in tags:
                known = ", ".join(tags[:8]) + (", ..." if len(tags) > 8 else "") if tags else "none"
                raise ImageError(f"unknown CLIP weights '{self._tag}' for {self.model_name} (known tags: {known})")
            pretrained = self._tag
        cache_dir = self.cache_dir
        if self.kind == "tag" and self._tag is not None and _in_standard_cache(self.model_name, self._tag):
            cache_dir = None  # the standard hub cache, where `model pull clip` and open_clip users put it
        try:
            with _quiet_logs(), _hub_offline(not self.allow_download), torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name, pretrained=pretrained, cache_dir=cache_dir)
                tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir) \
                    if "cache_dir" in _params(open_clip.get_tokenizer) else open_clip.get_tokenizer(name)
        except PersonaError:
            raise
        except Exception as e:  # open_clip and torch raise anything: one line
            raise self._creation_error(e) from None
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.create_seconds = time.perf_counter() - t0
        self.dim = self._read_dim(model)

    def _creation_error(self, e: BaseException) -> PersonaError:
        text = _one_line(e)
        if self.kind == "tag":
            # open_clip wraps the hub's LocalEntryNotFoundError / OfflineModeIsEnabled / connection
            # errors into "RuntimeError: Failed to download weights for tag ...".
            offline_markers = ("offline", "LocalEntryNotFound", "cannot find the requested files",
                               "Failed to download", "Connection", "resolve", "Max retries")
            if not self.allow_download and any(m.lower() in (text + type(e).__name__).lower()
                                               for m in offline_markers):
                return ImageError(f"CLIP weights '{self._tag}' for {self.model_name} are not downloaded; run "
                                  f"`personavlm model pull clip {self.model_name}:{self._tag}` or set clip.weights "
                                  f"to a local file")
            if self.allow_download and any(m.lower() in text.lower() for m in offline_markers):
                return ImageError(f"cannot download CLIP weights '{self._tag}' for {self.model_name} from the "
                                  f"model hub (no connection?): {text}")
            return ImageError(f"cannot load CLIP weights '{self._tag}' for {self.model_name}: {text}")
        if self.kind == "file":
            return ImageError(f"cannot load CLIP weights file {self._weights_file} into {self.model_name}: {text}")
        if self.kind == "local-dir":
            return ImageError(f"cannot load CLIP model from {self._local_dir}: {text}")
        return ImageError(f"cannot create CLIP model {self.model_name}: {text}")

    @staticmethod
    def _read_dim(model) -> int:
        visual = getattr(model, "visual", None)
        d = getattr(visual, "output_dim", None)
        if isinstance(d, int) and d > 0:
            return d
        proj = getattr(model, "text_projection", None)
        if proj is not None and getattr(proj, "shape", None) is not None and len(proj.shape) == 2:
            return int(proj.shape[1])
        import torch

        size = getattr(visual, "image_size", 224)
        size = size if isinstance(size, (tuple, list)) else (size, size)
        with torch.inference_mode():
            return int(model.encode_image(torch.zeros(1, 3, *size)).shape[-1])

    # -- identity ----------------------------------------------------------------------------------

    @property
    def has_pretrained(self) -> bool:
        return self.kind != "random"

    @property
    def model_id(self) -> str:
        """Names the embedding space: vectors from encoders with different ids do not compare."""
        if self._model_id_cache is None:
            weights = {"random": None, "tag": self._tag, "file": str(self._weights_file),
                       "local-dir": f"local-dir:{self._local_dir}"}[self.kind]
            mid = space_id(self.model_name, weights, self.seed)
            self._model_id_cache = mid
        return self._model_id_cache

    # -- embedding ---------------------------------------------------------------------------------

    def embed_images(self, paths: list):
        """Unit-length float32 vectors, shape (len(paths), dim). Each file goes through
        ``images.load_rgb`` (same checks as inspect_image: bad files raise ImageError)."""
        import numpy as np
        import torch

        from personavlm_cli.adapters.images import load_rgb

        paths = list(paths)
        if not paths:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.empty((len(paths), self.dim), dtype=np.float32)
        for start in range(0, len(paths), BATCH):
            chunk = paths[start:start + BATCH]
            # Downscale huge photos early: preprocess resizes to 224 anyway.
            batch = torch.stack([self.preprocess(load_rgb(p, max_side=1024)) for p in chunk])
            with torch.inference_mode():
                feats = self.model.encode_image(batch)
            out[start:start + len(chunk)] = _unit(feats.float().cpu().numpy())
        return out

    def embed_texts(self, texts: list[str]):
        """CLIP text vectors (same space as embed_images), unit rows, float32."""
        import numpy as np
        import torch

        texts = [t if isinstance(t, str) else str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), 64):
            chunk = texts[start:start + 64]
            tokens = self.tokenizer(chunk)
            with torch.inference_mode():
                feats = self.model.encode_text(tokens)
            out[start:start + len(chunk)] = _unit(feats.float().cpu().numpy())
        return out


def _unit(a):
    import numpy as np

    a = np.asarray(a, dtype=np.float32)
    return a / np.clip(np.linalg.norm(a, axis=1, keepdims=True), 1e-12, None)


def _params(fn) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()
