"""Encoders with the real models: MiniLM int8 ONNX for text, open_clip ViT-B-32 (seeded random
init: no weights ship in any registry package) for images."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagegen as gen

from personavlm_cli.core.errors import ImageError, PersonaError

# -- text: all-MiniLM-L6-v2 ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_encoder():
    from personavlm_cli.adapters.text_encoder import TextEncoder

    return TextEncoder()


def test_text_encoder_identity_and_laziness():
    from personavlm_cli.adapters.text_encoder import TextEncoder

    enc = TextEncoder(threads=1)
    assert enc.model_id == "all-MiniLM-L6-v2-onnx-int8" and enc.dim == 384
    assert enc._session is None  # nothing loaded until the first embed
    empty = enc.embed([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32
    assert enc._session is None


def test_similar_sentences_score_higher(text_encoder):
    v = text_encoder.embed(["I have a dog named Rex", "My pet dog is called Rex", "The stock market fell today"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    same, other = float(v[0] @ v[1]), float(v[0] @ v[2])
    assert same > 0.6 and other < 0.3 and same > other + 0.4, (same, other)


def test_text_vectors_are_unit_and_deterministic(text_encoder):
    texts = ["hello there", "", "a much longer sentence about gardening, tomatoes and the summer rain " * 3]
    a = text_encoder.embed(texts)
    b = text_encoder.embed(texts)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    from personavlm_cli.adapters.text_encoder import TextEncoder

    np.testing.assert_allclose(TextEncoder(threads=1).embed(texts), a, atol=1e-5)


def test_text_batches_match_single_embeddings(text_encoder):
    texts = [f"note {i}: {'the cat sat on the mat' if i % 3 else 'my sister lives in Lisbon and likes jazz'}"
             for i in range(150)]  # more than one internal batch of 64
    batched = text_encoder.embed(texts)
    single = np.vstack([text_encoder.embed([t]) for t in texts[:5] + texts[-5:]])
    assert batched.shape == (150, 384)
    cos = (np.vstack([batched[:5], batched[-5:]]) * single).sum(axis=1)
    assert cos.min() > 0.999


def test_long_text_is_truncated_not_refused(text_encoder):
    v = text_encoder.embed(["word " * 5000])
    assert v.shape == (1, 384) and np.isfinite(v).all()


# -- images: open_clip ViT-B-32 --------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip():
    from personavlm_cli.adapters.image_encoder import ImageEncoder

    # One torch thread: on the shared 2-vCPU development VMs two OpenMP threads ran 5-10x slower
    # than one (see the report in the encoder's docstring); this also exercises ``threads``.
    return ImageEncoder(weights=None, seed=0, threads=1)


@pytest.fixture(scope="module")
def pics(tmp_path_factory):
    d = tmp_path_factory.mktemp("pics")
    base = gen.picture(seed=11, size=(320, 240))
    p = {
        "a": gen.write_png(d / "a.png", seed=11, size=(320, 240)),
        "a_copy": gen.write_png(d / "a_copy.png", seed=11, size=(320, 240)),
        # The same picture, resized and re-encoded as a lower-quality JPEG.
        "a_small_jpeg": gen.write_jpeg(d / "a_small.jpg", image=base.resize((256, 192)), quality=70),
        "b": gen.write_png(d / "b.png", seed=99, size=(320, 240)),
        "c": gen.write_png(d / "c.png", seed=7, size=(320, 240)),
        "cmyk": gen.write_cmyk_jpeg(d / "cmyk.jpg"),
        "gif": gen.write_animated_gif(d / "anim.gif"),
    }
    return p


def test_clip_identity(clip):
    assert clip.model_id == "open_clip:ViT-B-32:random-seed0"
    assert "random" in clip.model_id
    assert clip.has_pretrained is False
    assert clip.dim == 512


def test_same_image_twice_is_identical(clip, pics):
    v = clip.embed_images([pics["a"], pics["a"], pics["a_copy"]])
    assert v.shape == (3, 512) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert float(v[0] @ v[1]) == pytest.approx(1.0, abs=1e-5)
    assert float(v[0] @ v[2]) == pytest.approx(1.0, abs=1e-5)


def test_near_duplicate_scores_above_unrelated(clip, pics):
    v = clip.embed_images([pics["a"], pics["a_small_jpeg"], pics["b"], pics["c"]])
    near = float(v[0] @ v[1])
    unrelated = max(float(v[0] @ v[2]), float(v[0] @ v[3]))
    assert near > unrelated, (near, unrelated)


def test_odd_images_embed(clip, pics):
    v = clip.embed_images([pics["cmyk"], pics["gif"]])
    assert v.shape == (2, 512) and np.isfinite(v).all()


def test_deterministic_across_instances_with_the_same_seed(clip, pics):
    from personavlm_cli.adapters.image_encoder import ImageEncoder

    other = ImageEncoder(weights="none", seed=0)
    assert other.model_id == clip.model_id
    a = clip.embed_images([pics["a"], pics["b"]])
    b = other.embed_images([pics["a"], pics["b"]])
    np.testing.assert_allclose(a, b, atol=1e-5)
    different = ImageEncoder(seed=1)
    assert different.model_id == "open_clip:ViT-B-32:random-seed1"
    assert float(different.embed_images([pics["a"]])[0] @ a[0]) < 0.999


def test_text_embedding_has_the_same_dim(clip):
    t = clip.embed_texts(["a photo of a dog", "a red square"])
    assert t.shape == (2, clip.dim) and t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    assert clip.embed_texts([]).shape == (0, clip.dim)
    assert clip.embed_images([]).shape == (0, clip.dim)


def test_bad_image_raises_image_error(clip, tmp_path):
    bad = gen.write_text_as_png(tmp_path / "x.png")
    with pytest.raises(ImageError, match="not an image"):
        clip.embed_images([bad])


def test_uncached_hub_tag_fails_fast_offline(tmp_path):
    import time

    from personavlm_cli.adapters.image_encoder import ImageEncoder

    t0 = time.perf_counter()
    with pytest.raises(ImageError) as ei:
        ImageEncoder(weights="openai", cache_dir=tmp_path / "empty-cache")
    assert time.perf_counter() - t0 < 20
    assert str(ei.value) == ("CLIP weights 'openai' for ViT-B-32 are not downloaded; run "
                             "`personavlm model pull clip ViT-B-32:openai` or set clip.weights to a local file")


def test_bad_weights_values(tmp_path):
    from personavlm_cli.adapters.image_encoder import ImageEncoder

    with pytest.raises(ImageError, match="unknown CLIP weights 'no-such-tag'"):
        ImageEncoder(weights="no-such-tag")
    with pytest.raises(ImageError, match="CLIP weights file not found"):
        ImageEncoder(weights=str(tmp_path / "missing.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PersonaError) as ei:
        ImageEncoder(weights=str(junk))
    assert "\n" not in str(ei.value) and str(junk) in str(ei.value)


def test_torchvision_workaround_is_in_place():
    from personavlm_cli.adapters import image_encoder

    image_encoder._import_open_clip()
    import torch
    import torchvision

    assert "torchvision" in sys.modules
    # Either torchvision's own ops loaded, or our two schemas stand in for them.
    if not torchvision.extension._has_ops():
        assert image_encoder._TORCHVISION_STUB_LIB is not None
        for name in ("nms", "qnms"):
            assert image_encoder._op_exists(torch, name)
