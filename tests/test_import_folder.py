"""import-folder on real files: the odd images people have, and the broken ones."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from annotate2model.errors import InputError
from annotate2model.imaging import decode_rgb
from annotate2model.store import Store
from annotate2model.store.imports import import_folder
from annotate2model.store.versions import version_items
from tests.conftest import image_bytes, make_image_folder

pytestmark = pytest.mark.both_dialects


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming absurd dimensions (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def exif_rotated_jpeg() -> bytes:
    """A 40x20 JPEG whose EXIF orientation 6 says: rotate 90 degrees to show it upright (20x40)."""
    img = Image.new("RGB", (40, 20), (200, 30, 30))
    img.paste((30, 30, 200), (0, 0, 10, 20))  # blue band on the left edge before rotation
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif.tobytes(), quality=95)
    return out.getvalue()


def odd_images(root: Path) -> dict[str, str]:
    """Write one file of each troublesome kind; returns {relative path: expected outcome}."""
    good = root / "good"
    bad = root / "bad"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    expected: dict[str, str] = {}

    pal = Image.new("P", (16, 16))
    pal.putpalette([i % 256 for i in range(768)])
    pal.info["transparency"] = 0
    buf = io.BytesIO()
    pal.save(buf, format="GIF")
    (good / "palette.gif").write_bytes(buf.getvalue())
    expected["good/palette.gif"] = "ok"

    buf = io.BytesIO()
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(buf, format="JPEG")
    (good / "cmyk.jpg").write_bytes(buf.getvalue())
    expected["good/cmyk.jpg"] = "ok"

    (good / "rotated.jpg").write_bytes(exif_rotated_jpeg())
    expected["good/rotated.jpg"] = "ok"

    sixteen = Image.fromarray(np.full((10, 12), 40000, dtype=np.uint16))
    buf = io.BytesIO()
    sixteen.save(buf, format="PNG")
    (good / "sixteen.png").write_bytes(buf.getvalue())
    expected["good/sixteen.png"] = "ok"

    (good / "with space ü é.png").write_bytes(image_bytes(7))
    expected["good/with space ü é.png"] = "ok"
    (good / "日本.png").write_bytes(image_bytes(8))
    expected["good/日本.png"] = "ok"

    (bad / "notes.txt").write_text("this is not an image")
    expected["bad/notes.txt"] = "not an image"
    (bad / "empty.jpg").write_bytes(b"")
    expected["bad/empty.jpg"] = "empty file"
    full = io.BytesIO()
    Image.effect_noise((200, 200), 60).convert("RGB").save(full, format="JPEG")
    (bad / "truncated.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    expected["bad/truncated.jpg"] = "truncated"
    (bad / "bomb.png").write_bytes(huge_png(100_000, 100_000))
    expected["bad/bomb.png"] = "exceeds the limit"
    (bad / "fine.png").write_bytes(image_bytes(9))
    expected["bad/fine.png"] = "ok"
    return expected


def test_odd_and_broken_images(store: Store, tmp_path: Path) -> None:
    expected = odd_images(tmp_path / "data")
    result = import_folder(store, tmp_path / "data")
    skipped = dict(result.skipped)
    for rel, outcome in expected.items():
        if outcome == "ok":
            assert rel not in skipped, skipped.get(rel)
        else:
            assert outcome in skipped[rel], (rel, skipped.get(rel))
    assert result.version is not None and result.version.created
    n_ok = sum(1 for o in expected.values() if o == "ok")
    assert result.version.version.item_count == n_ok
    # Every ingested image decodes to upright 8-bit RGB.
    with store.read() as session:
        rows = version_items(session, result.version.version.number)
    sizes = set()
    for row in rows:
        img = decode_rgb(store.blobs.path(row.image_sha256))
        assert img.mode == "RGB"
        sizes.add(img.size)
    assert (20, 40) in sizes  # the EXIF-rotated photo is upright


def test_exif_orientation_applied() -> None:
    img = decode_rgb(exif_rotated_jpeg())
    assert img.size == (20, 40)
    # The blue band that was on the left edge is at the top after a 90-degree turn.
    r, _g, b = img.getpixel((10, 2))  # type: ignore[misc]
    assert b > 150 and r < 100


def test_sixteen_bit_png_keeps_its_brightness() -> None:
    sixteen = Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16))
    buf = io.BytesIO()
    sixteen.save(buf, format="PNG")
    value = decode_rgb(buf.getvalue()).getpixel((0, 0))
    assert value == (156, 156, 156)  # 40000 / 256, not clipped to 255


def test_missing_and_empty_folders(store: Store, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        import_folder(store, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        import_folder(store, tmp_path / "empty")
    (tmp_path / "only_bad" / "x").mkdir(parents=True)
    (tmp_path / "only_bad" / "x" / "a.txt").write_text("nope")
    with pytest.raises(InputError, match="none of the 1 files"):
        import_folder(store, tmp_path / "only_bad")


def test_reimport_is_noop_and_growth_makes_new_version(store: Store, tmp_path: Path) -> None:
    make_image_folder(tmp_path / "d", {"cat": 5, "dog": 5})
    first = import_folder(store, tmp_path / "d")
    again = import_folder(store, tmp_path / "d")
    assert first.version and again.version
    assert again.version.created is False and again.images_new == 0
    # Five cat images change content and three more arrive: 8 new images, 13 in all.
    make_image_folder(tmp_path / "d", {"cat": 8}, seed=3)
    grown = import_folder(store, tmp_path / "d")
    assert grown.version and grown.version.created
    assert grown.version.version.item_count == 13 and grown.images_new == 8


def test_duplicates_and_conflicts(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "d"
    make_image_folder(root, {"cat": 3, "dog": 3})
    (root / "cat" / "copy.png").write_bytes((root / "cat" / "cat_0.png").read_bytes())
    (root / "dog" / "conflict.png").write_bytes((root / "cat" / "cat_1.png").read_bytes())
    result = import_folder(store, root)
    assert result.duplicates == [("cat/copy.png", "cat/cat_0.png")]
    skipped = dict(result.skipped)
    assert "another label" in skipped["cat/cat_1.png"]
    assert "another label" in skipped["dog/conflict.png"]
    assert result.version is not None and result.version.version.item_count == 5


def test_hymenoptera_layout_gives_splits(store: Store, hymenoptera: Path) -> None:
    result = import_folder(store, hymenoptera)
    assert result.splits_from_folders
    assert result.version is not None
    with store.read() as session:
        rows = version_items(session, result.version.version.number)
    assert {r.split for r in rows} == {"train", "val"}
    assert {r.label for r in rows} == {"ants", "bees"}
    assert len(rows) + len(result.skipped) + len(result.duplicates) == result.files_seen
