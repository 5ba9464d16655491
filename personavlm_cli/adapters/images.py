"""Image files: validation, safe decoding and content-addressed storage (Pillow only, no torch).

Every image the user attaches goes through :func:`inspect_image` before anything else reads it:
the file is read once (at most ``MAX_FILE_BYTES``), hashed, and decoded from those same bytes,
so what was checked is exactly what is hashed and stored. Decoding is refused before it starts
when the header announces more than ``MAX_PIXELS`` pixels (a decompression bomb), and a file
that does not decode completely (truncated, corrupt) is refused rather than padded with grey.

Pillow is imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from personavlm_cli.core.errors import ImageError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as _PILImage

MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 40_000_000
# Formats we decode. Anything else (EPS would run Ghostscript, and rarely used decoders are the
# usual home of decoder bugs) is refused as "not an image" even if Pillow could open it.
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "AVIF", "BMP", "TIFF")  # JPEG covers MPO too
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg", "GIF": "gif", "WEBP": "webp", "BMP": "bmp",
              "TIFF": "tif", "AVIF": "avif"}


@dataclass(frozen=True)
class ImageInfo:
    sha256: str
    path: Path  # the stored file (store_image) or the source file (inspect_image)
    width: int
    height: int
    format: str  # Pillow's format name: "PNG", "JPEG", "GIF", ...
    mode: str  # Pillow's mode of the first frame as stored: "RGB", "RGBA", "CMYK", "I;16", "P", ...
    frames: int
    size_bytes: int


def _show(path) -> str:
    """The path as one printable line (a file name may hold a newline)."""
    s = os.fspath(path)
    if isinstance(s, bytes):
        s = os.fsdecode(s)
    if any(ord(c) < 32 or ord(c) == 127 for c in s):
        return repr(s)
    return s


def _pil():
    """Import Pillow and set its process-wide safety switches to our policy."""
    from PIL import Image, ImageFile

    # Pillow warns above MAX_IMAGE_PIXELS and raises DecompressionBombError above twice that. We
    # make its own guard match ours (stricter than its 89 MP default), so that even a path that
    # skipped inspect_image cannot decode a bomb; both warning and error become ImageError here.
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    Image.init()
    # A truncated file must fail, not come back silently padded with grey.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    return Image, ImageFile


def _unreadable(e: OSError, show: str) -> ImageError:
    """One line for an OSError met while looking at or reading an image file."""
    if isinstance(e, (FileNotFoundError, NotADirectoryError)):
        return ImageError(f"image not found: {show}")
    if isinstance(e, IsADirectoryError):
        return ImageError(f"not a file: {show} (a directory)")
    if isinstance(e, PermissionError):
        return ImageError(f"cannot read image: {show} (permission denied)")
    return ImageError(f"cannot read image: {show} ({e.strerror or e})")


def write_private(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` atomically and durably, mode 0600: a temporary file in the same
    directory, fsynced, then renamed over ``dest``; a failure (Ctrl-C included) leaves no temporary
    file behind. The directory must exist (the caller fsyncs it when the rename must survive a crash)."""
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=dest.suffix)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _read_file(path) -> tuple[Path, bytes]:
    """Read a regular file of 1..MAX_FILE_BYTES bytes, following symlinks, with exact errors."""
    p = Path(os.fspath(path))
    show = _show(path)
    try:
        st = os.stat(p)  # follows symlinks: a dangling link is "not found"
    except OSError as e:
        raise _unreadable(e, show) from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"not a file: {show} (a directory)")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or a device: opening it could block forever or never end.
        raise ImageError(f"not a file: {show} (not a regular file)")
    if st.st_size == 0:
        raise ImageError(f"empty file: {show}")
    if st.st_size > MAX_FILE_BYTES:
        raise ImageError(f"image file too large: {show} is {st.st_size / 1e6:.1f} MB "
                         f"(limit {MAX_FILE_BYTES // (1024 * 1024)} MB)")
    try:
        with open(p, "rb") as f:
            # The file may have changed since stat: check again on the open descriptor, and never
            # read more than the limit (plus one byte, to notice growth).
            fst = os.fstat(f.fileno())
            if not stat.S_ISREG(fst.st_mode):
                raise ImageError(f"not a file: {show} (not a regular file)")
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise _unreadable(e, show) from None
    if not data:
        raise ImageError(f"empty file: {show}")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"image file too large: {show} is over "
                         f"{MAX_FILE_BYTES // (1024 * 1024)} MB (limit {MAX_FILE_BYTES // (1024 * 1024)} MB)")
    return p, data


