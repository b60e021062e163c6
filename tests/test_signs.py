"""The generated street-sign data set: deterministic, both classes, real varied JPEGs."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from annotate2model.demo.signs import SIGN_CLASSES, draw_sign, sign_bytes, write_sign_images


def test_the_same_seed_draws_the_same_images_and_another_seed_others(tmp_path: Path) -> None:
    first = write_sign_images(tmp_path / "a", per_class=6, seed=3)
    again = write_sign_images(tmp_path / "b", per_class=6, seed=3)
    other = write_sign_images(tmp_path / "c", per_class=6, seed=4)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert {p.read_bytes() for p in first}.isdisjoint({p.read_bytes() for p in other})
    assert sorted({p.parent.name for p in first}) == sorted(SIGN_CLASSES)
    # A second batch continues the numbering and adds new images.
    more = write_sign_images(tmp_path / "a", per_class=6, seed=3, start=6)
    assert {p.name for p in more}.isdisjoint({p.name for p in first})
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in first + more}) == 24


def test_images_are_real_varied_jpegs() -> None:
    images = [
        Image.open(io.BytesIO(sign_bytes(label, 0, i))) for label in SIGN_CLASSES for i in range(10)
    ]
    assert all(img.format == "JPEG" and img.size == (160, 160) for img in images)
    arrays = [np.asarray(img.convert("RGB"), dtype=np.float32) for img in images]
    # No two alike, and each has structure (not a flat colour).
    assert min(a.std() for a in arrays) > 10
    assert min(np.abs(a - b).mean() for i, a in enumerate(arrays) for b in arrays[i + 1 :]) > 5


def test_stop_signs_are_red_and_the_class_is_checked() -> None:
    rng = random.Random(0)
    reds = []
    for label in ("stop", "not_stop"):
        share = []
        for _ in range(20):
            a = np.asarray(draw_sign(label, rng), dtype=np.int16)
            red = (a[..., 0] > 150) & (a[..., 1] < 90) & (a[..., 2] < 90)
            share.append(red.mean())
        reds.append(float(np.mean(share)))
    assert reds[0] > 2 * reds[1]
    with pytest.raises(ValueError):
        draw_sign("cat", rng)
