"""Bad and unusual images through the real command-line processes: import-folder, then train.

What import-folder does with each kind (the skipped reason names the file, the rest goes on):

| file                           | outcome                                                     |
|--------------------------------|-------------------------------------------------------------|
| an HTML page named .jpg        | skipped: "not an image but an HTML page"                    |
| a 6000x4000 JPEG               | kept (24 Mpx, under the decompression-bomb limit)           |
| an animated GIF / WebP         | kept; decoded as its first frame                            |
| a still WebP                   | kept                                                        |
| a PNG named .jpg               | kept as the PNG it is (the name's extension is not trusted) |
| a PNG header claiming 400 Mpx  | skipped: exceeds the limit (decompression-bomb guard)       |

Training then uses every kept image and warns about none. Decompression bombs: importing the package
leaves Pillow's process-wide guard as Pillow set it, and our limit still applies per image.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from annotate2model.errors import InvalidImage
from annotate2model.imaging import allow_pixels_process_wide, decode_rgb, probe_image
from annotate2model.workspace import Workspace, init_workspace
from tests.conftest import image_bytes
from tests.test_import_folder import huge_png

FIRST_FRAME = (200, 30, 30)
LATER_FRAMES = ((30, 200, 30), (30, 30, 200))
# Pillow's own default, set by Pillow, never by annotate2model.
PILLOW_DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3


def a2m(ws: Workspace, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`a2m args...` as a user runs it: a separate process on the workspace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("A2M_")}
    env["A2M_HOME"] = str(ws.root)
    return subprocess.run(
        [sys.executable, "-m", "annotate2model", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def animated(fmt: str) -> bytes:
    """Three frames of solid colour; the first is FIRST_FRAME."""
    frames = [Image.new("RGB", (64, 48), c) for c in (FIRST_FRAME, *LATER_FRAMES)]
    out = io.BytesIO()
    options = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(
        out, format=fmt, save_all=True, append_images=frames[1:], duration=80, loop=0, **options
    )
    return out.getvalue()


def huge_jpeg(width: int = 6000, height: int = 4000) -> bytes:
    """A photo-sized JPEG with real content (a gradient with a block), 24 Mpx."""
    gradient = Image.linear_gradient("L").resize((width, height))
    img = Image.merge(
        "RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_TOP_BOTTOM), gradient)
    )
    img.paste((250, 250, 0), (width // 3, height // 3, width // 2, height // 2))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=80)
    return out.getvalue()


HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head>"
    b"<body><form action='/login'>Please sign in to see this image.</form></body></html>\n"
)

# relative path -> (format the store records, (width, height)); None: skipped with that reason.
ACCEPTED = {
    "train/ants/huge.jpg": ("JPEG", (6000, 4000)),
    "train/ants/animated.gif": ("GIF", (64, 48)),
    "train/bees/animated.webp": ("WEBP", (64, 48)),
    "train/bees/still.webp": ("WEBP", (64, 48)),
    "val/bees/png_named.jpg": ("PNG", (64, 48)),
}
SKIPPED = {
    "train/ants/page.jpg": "not an image but an HTML page",
    "val/ants/bomb.png": "exceeds the limit",
}


def write_bad_folder(root: Path) -> int:
    """train/ and val/ class folders: plain PNGs plus one file of each kind; returns the count
    of images import-folder should keep."""
    plain = 0
    for split, per_class in (("train", 5), ("val", 3)):
        for k, label in enumerate(("ants", "bees")):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                seed = 1000 * k + 100 * (split == "val") + i
                (folder / f"plain_{i}.png").write_bytes(image_bytes(seed, size=(64, 48)))
                plain += 1
    (root / "train/ants/huge.jpg").write_bytes(huge_jpeg())
    (root / "train/ants/animated.gif").write_bytes(animated("GIF"))
    (root / "train/bees/animated.webp").write_bytes(animated("WEBP"))
    (root / "train/bees/still.webp").write_bytes(image_bytes(77, size=(64, 48), fmt="WEBP"))
    (root / "val/bees/png_named.jpg").write_bytes(image_bytes(78, size=(64, 48), fmt="PNG"))
    (root / "train/ants/page.jpg").write_bytes(HTML_PAGE)
    (root / "val/ants/bomb.png").write_bytes(huge_png(20_000, 20_000))
    return plain + len(ACCEPTED)


@dataclass
class Imported:
    ws: Workspace
    data: Path
    kept: int
    result: dict[str, object]
    stderr: str


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Imported]:
    """One import-folder process over the bad folder, shared by the tests below."""
    root = tmp_path_factory.mktemp("bad-images")
    data = root / "data"
    kept = write_bad_folder(data)
    ws, _ = init_workspace(root / "ws")
    proc = a2m(ws, "import-folder", str(data), "--json")
    assert proc.returncode == 0, proc.stderr
    yield Imported(ws, data, kept, json.loads(proc.stdout), proc.stderr)


def query(ws: Workspace, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(ws.store_path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def test_import_folder_keeps_the_usable_kinds_and_names_the_rest(imported: Imported) -> None:
    result = imported.result
    skipped = {rel: reason for rel, reason in result["skipped"]}  # type: ignore[attr-defined]
    assert set(skipped) == set(SKIPPED)
    for rel, reason in SKIPPED.items():
        assert reason in skipped[rel], (rel, skipped[rel])
        # The warning the user sees names the file and says why.
        shown = " ".join(imported.stderr.split())
        assert f"skipped {rel}: {' '.join(skipped[rel].split())}" in shown, imported.stderr
    assert result["items"] == imported.kept
    assert result["splits_from_folders"] is True

    rows = query(imported.ws, "select origin, format, width, height from images")
    recorded = {
        os.path.relpath(str(origin), imported.data): (fmt, (w, h)) for origin, fmt, w, h in rows
    }
    for rel, expected in ACCEPTED.items():
        assert recorded[rel] == expected, rel
    assert not set(SKIPPED) & set(recorded)
    (count,) = query(imported.ws, "select count(*) from version_items where version = 1")[0]
    assert count == imported.kept


def test_animated_images_decode_as_their_first_frame(imported: Imported) -> None:
    for rel in ("train/ants/animated.gif", "train/bees/animated.webp"):
        img = decode_rgb(imported.data / rel)
        assert img.mode == "RGB" and img.size == (64, 48)
        # GIF palettes may shift a channel by a step or two; the frame is unmistakable.
        pixel = img.getpixel((32, 24))
        assert isinstance(pixel, tuple)
        assert all(abs(a - b) <= 8 for a, b in zip(pixel, FIRST_FRAME, strict=True)), (rel, pixel)


@pytest.mark.slow
@pytest.mark.training
def test_training_uses_every_kept_image(imported: Imported) -> None:
    proc = a2m(
        imported.ws,
        "train",
        "--weights",
        "none",
        "--epochs",
        "1",
        "--backbone",
        "resnet18",
        "--image-size",
        "32",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(proc.stdout)
    assert run["status"] == "succeeded"
    assert "skipped" not in proc.stderr, proc.stderr[-3000:]
    # A prediction for every image of the version: none was dropped on the way into the model.
    predicted = query(
        imported.ws, "select image_sha256, split from predictions where run_id = ?", run["id"]
    )
    in_version = query(
        imported.ws, "select image_sha256, split from version_items where version = ?", 1
    )
    assert sorted(predicted) == sorted(in_version)
    assert len(in_version) == imported.kept


def test_importing_the_package_leaves_pillows_guard_alone() -> None:
    """A web server in the same process relies on Pillow's decompression-bomb guard."""
    code = f"""
import PIL.Image
before = PIL.Image.MAX_IMAGE_PIXELS
import annotate2model, annotate2model.imaging, annotate2model.store, annotate2model.labelstudio
import annotate2model.cli.app, annotate2model.training, annotate2model.training.runs.runner
from annotate2model.imaging import decode_rgb, probe_image
import io
buf = io.BytesIO()
PIL.Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
data = buf.getvalue()
probe_image(data)
decode_rgb(data)
after = PIL.Image.MAX_IMAGE_PIXELS
assert before == after == {PILLOW_DEFAULT_MAX_PIXELS}, (before, after)
print("ok")
"""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_our_limit_rejects_bombs_without_touching_pillows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PILLOW_DEFAULT_MAX_PIXELS)
    bomb = huge_png(20_000, 20_000)  # 400 Mpx in a few bytes
    with pytest.raises(InvalidImage, match=r"400,000,000 pixels exceeds the limit of 178,956,970"):
        probe_image(bomb)
    with pytest.raises(InvalidImage, match="exceeds the limit"):
        decode_rgb(bomb)
    # A stricter workspace limit applies to images Pillow alone would open.
    small = image_bytes(3, size=(200, 100))
    assert probe_image(small).width == 200
    with pytest.raises(InvalidImage, match="20,000 pixels exceeds the limit of 10,000"):
        probe_image(small, max_pixels=10_000)
    with pytest.raises(InvalidImage, match="exceeds the limit of 10,000"):
        decode_rgb(small, max_pixels=10_000)
    # Pillow's own guard is still on for everyone else in the process.
    assert Image.MAX_IMAGE_PIXELS == PILLOW_DEFAULT_MAX_PIXELS
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(bomb))


