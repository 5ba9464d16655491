"""Real image files for the tests, written with Pillow (a few hand-made byte streams where Pillow
refuses to write something broken). Each ``write_*`` function takes a target path and returns it.
"""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path


def picture(seed: int = 0, size: tuple[int, int] = (320, 240)):
    """A deterministic 'photo': a colour gradient background with random shapes on it."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    w, h = size
    c0 = [rng.randrange(256) for _ in range(3)]
    c1 = [rng.randrange(256) for _ in range(3)]
    grad = Image.linear_gradient("L").resize((w, h))
    im = Image.composite(Image.new("RGB", (w, h), tuple(c1)), Image.new("RGB", (w, h), tuple(c0)), grad)
    d = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = x0 + rng.randrange(10, w // 2), y0 + rng.randrange(10, h // 2)
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            d.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            d.rectangle((x0, y0, x1, y1), fill=colour)
    return im


def _p(path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_png(path, seed: int = 0, size=(320, 240)) -> Path:
    path = _p(path)
    picture(seed, size).save(path, format="PNG")
    return path


def write_jpeg(path, seed: int = 0, size=(320, 240), quality: int = 90, image=None) -> Path:
    path = _p(path)
    (image if image is not None else picture(seed, size)).save(path, format="JPEG", quality=quality)
    return path


def write_solid(path, colour=(200, 30, 30), size=(64, 48), fmt: str = "PNG") -> Path:
    from PIL import Image

    path = _p(path)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


def write_rgba_png(path, size=(64, 48)) -> Path:
    """Left half fully transparent, right half opaque red."""
    from PIL import Image

    path = _p(path)
    im = Image.new("RGBA", size, (0, 0, 0, 0))
    im.paste((255, 0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    im.save(path, format="PNG")
    return path


def write_la_png(path, size=(32, 32)) -> Path:
    """Grey 100 at half opacity: composited on white gives about 177."""
    from PIL import Image

    path = _p(path)
    Image.new("LA", size, (100, 128)).save(path, format="PNG")
    return path


def write_palette_transparent_png(path, size=(32, 32)) -> Path:
    """A palette image whose index 0 (black) is transparent: should come out white."""
    from PIL import Image

    path = _p(path)
    im = Image.new("P", size, 0)
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    im.paste(1, (size[0] // 2, 0, size[0], size[1]))  # right half blue, opaque
    im.save(path, format="PNG", transparency=0)
    return path


def write_cmyk_jpeg(path, size=(64, 48), cmyk=(0, 255, 255, 0)) -> Path:
    """A CMYK JPEG, by default pure red (no cyan, full magenta and yellow)."""
    from PIL import Image

    path = _p(path)
    Image.new("CMYK", size, cmyk).save(path, format="JPEG", quality=95)
    return path


def write_png16(path, value: int = 32768, size=(32, 32)) -> Path:
    """A 16-bit greyscale PNG (Pillow mode I;16), every pixel ``value`` of 65535."""
    from PIL import Image

    path = _p(path)
    Image.new("I;16", size, value).save(path, format="PNG")
    return path


def write_animated_gif(path, size=(40, 30), colours=((255, 0, 0), (0, 255, 0), (0, 0, 255))) -> Path:
    from PIL import Image

    path = _p(path)
    frames = [Image.new("RGB", size, c) for c in colours]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def write_animated_png(path, size=(40, 30), colours=((255, 0, 0), (0, 255, 0))) -> Path:
    from PIL import Image

    path = _p(path)
    frames = [Image.new("RGB", size, c) for c in colours]
    frames[0].save(path, format="PNG", save_all=True, append_images=frames[1:], duration=100)
    return path


def write_exif_rotated_jpeg(path, size=(80, 40), orientation: int = 6) -> Path:
    """A landscape JPEG whose EXIF says 'rotate 90° CW to display': shown as portrait."""
    from PIL import Image

    path = _p(path)
    im = picture(3, size)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, format="JPEG", exif=exif.tobytes())
    return path


def write_truncated_jpeg(path, seed: int = 1, size=(320, 240)) -> Path:
    """A real JPEG cut off half way (no EOI marker, scan data missing)."""
    import io

    path = _p(path)
    buf = io.BytesIO()
    picture(seed, size).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_truncated_png(path, seed: int = 1, size=(320, 240)) -> Path:
    import io

    path = _p(path)
    buf = io.BytesIO()
    picture(seed, size).save(buf, format="PNG")
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_corrupt_png(path, seed: int = 1, size=(320, 240)) -> Path:
    """A full-length PNG whose compressed pixel data is overwritten with garbage."""
    import io

    path = _p(path)
    buf = io.BytesIO()
    picture(seed, size).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    start = data.index(b"IDAT") + 4 + 10
    rng = random.Random(seed)
    for i in range(start, min(start + 400, len(data) - 16)):
        data[i] = rng.randrange(256)
    path.write_bytes(bytes(data))
    return path


def write_empty(path) -> Path:
    path = _p(path)
    path.write_bytes(b"")
    return path


def write_text_as_png(path) -> Path:
    path = _p(path)
    path.write_text("this is not an image, only text with a .png name\n")
    return path


def write_huge_png(path, size=(20000, 20000)) -> Path:
    """A 1-bit PNG of 20000x20000 (400 MP): 50 MB in memory to write, about 50 KB on disk."""
    from PIL import Image

    path = _p(path)
    im = Image.new("1", size, 0)
    im.save(path, format="PNG", optimize=False)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_bomb_png(path, side: int = 100_000) -> Path:
    """A decompression bomb: a file of a few KB whose header promises side x side 8-bit RGB
    pixels (30 GB decoded for the default), with an IDAT stream of compressed zeros."""
    path = _p(path)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * (4 << 20), 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path


def write_text_chunk_bomb_png(path) -> Path:
    """A small, valid-sized PNG carrying a zTXt chunk that inflates to 64 MB."""
    path = _p(path)
    ihdr = struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\0" + b"\x80" * 8 for _ in range(8)))
    ztxt = b"Comment\0\0" + zlib.compress(b"A" * (64 << 20), 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"zTXt", ztxt)
                     + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b""))
    return path


def write_oversized_file(path, size_bytes: int = 51 * 1024 * 1024) -> Path:
    """A PNG signature followed by a sparse hole: over the 50 MB limit, no disk used."""
    path = _p(path)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(size_bytes)
    return path
