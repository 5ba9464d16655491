"""`bench --only clip`: CLIP time per image."""

from __future__ import annotations

import random
import time
from pathlib import Path

from personavlm_cli.evals.bench.common import Host, ms


def bench_clip(host: Host, path: Path, images: int) -> dict:
    path.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(images + 1):
        files.append(_picture(path / f"p{i}.png", i))
    t = time.perf_counter()
    encoder = host.image_encoder()
    load_s = time.perf_counter() - t
    encoder.embed_images([files[0]])  # warm-up
    times = []
    for f in files[1:]:
        t = time.perf_counter()
        encoder.embed_images([f])
        times.append(time.perf_counter() - t)
    return {"model": encoder.model_id, "load_s": round(load_s, 1), "per_image": ms(times)}


def _picture(path: Path, seed: int) -> Path:
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    im = Image.new("RGB", (640, 480), tuple(rng.randrange(256) for _ in range(3)))
    d = ImageDraw.Draw(im)
    for _ in range(20):
        x, y = rng.randrange(640), rng.randrange(480)
        d.ellipse((x, y, x + rng.randrange(20, 200), y + rng.randrange(20, 200)),
                  fill=tuple(rng.randrange(256) for _ in range(3)))
    im.save(path, format="PNG")
    return path