def test_a_limit_above_pillows_needs_the_process_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    """A workspace may allow more pixels than Pillow does by default; only the process owner (the
    CLI, from the workspace's setting) may raise Pillow's guard, and only upwards."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PILLOW_DEFAULT_MAX_PIXELS)
    big = huge_png(15_000, 15_000)  # 225 Mpx: over Pillow's default, under the raised limit
    with pytest.raises(InvalidImage, match="exceeds Pillow's limit of 178,956,970 pixels"):
        probe_image(big, max_pixels=300_000_000)
    allow_pixels_process_wide(10_000)
    assert Image.MAX_IMAGE_PIXELS == PILLOW_DEFAULT_MAX_PIXELS  # never lowered
    allow_pixels_process_wide(300_000_000)
    assert Image.MAX_IMAGE_PIXELS == 150_000_000
    # Now it opens; this one is only a header, so it fails later, as corrupt.
    with pytest.raises(InvalidImage, match="corrupt or truncated"):
        probe_image(big, max_pixels=300_000_000)
    with pytest.raises(InvalidImage, match="exceeds the limit of 200,000,000"):
        probe_image(big, max_pixels=200_000_000)


def test_cli_raises_pillows_guard_only_when_the_workspace_asks(tmp_path: Path) -> None:
    ws, _ = init_workspace(tmp_path / "ws")
    ws.update_config("images", {"max_pixels": 300_000_000})
    code = """
import PIL.Image
from annotate2model.cli.context import AppState
AppState().settings()
print(PIL.Image.MAX_IMAGE_PIXELS)
"""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("A2M_")}
    raised = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env={**env, "A2M_HOME": str(ws.root)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert raised.returncode == 0, raised.stderr[-2000:]
    assert int(raised.stdout) == 150_000_000
    ws.update_config("images", {"max_pixels": 1_000_000})
    default = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env={**env, "A2M_HOME": str(ws.root)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert int(default.stdout) == PILLOW_DEFAULT_MAX_PIXELS
