"""Image files: every bad and odd case through inspect_image / store_image / load_rgb, with real
files written by Pillow (tests/imagegen.py)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagegen as gen

from personavlm_cli.adapters import images
from personavlm_cli.adapters.images import ImageInfo, image_to_data_uri, inspect_image, load_rgb, store_image
from personavlm_cli.core.errors import ImageError, PersonaError


def refused(path, *, store_in=None) -> str:
    """The one-line ImageError message for ``path``; fails the test if it is accepted."""
    with pytest.raises(ImageError) as ei:
        if store_in is None:
            inspect_image(path)
        else:
            store_image(path, store_in)
    msg = str(ei.value)
    assert isinstance(ei.value, PersonaError)
    assert "\n" not in msg and "\r" not in msg, msg
    assert str(path) in msg, msg
    return msg


# -- refused files ---------------------------------------------------------------------------------

BAD = [
    ("missing", lambda d: d / "nope.png", "image not found: "),
    ("directory", lambda d: (d / "adir.png").mkdir() or d / "adir.png", "not a file: "),
    ("empty", lambda d: gen.write_empty(d / "empty.png"), "empty file: "),
    ("text named .png", lambda d: gen.write_text_as_png(d / "notes.png"), "not an image: "),
    ("truncated jpeg", lambda d: gen.write_truncated_jpeg(d / "cut.jpg"), "truncated or corrupt image: "),
    ("truncated png", lambda d: gen.write_truncated_png(d / "cut.png"), "truncated or corrupt image: "),
    ("corrupt png data", lambda d: gen.write_corrupt_png(d / "bad.png"), "truncated or corrupt image: "),
    ("20000x20000", lambda d: gen.write_huge_png(d / "huge.png"), "image too large: "),
    ("bomb header", lambda d: gen.write_bomb_png(d / "bomb.png"), "image too large: "),
    ("zTXt bomb", lambda d: gen.write_text_chunk_bomb_png(d / "ztxt.png"), "truncated or corrupt image: "),
    ("over 50 MB", lambda d: gen.write_oversized_file(d / "big.png"), "image file too large: "),
]


@pytest.mark.parametrize("maker,prefix", [(m, p) for _, m, p in BAD], ids=[n for n, _, _ in BAD])
def test_bad_files_are_refused_with_one_line_naming_the_path(tmp_path, maker, prefix):
    path = maker(tmp_path)
    msg = refused(path)
    assert msg.startswith(prefix + str(path)), msg


@pytest.mark.parametrize("maker,prefix", [(m, p) for _, m, p in BAD], ids=[n for n, _, _ in BAD])
def test_bad_files_are_not_stored(tmp_path, maker, prefix):
    path = maker(tmp_path)
    store = tmp_path / "store"
    msg = refused(path, store_in=store)
    assert msg.startswith(prefix)
    assert not store.exists() or not any(p.is_file() for p in store.rglob("*"))


def test_huge_png_is_refused_by_its_header_with_its_size(tmp_path):
    path = gen.write_huge_png(tmp_path / "huge.png")
    assert path.stat().st_size < 1_000_000  # a real bomb: tiny file, 400 MP
    msg = refused(path)
    assert msg == f"image too large: {path} is 20000x20000 pixels (limit 40 MP)"


def test_bomb_is_refused_before_decoding(tmp_path):
    path = gen.write_bomb_png(tmp_path / "bomb.png", side=100_000)
    assert refused(path) == f"image too large: {path} is 100000x100000 pixels (limit 40 MP)"
    with pytest.raises(ImageError, match="image too large"):
        load_rgb(path)


def test_just_over_the_pixel_limit_is_refused(tmp_path):
    # 6400x6400 = 40.96 MP: above our 40 MP limit but below twice Pillow's threshold.
    path = gen.write_huge_png(tmp_path / "over.png", size=(6400, 6400))
    assert refused(path) == f"image too large: {path} is 6400x6400 pixels (limit 40 MP)"


def test_symlinks(tmp_path):
    target = gen.write_png(tmp_path / "real.png")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    info = inspect_image(link)
    assert info.format == "PNG" and info.sha256 == hashlib.sha256(target.read_bytes()).hexdigest()
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(tmp_path / "gone.png")
    assert refused(dangling).startswith(f"image not found: {dangling}")
    to_dir = tmp_path / "dirlink.png"
    (tmp_path / "d").mkdir()
    to_dir.symlink_to(tmp_path / "d")
    assert refused(to_dir).startswith(f"not a file: {to_dir}")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_not_a_file_and_does_not_block(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert refused(fifo).startswith(f"not a file: {fifo}")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads everything")
def test_unreadable_file(tmp_path):
    path = gen.write_png(tmp_path / "secret.png")
    path.chmod(0)
    try:
        assert refused(path).startswith(f"cannot read image: {path}")
    finally:
        path.chmod(0o600)


def test_path_with_newline_stays_one_line(tmp_path):
    path = tmp_path / "two\nlines.png"  # shown escaped (repr), so not verbatim: no refused() here
    with pytest.raises(ImageError) as ei:
        inspect_image(path)
    assert "\n" not in str(ei.value) and "two\\nlines.png" in str(ei.value)


# -- odd but valid files ---------------------------------------------------------------------------


def test_plain_png_and_jpeg(tmp_path):
    png = gen.write_png(tmp_path / "a.png", size=(320, 240))
    jpg = gen.write_jpeg(tmp_path / "a.jpg", size=(320, 240))
    for p, fmt in ((png, "PNG"), (jpg, "JPEG")):
        info = inspect_image(p)
        assert isinstance(info, ImageInfo)
        assert (info.format, info.mode, info.width, info.height, info.frames) == (fmt, "RGB", 320, 240, 1)
        assert info.size_bytes == p.stat().st_size
        assert info.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
        assert info.path == p
        im = load_rgb(p)
        assert im.mode == "RGB" and im.size == (320, 240)


def close(px, want, tol=6):
    return all(abs(a - b) <= tol for a, b in zip(px, want)), (px, want)


def test_cmyk_jpeg_is_converted(tmp_path):
    path = gen.write_cmyk_jpeg(tmp_path / "cmyk.jpg", cmyk=(0, 255, 255, 0))
    info = inspect_image(path)
    assert (info.format, info.mode) == ("JPEG", "CMYK")
    im = load_rgb(path)
    assert im.mode == "RGB"
    ok, why = close(im.getpixel((10, 10)), (255, 0, 0), tol=12)
    assert ok, why


@pytest.mark.parametrize("value", [0, 32768, 65535, 1000])
def test_16bit_grey_is_scaled_not_clipped(tmp_path, value):
    path = gen.write_png16(tmp_path / f"g{value}.png", value=value)
    info = inspect_image(path)
    assert info.mode.startswith("I")  # "I;16" (or "I" on older Pillow)
    im = load_rgb(path)
    assert im.mode == "RGB"
    expect = round(value * 255 / 65535)
    ok, why = close(im.getpixel((5, 5)), (expect,) * 3, tol=1)
    assert ok, why


def test_mid_grey_16bit_comes_out_mid_grey(tmp_path):
    im = load_rgb(gen.write_png16(tmp_path / "mid.png", value=32768))
    assert im.getpixel((0, 0)) in ((128, 128, 128), (127, 127, 127))


def test_rgba_is_composited_on_white(tmp_path):
    path = gen.write_rgba_png(tmp_path / "rgba.png", size=(64, 48))
    assert inspect_image(path).mode == "RGBA"
    im = load_rgb(path)
    assert im.mode == "RGB"
    assert im.getpixel((5, 20)) == (255, 255, 255)  # transparent -> white, not black
    assert im.getpixel((60, 20)) == (255, 0, 0)


def test_la_and_transparent_palette(tmp_path):
    la = load_rgb(gen.write_la_png(tmp_path / "la.png"))
    ok, why = close(la.getpixel((3, 3)), (177, 177, 177), tol=2)  # 100 at alpha 128 over white
    assert ok, why
    pal = tmp_path / "pal.png"
    gen.write_palette_transparent_png(pal, size=(32, 32))
    assert inspect_image(pal).mode == "P"
    im = load_rgb(pal)
    assert im.getpixel((2, 2)) == (255, 255, 255) and im.getpixel((30, 2)) == (0, 0, 255)


def test_animated_gif_first_frame(tmp_path):
    path = gen.write_animated_gif(tmp_path / "anim.gif", colours=((255, 0, 0), (0, 255, 0), (0, 0, 255)))
    info = inspect_image(path)
    assert (info.format, info.frames) == ("GIF", 3)
    im = load_rgb(path)
    assert im.mode == "RGB" and im.getpixel((3, 3)) == (255, 0, 0)


def test_animated_png_first_frame(tmp_path):
    path = gen.write_animated_png(tmp_path / "anim.png", colours=((255, 0, 0), (0, 255, 0)))
    info = inspect_image(path)
    assert (info.format, info.frames) == ("PNG", 2)
    assert load_rgb(path).getpixel((3, 3)) == (255, 0, 0)


def test_exif_orientation_applied(tmp_path):
    path = gen.write_exif_rotated_jpeg(tmp_path / "rot.jpg", size=(80, 40), orientation=6)
    info = inspect_image(path)
    assert (info.width, info.height) == (80, 40)  # as stored
    assert load_rgb(path).size == (40, 80)  # as displayed


def test_load_rgb_downscales_only(tmp_path):
    path = gen.write_png(tmp_path / "p.png", size=(400, 200))
    assert load_rgb(path, max_side=100).size == (100, 50)
    assert load_rgb(path, max_side=1000).size == (400, 200)


def test_other_formats(tmp_path):
    from PIL import Image

    for fmt, ext in (("WEBP", "webp"), ("BMP", "bmp"), ("TIFF", "tif")):
        p = tmp_path / f"x.{ext}"
        Image.new("RGB", (20, 10), (10, 200, 30)).save(p, format=fmt)
        info = inspect_image(p)
        assert info.format == fmt
        ok, why = close(load_rgb(p).getpixel((5, 5)), (10, 200, 30), tol=8)
        assert ok, why


def test_formats_outside_the_allow_list_are_not_images(tmp_path):
    from PIL import Image

    p = tmp_path / "x.pcx"
    Image.new("RGB", (20, 10)).save(p, format="PCX")
    assert refused(p).startswith(f"not an image: {p}")


# -- storage ---------------------------------------------------------------------------------------


def test_store_is_content_addressed_private_and_idempotent(tmp_path):
    src = gen.write_jpeg(tmp_path / "photo.jpg", seed=5)
    store = tmp_path / "user" / "images"
    info = store_image(src, store)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    assert info.sha256 == sha
    assert info.path == store / sha[:2] / f"{sha}.jpg"
    assert info.path.read_bytes() == src.read_bytes()
    assert hashlib.sha256(info.path.read_bytes()).hexdigest() == sha
    assert stat.S_IMODE(info.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    assert stat.S_IMODE(info.path.parent.stat().st_mode) == 0o700
    assert (info.width, info.height, info.format) == (320, 240, "JPEG")

    before = info.path.stat()
    again = store_image(src, store)
    assert again == info
    after = info.path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not copied again

    # The same bytes under another name land on the same file; no temporary files are left.
    copy = tmp_path / "elsewhere" / "renamed.jpeg"
    copy.parent.mkdir()
    copy.write_bytes(src.read_bytes())
    assert store_image(copy, store).path == info.path
    assert sorted(p.name for p in store.rglob("*") if p.is_file()) == [info.path.name]


def test_store_repairs_a_damaged_copy(tmp_path):
    src = gen.write_png(tmp_path / "p.png")
    store = tmp_path / "images"
    info = store_image(src, store)
    info.path.write_bytes(b"garbage")
    again = store_image(src, store)
    assert again.path.read_bytes() == src.read_bytes()
    assert stat.S_IMODE(again.path.stat().st_mode) == 0o600


def test_store_extensions_follow_the_format_not_the_name(tmp_path):
    src = gen.write_png(tmp_path / "looks_like.jpg")
    info = store_image(src, tmp_path / "images")
    assert info.format == "PNG" and info.path.suffix == ".png"
    gif = store_image(gen.write_animated_gif(tmp_path / "a.gif"), tmp_path / "images")
    assert gif.path.suffix == ".gif" and gif.frames == 3


def test_store_odd_images(tmp_path):
    store = tmp_path / "images"
    for p in (gen.write_cmyk_jpeg(tmp_path / "c.jpg"), gen.write_png16(tmp_path / "g.png"),
              gen.write_rgba_png(tmp_path / "r.png")):
        info = store_image(p, store)
        assert info.path.is_file() and load_rgb(info.path).mode == "RGB"


# -- data URIs -------------------------------------------------------------------------------------


def test_data_uri_roundtrip_and_downscale(tmp_path):
    from PIL import Image

    path = gen.write_jpeg(tmp_path / "wide.jpg", size=(2000, 1000))
    uri = image_to_data_uri(path, max_side=1024)
    head, b64 = uri.split(",", 1)
    assert head in ("data:image/jpeg;base64", "data:image/png;base64")
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert im.size == (1024, 512)
    small = image_to_data_uri(gen.write_rgba_png(tmp_path / "t.png"))
    im2 = Image.open(io.BytesIO(base64.b64decode(small.split(",", 1)[1])))
    assert im2.mode == "RGB" and im2.size == (64, 48)
    with pytest.raises(ImageError, match="empty file"):
        image_to_data_uri(gen.write_empty(tmp_path / "e.png"))


# -- cheap import ----------------------------------------------------------------------------------


def test_importing_the_adapters_loads_no_heavy_library():
    code = ("import sys; import personavlm_cli.adapters.images, personavlm_cli.adapters.text_encoder, "
            "personavlm_cli.adapters.image_encoder; "
            "print(','.join(m for m in ('PIL', 'numpy', 'torch', 'onnxruntime', 'tokenizers', 'open_clip', "
            "'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == ""


def test_limits_are_what_the_messages_say():
    assert images.MAX_PIXELS == 40_000_000
    assert images.MAX_FILE_BYTES == 50 * 1024 * 1024