def _header_size(data: bytes, Image) -> tuple[int, int] | None:
    """Width and height from the header alone, without Pillow's bomb check and without decoding.

    Used only to word the refusal of an image Pillow already refused as a bomb; it runs the same
    format plugins as ``Image.open`` (header parsing only) and returns None if anything fails.
    """
    for fmt in FORMATS:
        entry = Image.OPEN.get(fmt)
        if entry is None:
            continue
        factory, accept = entry
        try:
            if accept is not None and not accept(data[:16]):
                continue
            im = factory(io.BytesIO(data), None)
            return tuple(im.size)
        except Exception:  # best effort wording only
            continue
    return None


def _too_large(show: str, w: int, h: int) -> ImageError:
    return ImageError(f"image too large: {show} is {w}x{h} pixels (limit {MAX_PIXELS // 1_000_000} MP)")


def _open(data: bytes, show: str):
    """Open (identify, header only) bytes as an image, turning every failure into ImageError."""
    Image, _ = _pil()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=[f for f in FORMATS if f in Image.OPEN])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        size = _header_size(data, Image)
        if size:
            raise _too_large(show, *size) from None
        raise ImageError(f"image too large: {show} (over {MAX_PIXELS // 1_000_000} MP)") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"not an image: {show} (supported: PNG, JPEG, GIF, WebP, AVIF, BMP, TIFF)") from None
    except Exception as e:  # a broken header raises anything (SyntaxError, ValueError...)
        raise ImageError(f"truncated or corrupt image: {show} ({_reason(e)})") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError(f"truncated or corrupt image: {show} (size {w}x{h})")
    if w * h > MAX_PIXELS:
        raise _too_large(show, w, h)
    return im


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 120 else text[:117].rstrip() + "..."


def _decode_first_frame(im, show: str):
    """Fully decode frame 0 (refusing truncated data) and return the frame count."""
    Image, _ = _pil()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            frames = int(getattr(im, "n_frames", 1) or 1)
            if frames > 1:
                im.seek(0)
            im.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(show, *im.size) from None
    except MemoryError:
        raise ImageError(f"image too large: {show} (out of memory while decoding)") from None
    except Exception as e:  # decoders raise OSError, SyntaxError, ValueError, EOFError...
        raise ImageError(f"truncated or corrupt image: {show} ({_reason(e)})") from None
    return frames


def _inspect(path) -> tuple[ImageInfo, bytes]:
    p, data = _read_file(path)
    show = _show(path)
    im = _open(data, show)
    try:
        frames = _decode_first_frame(im, show)
        info = ImageInfo(
            sha256=hashlib.sha256(data).hexdigest(),
            path=p,
            width=im.size[0],
            height=im.size[1],
            format=str(im.format),
            mode=str(im.mode),
            frames=frames,
            size_bytes=len(data),
        )
    finally:
        im.close()
    return info, data


def inspect_image(path) -> ImageInfo:
    """Check that ``path`` is a readable, complete, reasonably sized image; raise ImageError if not.

    Missing / dangling symlink -> "image not found"; directory or special file -> "not a file";
    0 bytes -> "empty file"; over 50 MB -> refused; unidentifiable or unsupported format ->
    "not an image"; header over 40 MP -> "image too large" (before decoding); data that does not
    decode -> "truncated or corrupt image". Animated images are accepted (``frames`` > 1).
    """
    return _inspect(path)[0]


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _private_dir(d: Path) -> None:
    if not d.is_dir():
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)


