"""A photo-sized image set for benchmarks at the scale users work at, made from the shared photos.

    .venv/bin/python bench/photos.py [--photos 2000] [--out DIR]

No larger real set is at hand, so each photo is a random crop of one shared photo (hymenoptera's
ants and bees, scenes_1200's six scenes), flipped at random, colour-jittered and resized to a
photo size (500x375 to 800x600, a quarter of them portrait), saved as JPEG. Its class is the source
photo's class; a source photo's variants all land in the same split (train/ or val/, about 4:1 by
the source's file name), so val never holds a variant of a training photo. Seeded and deterministic;
written once into a cache folder (by default /tmp/a2m-bench-photos-N) and reused while its marker
file says it is complete and made by this recipe.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import tempfile
from pathlib import Path

from _shared import HYMENOPTERA, SCENES_1200, require
from PIL import Image, ImageEnhance, ImageOps

# Bump when the recipe changes: a cached set made by another recipe is made again.
RECIPE = 1
MARKER = "photos.json"
SUFFIXES = (".jpg", ".jpeg", ".png")
# Widths of the generated photos (height = 3/4 of it, or 4/3 for portraits).
WIDTHS = (500, 800)


def default_folder(n: int) -> Path:
    return Path(tempfile.gettempdir()) / f"a2m-bench-photos-{n}"


def sources() -> list[tuple[str, Path]]:
    """(class, path) of every shared photo, sorted: hymenoptera (both splits, without its GIF
    placeholder) and scenes_1200."""
    found: list[tuple[str, Path]] = []
    for split in ("train", "val"):
        root = require(HYMENOPTERA, "hymenoptera") / split
        found += [(p.parent.name, p) for p in root.glob("*/*") if p.suffix.lower() in SUFFIXES]
    root = require(SCENES_1200, "scenes_1200")
    found += [(p.parent.name, p) for p in root.glob("*/*") if p.suffix.lower() in SUFFIXES]
    return sorted(found, key=lambda cp: (cp[0], str(cp[1])))


def split_of(path: Path) -> str:
    """train or val by the source's file name (about 4:1): fixed per source photo."""
    return "val" if hashlib.sha256(path.name.encode()).digest()[0] < 256 // 5 else "train"


def variant(source: Image.Image, rng: random.Random) -> Image.Image:
    """A random crop (40-100% of the area, aspect 3:4 to 4:3), a flip half the time, brightness,
    contrast and saturation jitter (0.7-1.3) and a photo size."""
    w, h = source.size
    area = rng.uniform(0.4, 1.0) * w * h
    aspect = rng.uniform(3 / 4, 4 / 3)
    cw = max(16, min(w, round((area * aspect) ** 0.5)))
    ch = max(16, min(h, round((area / aspect) ** 0.5)))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    image = source.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(rng.uniform(0.7, 1.3))
    width = rng.randint(*WIDTHS)
    size = (width, width * 3 // 4)
    if rng.random() < 0.25:
        size = (size[1], size[0])
    return image.resize(size, Image.Resampling.BICUBIC)


def photo_set(n: int, folder: Path | None = None, seed: int = 0) -> Path:
    """The folder of `n` generated photos (train/<class>/, val/<class>/), made if missing."""
    folder = folder or default_folder(n)
    wanted = {"recipe": RECIPE, "photos": n, "seed": seed}
    marker = folder / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return folder
    # Shuffled once, so that the sources used twice (n above their count) are any classes'.
    pool = sources()
    random.Random(seed).shuffle(pool)
    # Written beside the target and renamed at the end: a killed run leaves no partial set.
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    for i in range(n):
        label, path = pool[i % len(pool)]
        rng = random.Random(f"{seed}:{i}")
        out = partial / split_of(path) / label / f"{i:05d}-{path.stem}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as opened:
            variant(opened.convert("RGB"), rng).save(out, "JPEG", quality=90)
    (partial / MARKER).write_text(json.dumps(wanted))
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None, help="default /tmp/a2m-bench-photos-N")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(photo_set(args.photos, args.out, args.seed))


if __name__ == "__main__":
    main()
