"""The demo's embedded data: a small generated image-classification set, no download needed.

Three visually distinct classes (circles, squares, stripes) drawn with random colours, positions
and noise, written as an ImageFolder tree. Deterministic for a given seed.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

DEMO_CLASSES = ("circles", "squares", "stripes")


def draw_example(label: str, rng: random.Random, size: int = 96) -> Image.Image:
    background = tuple(rng.randrange(120, 256) for _ in range(3))
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    ink = tuple(rng.randrange(0, 110) for _ in range(3))
    for _ in range(rng.randint(1, 3)):
        r = rng.randint(size // 8, size // 3)
        x, y = rng.randint(r, size - r), rng.randint(r, size - r)
        if label == "circles":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=ink)
        elif label == "squares":
            draw.rectangle((x - r, y - r, x + r, y + r), fill=ink)
        else:
            step = rng.randint(6, 14)
            for offset in range(0, size, step * 2):
                draw.rectangle((offset, 0, offset + step, size), fill=ink)
            break
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.2)))


def write_demo_images(root: Path, per_class: int, seed: int = 0, start: int = 0) -> Path:
    """Write `per_class` images of each class under root/<class>/ (files start..start+per_class)."""
    for k, label in enumerate(DEMO_CLASSES):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            rng = random.Random(f"{seed}-{label}-{i}-{k}")
            draw_example(label, rng).save(folder / f"{label}_{i:04d}.png")
    return root