def _sha256_file(p: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def store_image(path, images_dir) -> ImageInfo:
    """Inspect ``path`` and keep a private copy at ``images_dir/<sha[:2]>/<sha>.<ext>``.

    The copy is content-addressed: storing the same bytes again writes nothing. It is written
    atomically (temporary file in the same directory, fsync, rename), with mode 0600 in
    directories of mode 0700. Returns the ImageInfo with ``path`` set to the stored file.
    """
    info, data = _inspect(path)
    images_dir = Path(images_dir)
    sub = images_dir / info.sha256[:2]
    dest = sub / f"{info.sha256}.{EXTENSIONS.get(info.format, 'img')}"
    try:
        _private_dir(images_dir)
        _private_dir(sub)
        if dest.is_file() and not dest.is_symlink() and _sha256_file(dest) == info.sha256:
            return replace(info, path=dest)
        write_private(dest, data)
        _fsync_dir(sub)
    except OSError as e:
        raise ImageError(f"cannot store image {_show(path)} in {_show(images_dir)}: "
                         f"{e.strerror or e}") from None
    return replace(info, path=dest)


# -- decoding to RGB -------------------------------------------------------------------------------


def _to_rgb(im, Image):
    """Convert any supported mode to 8-bit RGB: 16/32-bit greys scaled (not clipped), CMYK
    converted, transparency composited on white, palettes expanded."""
    import numpy as np

    mode = im.mode
    if mode in ("L", "RGB") and "transparency" in im.info:  # a tRNS colour key
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16"):
            scale = 65535.0
        elif mode == "I":
            # 32-bit integer greys: PNG 16-bit files often come back as "I" holding 0..65535.
            top = float(a.max()) if a.size else 0.0
            scale = 65535.0 if top > 255 or top <= 0 else 255.0
            if top > 65535:
                scale = top
            a = np.clip(a, 0, None)
        else:  # "F": floats, usually 0..1 or 0..255
            top = float(np.nanmax(a)) if a.size else 0.0
            scale = 1.0 if top <= 1.0 else 255.0 if top <= 255 else top
            a = np.nan_to_num(np.clip(a, 0, None))
        g = np.clip(np.rint(a * (255.0 / scale)), 0, 255).astype(np.uint8)
        return Image.fromarray(g, mode="L").convert("RGB")
    if mode in ("1", "L", "CMYK", "YCbCr", "LAB", "HSV"):
        return im.convert("RGB")
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        if not has_alpha:
            return im
        mode = "RGBA"
    if mode in ("LA", "La", "RGBA", "RGBa"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        bg.alpha_composite(rgba)
        return bg.convert("RGB")
    return im.convert("RGB")


def load_rgb(path, max_side: int | None = None) -> _PILImage.Image:
    """The first frame of ``path`` as an 8-bit RGB image, EXIF orientation applied.

    The file passes the same checks as :func:`inspect_image`. With ``max_side`` the image is
    downscaled (never upscaled) so that its longer side is at most ``max_side`` pixels.
    """
    Image, _ = _pil()
    from PIL import ImageOps

    _, data = _read_file(path)
    show = _show(path)
    im = _open(data, show)
    try:
        _decode_first_frame(im, show)
        try:
            frame = ImageOps.exif_transpose(im) or im
        except Exception:  # broken EXIF: keep the pixels as they are
            frame = im
        if "transparency" in im.info and "transparency" not in frame.info:
            frame.info["transparency"] = im.info["transparency"]
        try:
            out = _to_rgb(frame, Image)
        except ValueError:  # e.g. a LAB TIFF: Pillow has no direct conversion
            raise ImageError(f"unsupported colour mode {frame.mode}: {show}") from None
        if out is im:
            out = im.copy()
    except ImageError:
        raise
    except Exception as e:  # decoders raise OSError, SyntaxError, ValueError...: one line
        raise ImageError(f"truncated or corrupt image: {show} ({_reason(e)})") from None
    finally:
        im.close()
    if max_side is not None and max_side > 0 and max(out.size) > max_side:
        w, h = out.size
        s = max_side / max(w, h)
        out = out.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
    out.load()
    return out


def image_to_data_uri(path, max_side: int = 1024) -> str:
    """A ``data:`` URI (JPEG, or PNG for small flat images) of ``path`` downscaled to ``max_side``,
    the form vision chat handlers take images in."""
    im = load_rgb(path, max_side=max_side)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90, optimize=True)
    mime, payload = "image/jpeg", buf.getvalue()
    # Screenshots and drawings: lossless PNG is often both smaller and exact.
    if im.size[0] * im.size[1] <= 1024 * 1024:
        png = io.BytesIO()
        im.save(png, format="PNG", optimize=False)
        if png.tell() <= len(payload):
            mime, payload = "image/png", png.getvalue()
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"
