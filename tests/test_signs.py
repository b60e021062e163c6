"""The generated street-sign data set: deterministic, both classes, real varied JPEGs."""

from __future__ import annotations

import hashlib
import io
import random

import numpy as np
import pytest
from PIL import Image

from annotate2model.demo.signs import SIGN_CLASSES, draw_sign, sign_bytes


def test_the_same_seed_draws_the_same_images_and_another_seed_others() -> None:
    first = [sign_bytes(label, 3, i) for label in SIGN_CLASSES for i in range(6)]
    again = [sign_bytes(label, 3, i) for label in SIGN_CLASSES for i in range(6)]
    other = [sign_bytes(label, 4, i) for label in SIGN_CLASSES for i in range(6)]
    assert first == again
    assert set(first).isdisjoint(other)
    # Further indexes draw new images.
    more = [sign_bytes(label, 3, i) for label in SIGN_CLASSES for i in range(6, 12)]
    assert len({hashlib.sha256(b).hexdigest() for b in first + more}) == 24


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
