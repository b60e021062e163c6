"""Reading image bytes safely: identify, guard against decompression bombs, decode to RGB.

Shared by the store (which validates what it ingests) and training (which decodes for the model).
Every odd image the tool meets (palette GIF, CMYK JPEG, 16-bit PNG, EXIF-rotated photo, animated
GIF or WebP: its first frame) comes out of `decode_rgb` as an upright 8-bit RGB image; everything
unusable raises `InvalidImage`. Every image the package opens is opened here (`_open`).

Decompression bombs: Pillow refuses to open an image of more than twice `PIL.Image.MAX_IMAGE_PIXELS`
pixels and warns above it. That setting is process-wide and other code in the process (a web
server) relies on it, so this module never changes it; our own limit (`max_pixels`, the workspace's
[images] max_pixels) is applied to each image as it is opened, on top of Pillow's.

Pillow is imported when an image is first opened, not with this module: a command that opens
none (a no-change `a2m sync`) does not load it.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from annotate2model.errors import InvalidImage
from annotate2model.settings import DEFAULT_MAX_IMAGE_PIXELS

# Twice Pillow's default MAX_IMAGE_PIXELS: the size at which Pillow itself refuses an image.
DEFAULT_MAX_PIXELS = DEFAULT_MAX_IMAGE_PIXELS

if TYPE_CHECKING:
    from PIL import Image


def pillow_pixel_limit() -> int | None:
    """The most pixels Pillow opens in this process (None when its guard is switched off)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * limit


def allow_pixels_process_wide(max_pixels: int) -> None:
    """Raise Pillow's process-wide guard so that images up to `max_pixels` open; never lowers it.

    Only for the owner of the process (the command-line tool, configured to accept larger images
    than Pillow's default); the library never calls it.
    """
    from PIL import Image

    current = Image.MAX_IMAGE_PIXELS
    if current is not None and max_pixels > 2 * current:
        Image.MAX_IMAGE_PIXELS = (max_pixels + 1) // 2


def _too_many_pixels(pixels: int | None, max_pixels: int) -> InvalidImage:
    pillow = pillow_pixel_limit()
    count = f"{pixels:,} pixels" if pixels is not None else "its pixel count"
    if pillow is not None and pillow < max_pixels:
        return InvalidImage(
            f"{count} exceeds Pillow's limit of {pillow:,} pixels in this process "
            "(decompression-bomb guard, PIL.Image.MAX_IMAGE_PIXELS)"
        )
    return InvalidImage(
        f"{count} exceeds the limit of {max_pixels:,} (decompression-bomb guard; raise "
        "[images] max_pixels to allow it)"
    )


def _bomb(exc: Image.DecompressionBombError, max_pixels: int) -> InvalidImage:
    # Pillow's message: "Image size (N pixels) exceeds limit of M pixels, could be ...".
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return _too_many_pixels(int(found.group(1)) if found else None, max_pixels)


@dataclass(frozen=True)
class ImageInfo:
    """What the store keeps about an image: format and upright size after EXIF orientation."""

    format: str
    width: int
    height: int
    mode: str


def _looks_like_html(source: bytes | Path) -> bool:
    if isinstance(source, bytes):
        head = source[:512]
    else:
        try:
            with source.open("rb") as f:
                head = f.read(512)
        except OSError:
            return False
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))


def _open(source: bytes | Path, max_pixels: int) -> Image.Image:
    """Open (lazily: only the header is read) and refuse images over `max_pixels` pixels."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, bytes):
        if not source:
            raise InvalidImage("empty file (0 bytes)")
        fp: io.BytesIO | Path = io.BytesIO(source)
    else:
        fp = source
    try:
        with warnings.catch_warnings():
            # Pillow's warnings (a large image under its limit, odd EXIF) are not the user's
            # concern: the checks below decide.
            warnings.simplefilter("ignore")
            img = Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise _bomb(exc, max_pixels) from None
    except UnidentifiedImageError:
        if _looks_like_html(source):
            # What a web server answers in place of an image: a login, error or redirect page.
            raise InvalidImage("not an image but an HTML page") from None
        raise InvalidImage("not an image Pillow can read") from None
    except FileNotFoundError:
        raise InvalidImage("file not found") from None
    except OSError as exc:
        raise InvalidImage(f"cannot open: {exc}") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        img.close()
        raise _too_many_pixels(width * height, max_pixels)
    return img


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    orientation = img.getexif().get(0x0112, 1)
    width, height = img.size
    # Orientations 5-8 rotate by 90 degrees, swapping width and height.
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def probe_image(source: bytes | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Identify and fully decode the image (catching truncation); InvalidImage says why not."""
    from PIL import Image

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
    except Image.DecompressionBombError as exc:
        # A frame or tile larger than the image's header said (GIF, TIFF).
        raise _bomb(exc, max_pixels) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"corrupt or truncated image data ({exc})") from None
    finally:
        img.close()
    return ImageInfo(format=fmt, width=width, height=height, mode=mode)


def decoded_size(
    source: bytes | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """The (width, height) that `decode_rgb(source, max_pixels, draft_size)` decodes to, read
    from the header alone: a JPEG's reduced size, any other format's full size (before EXIF
    rotation). What a caller with a memory budget checks before paying for the decode."""
    img = _open(source, max_pixels)
    try:
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", draft_size)
        width, height = img.size
        return width, height
    finally:
        img.close()


def decode_rgb(
    source: bytes | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode to an upright 8-bit RGB image.

    `draft_size` lets JPEG decoding scale down by powers of two while staying at least that size
    (much faster when the model only needs 224 px).
    """
    from PIL import Image, ImageOps

    img = _open(source, max_pixels)
    try:
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", draft_size)
        img = ImageOps.exif_transpose(img) or img
        return to_rgb(img)
    except Image.DecompressionBombError as exc:
        raise _bomb(exc, max_pixels) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"corrupt or truncated image data ({exc})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, scaling 16-bit data instead of clipping it."""
    from PIL import Image

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
