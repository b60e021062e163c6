"""Reading image bytes safely: identify, guard against decompression bombs, decode to RGB.

Shared by the store (which validates what it ingests) and training (which decodes for the model).
Every odd image the tool meets (palette GIF, CMYK JPEG, 16-bit PNG, EXIF-rotated photo) comes out
of `decode_rgb` as an upright 8-bit RGB image; everything unusable raises `InvalidImage`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from annotate2model.errors import InvalidImage

DEFAULT_MAX_PIXELS = 178_956_970

# Image.open is lazy and cheap; the bomb guard below is ours, so Pillow's global one is disabled
# (it would otherwise only warn under its own limit).
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class ImageInfo:
    """What the store keeps about an image: format and upright size after EXIF orientation."""

    format: str
    width: int
    height: int
    mode: str


def _open(source: bytes | Path, max_pixels: int) -> Image.Image:
    if isinstance(source, bytes):
        if not source:
            raise InvalidImage("empty file (0 bytes)")
        fp: io.BytesIO | Path = io.BytesIO(source)
    else:
        fp = source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(fp)
    except UnidentifiedImageError:
        raise InvalidImage("not an image Pillow can read") from None
    except FileNotFoundError:
        raise InvalidImage("file not found") from None
    except OSError as exc:
        raise InvalidImage(f"cannot open: {exc}") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise InvalidImage(
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "(decompression-bomb guard; raise [images] max_pixels to allow it)"
        )
    return img


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    orientation = img.getexif().get(0x0112, 1)
    width, height = img.size
    # Orientations 5-8 rotate by 90 degrees, swapping width and height.
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def probe_image(source: bytes | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Identify and fully decode the image (catching truncation); InvalidImage says why not."""
    img = _open(source, max_pixels)
    try:
        fmt = img.format or "unknown"
        mode = img.mode
        width, height = _oriented_size(img)
        if fmt == "JPEG":
            # DCT-domain downscaling still reads every byte (so truncation is caught) at a
            # fraction of the cost of a full decode.
            img.draft(mode, (max(1, img.width // 8), max(1, img.height // 8)))
        img.load()
    except InvalidImage:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"corrupt or truncated image data ({exc})") from None
    finally:
        img.close()
    return ImageInfo(format=fmt, width=width, height=height, mode=mode)


def decode_rgb(
    source: bytes | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode to an upright 8-bit RGB image.

    `draft_size` lets JPEG decoding scale down by powers of two while staying at least that size
    (much faster when the model only needs 224 px).
    """
    img = _open(source, max_pixels)
    try:
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", draft_size)
        img = ImageOps.exif_transpose(img) or img
        return to_rgb(img)
    except InvalidImage:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"corrupt or truncated image data ({exc})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, scaling 16-bit data instead of clipping it."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: map the full 16-bit range onto 0..255.
        img = img.convert("I").point(lambda v: v / 256).convert("L")
    elif img.mode == "P" or img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")
