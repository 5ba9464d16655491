"""`personavlm model pull clip`: real CLIP weights from a hub served by the test, and the images moved into
their space (issue 29, section 1). No network: the hub is ``tests/test_model_pull.FakeHub`` on loopback,
and the checkpoint a tiny open_clip model made here (its architecture and pretrained tag are registered
in open_clip's tables for the test, as a real tag is in open_clip's own).
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests import imagegen
from tests.test_model_pull import FakeHub

ARCH, TAG, REPO = "TinyCLIP-test", "tiny", "someone/tiny-clip"
TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture
def tiny_clip(monkeypatch, tmp_path):
    """A tiny open_clip architecture with a pretrained tag on the hub; its checkpoint (safetensors) bytes."""
    from personavlm_cli.adapters.image_encoder import _import_open_clip

    open_clip = _import_open_clip()
    import torch
    from open_clip import factory, pretrained
    from safetensors.torch import save

    monkeypatch.setitem(factory._MODEL_CONFIGS, ARCH, TINY)
    monkeypatch.setitem(pretrained._PRETRAINED, ARCH, {TAG: pretrained._pcfg(hf_hub=f"{REPO}/")})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)  # not the random init's seed: these are other weights
        model = open_clip.create_model(ARCH)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # the standard cache, here
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


@pytest.fixture
def hub(monkeypatch):
    with FakeHub() as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield h


def configure(home, weights="none"):
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(yaml.safe_dump({"clip": {"model": ARCH, "weights": weights}}))


def add_images(tmp_path, n: int) -> list[str]:
    """``n`` image memories, embedded with the configured (random) weights, as a chat would leave them."""
    from personavlm_cli.cli.common import make_env
    from personavlm_cli.core.memory import now
    from personavlm_cli.core.store import new_memory

    env = make_env(None)
    try:
        store = env.store(write=True)
        memories = []
        for i in range(n):
            info = store.store_image(imagegen.write_png(tmp_path / f"photo{i}.png", seed=i, size=(48, 40)))
            rel = str(info.path.relative_to(store.images_dir))
            memories.append(new_memory("image", f"Image photo{i}.png", now(), image_sha256=info.sha256,
                                       meta={"path": rel, "filename": f"photo{i}.png"}))
        store.add(memories)
        return [m.id for m in memories]
    finally:
        env.close()


def status():
    from personavlm_cli.cli.clip import target_space
    from personavlm_cli.cli.common import make_env
    from personavlm_cli.core import reembed

    env = make_env(None)
    try:
        return reembed.status(env.records(), target_space(env.settings))
    finally:
        env.close()


def test_pull_clip_downloads_sets_the_weights_and_moves_the_images(run, hub, tiny_clip, isolated_home, tmp_path,
                                                                    monkeypatch):
    configure(isolated_home)
    ids = add_images(tmp_path, 3)
    before = run("memory", "search", "a photo of my dog", "--type", "image")
    assert "model pull clip" in before.err and "3 image(s)" in before.err, "says why words cannot find images"
    assert "model pull clip" not in run("memory", "search", "cat").err, "only when images are asked for"
    assert "model pull clip" in run("memory", "search", "my holiday photos").err
    doctor = run("doctor", "--no-load", "--json").json()
    assert "model pull clip" in doctor["text-to-image search"] and "text search off" in doctor["image vectors"]

    hub.add(REPO, "open_clip_model.safetensors", tiny_clip)
    r = run("model", "pull", "clip", f"{ARCH}:{TAG}")
    assert r.code == 0, r.err
    assert f"{REPO}/open_clip_model.safetensors: " in r.err and "checksum verified" in r.err
    assert "Re-embedded 3 images" in r.err
    cfg = yaml.safe_load((isolated_home / "config.yaml").read_text())
    assert cfg["clip"] == {"model": ARCH, "weights": TAG}
    st = status()
    assert st.text_search and not st.needed and st.space == f"open_clip:{ARCH}:{TAG}"

    # Words now reach the images (the floor is for real CLIP; the tiny model's cosines are arbitrary).
    monkeypatch.setattr("personavlm_cli.core.recall.IMAGE_TEXT_FLOOR", -1.0)
    after = run("memory", "search", "a photo of my dog", "--type", "image", "--json")
    assert after.code == 0 and "model pull clip" not in after.err
    hits = after.json()
    assert {h["id"] for h in hits} == set(ids) and all("image_text" in h["signals"] for h in hits)
    doctor = run("doctor", "--no-load", "--json").json()
    assert doctor["image vectors"] == "3 images, text search on"

    # Offline, the weights are found in the cache: a second pull asks no one and moves nothing.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked = len(hub.log)
    again = run("model", "pull", "clip", f"{ARCH}:{TAG}")
    assert again.code == 0, again.err
    assert len(hub.log) == asked and "already downloaded" in again.err


def test_an_interrupted_clip_download_resumes_and_a_wrong_checksum_is_refused(hub, tiny_clip, monkeypatch):
    from personavlm_cli.adapters import downloads

    hub.add(REPO, "open_clip_model.safetensors", tiny_clip)
    remote = downloads.remote_info(REPO, "open_clip_model.safetensors")
    assert remote.size == len(tiny_clip)

    def ctrl_c_at_the_second_piece(phase, done, total):
        if phase == "download" and done >= 2 << 20:
            raise KeyboardInterrupt  # as a Ctrl-C during the transfer (the first piece is on disk)

    monkeypatch.setattr("huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE", 1 << 20)
    with pytest.raises(KeyboardInterrupt):
        downloads.download(remote, progress=ctrl_c_at_the_second_piece)
    kept = downloads.partial_size(remote, None)
    assert 0 < kept < len(tiny_clip), "the part stays for the next run"

    path = downloads.download(remote)
    assert path.read_bytes() == tiny_clip
    ranges = [rng for m, p, rng in hub.log if m == "GET" and p.startswith("/storage/")]
    assert ranges == [None, f"bytes={kept}-"], "the second run asked only for the rest"
    assert downloads.partial_size(remote, None) == 0

    hub.add(REPO, "other.safetensors", tiny_clip)
    hub.wrong_sha.add("other.safetensors")
    with pytest.raises(downloads.DownloadError, match="checksum mismatch"):
        downloads.fetch(REPO, "other.safetensors")
    assert downloads.cached(REPO, "other.safetensors") is None
    assert not list(downloads.storage_folder(REPO, None).rglob("*.part")), "the bad bytes are removed"

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert downloads.fetch(REPO, "open_clip_model.safetensors") == path, "offline: the cache answers"
    with pytest.raises(downloads.DownloadError, match="HF_HUB_OFFLINE"):
        downloads.fetch(REPO, "missing.safetensors")


def test_offline_pull_of_weights_not_in_the_cache_is_one_line(run, tiny_clip, monkeypatch):
    from tests.conftest import assert_one_line_error

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_one_line_error(run("model", "pull", "clip", f"{ARCH}:{TAG}"), "HF_HUB_OFFLINE")
    assert_one_line_error(run("model", "pull", "clip", f"{ARCH}:nonsense"), "unknown CLIP weights")


def test_re_embedding_continues_after_a_kill_without_redoing_what_was_done(hub, tiny_clip, isolated_home, tmp_path,
                                                                          run):
    from personavlm_cli.cli.clip import target_space, write_clip_config
    from personavlm_cli.cli.common import make_env
    from personavlm_cli.core import reembed

    configure(isolated_home)
    ids = add_images(tmp_path, 5)
    hub.add(REPO, "open_clip_model.safetensors", tiny_clip)
    from personavlm_cli.adapters import downloads

    downloads.fetch(REPO, "open_clip_model.safetensors")
    write_clip_config(make_env(None).settings.locations, ARCH, TAG)
    env = make_env(None)
    target = target_space(env.settings)
    store = env.store(write=True)
    embedded = []
    real = store.image_encoder.embed_images

    def dies_after_two_batches(paths):
        if len(embedded) >= 2:
            raise SystemExit("killed")  # nothing after this runs: as a kill between two batches
        embedded.append(list(paths))
        return real(paths)

    store.image_encoder.embed_images = dies_after_two_batches
    with pytest.raises(SystemExit):
        reembed.run(store, target, batch=2)
    env.close()
    st = status()
    assert st.needed and st.moving and st.done == 4 and not st.text_search
    note = run("memory", "search", "a photo", "--type", "image")
    assert "4 of 5 done" in note.err

    env = make_env(None)
    store = env.store(write=True)
    again = []
    real = store.image_encoder.embed_images
    store.image_encoder.embed_images = lambda paths: again.append(list(paths)) or real(paths)
    end = reembed.run(store, target, batch=2)
    env.close()
    assert len(again) == 1 and len(again[0]) == 1, "only the image not done before"
    assert end.text_search and end.space == target and end.done == 0
    found = run("memory", "search", "--image", str(tmp_path / "photo4.png"), "--json").json()
    assert found[0]["id"] == ids[4], "the vectors are the new weights' (the query is embedded with them)"
    assert json.loads(run("doctor", "--no-load", "--json").out)["image vectors"] == "5 images, text search on"


def test_a_chat_moves_the_images_in_its_background_and_logs_the_progress(hub, tiny_clip, isolated_home, tmp_path):
    """What `chat` starts (cli/chat.py): the move on the store's fork, in a thread; progress in the user's log."""
    import threading

    from personavlm_cli.adapters import downloads
    from personavlm_cli.cli.clip import start_background, write_clip_config
    from personavlm_cli.cli.common import log_file, log_to_file, make_env

    configure(isolated_home)
    add_images(tmp_path, 3)
    hub.add(REPO, "open_clip_model.safetensors", tiny_clip)
    downloads.fetch(REPO, "open_clip_model.safetensors")
    write_clip_config(make_env(None).settings.locations, ARCH, TAG)
    env = make_env(None)
    try:
        store = env.store(write=True)
        log_to_file(env)
        thread = start_background(store, env.settings, threading.Event())
        assert thread is not None
        thread.join(120)
        assert start_background(store, env.settings, threading.Event()) is None, "nothing left to move"
        log = log_file(env).read_text()
    finally:
        import logging

        for h in logging.getLogger("personavlm").handlers[:]:
            logging.getLogger("personavlm").removeHandler(h)
            h.close()
        env.close()
    assert "re-embedded 3 of 3 images" in log and "re-embedded 3 images into open_clip:TinyCLIP-test:tiny" in log
    assert status().text_search
