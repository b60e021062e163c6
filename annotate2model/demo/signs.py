"""A generated street-sign data set (stop / not_stop), drawn with Pillow: no download needed.

Stop signs are red octagons with a white rim and lettering. The other class holds what a stop-sign
detector must not take for one: red round "no entry" and "no parking" signs, yield triangles,
speed limits, yellow warning diamonds, blue mandatory signs, green street names. Signs vary in
size, position, rotation and colour; backgrounds are sky, foliage, brick or street-like noise; a
post, blur, JPEG artefacts and occluders (branches, a lamp post, a sticker) make the task real.
Every image is a pure function of (seed, class, index): the same call draws the same pixels.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIGN_CLASSES = ("not_stop", "stop")
Colour = tuple[int, int, int]

_RED = (196, 30, 36)
_WHITE = (245, 245, 240)


def _jitter(colour: Colour, rng: random.Random, amount: int = 18) -> Colour:
    r, g, b = (max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)
    return (r, g, b)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _text(
    draw: ImageDraw.ImageDraw, centre: tuple[float, float], text: str, size: int, fill: Colour
) -> None:
    draw.text(centre, text, font=_font(max(6, size)), fill=fill, anchor="mm")


def _polygon(cx: float, cy: float, r: float, sides: int, turn: float) -> list[tuple[float, float]]:
    return [
        (
            cx + r * math.cos(turn + 2 * math.pi * k / sides),
            cy + r * math.sin(turn + 2 * math.pi * k / sides),
        )
        for k in range(sides)
    ]


# Background painters: each fills the whole canvas.


def _sky(img: Image.Image, rng: random.Random) -> None:
    draw = ImageDraw.Draw(img)
    top = _jitter((110, 160, 225), rng, 30)
    bottom = _jitter((200, 215, 235), rng, 20)
    w, h = img.size
    for y in range(h):
        t = y / max(1, h - 1)
        draw.line(
            (0, y, w, y),
            fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)),
        )
    for _ in range(rng.randint(0, 3)):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h * 0.6), rng.uniform(w * 0.08, w * 0.25)
        draw.ellipse(
            (cx - r, cy - r * 0.5, cx + r, cy + r * 0.5), fill=_jitter((240, 240, 245), rng)
        )


def _foliage(img: Image.Image, rng: random.Random) -> None:
    draw = ImageDraw.Draw(img)
    w, h = img.size
    draw.rectangle((0, 0, w, h), fill=_jitter((60, 110, 50), rng, 25))
    for _ in range(220):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2, w * 0.06)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_jitter((50, 120, 45), rng, 40))


def _brick(img: Image.Image, rng: random.Random) -> None:
    draw = ImageDraw.Draw(img)
    w, h = img.size
    mortar = _jitter((190, 185, 175), rng)
    draw.rectangle((0, 0, w, h), fill=mortar)
    bh = rng.randint(8, 16)
    bw = bh * 2 + rng.randint(0, 10)
    base = rng.choice([(150, 70, 50), (120, 110, 100), (170, 140, 110)])
    for row, y in enumerate(range(0, h, bh)):
        offset = (bw // 2) * (row % 2)
        for x in range(-offset, w, bw):
            draw.rectangle((x + 1, y + 1, x + bw - 2, y + bh - 2), fill=_jitter(base, rng, 20))


def _street(img: Image.Image, rng: random.Random) -> None:
    draw = ImageDraw.Draw(img)
    w, h = img.size
    horizon = rng.uniform(0.35, 0.6) * h
    draw.rectangle((0, 0, w, horizon), fill=_jitter((150, 170, 190), rng, 30))
    draw.rectangle((0, horizon, w, h), fill=_jitter((90, 90, 95), rng, 20))
    for _ in range(rng.randint(2, 5)):  # buildings, cars: big blocks of any colour
        x0, x1 = sorted((rng.uniform(0, w), rng.uniform(0, w)))
        y0 = rng.uniform(0, horizon)
        colour = (rng.randrange(40, 230), rng.randrange(40, 230), rng.randrange(40, 230))
        draw.rectangle((x0, y0, x1, horizon + rng.uniform(0, h * 0.2)), fill=colour)
    draw.line((0, h * 0.85, w, h * 0.8), fill=(230, 230, 230), width=2)


_BACKGROUNDS: list[Callable[[Image.Image, random.Random], None]] = [_sky, _foliage, _brick, _street]

# Sign painters draw on a transparent square tile of side `s`, centred.


def _stop(draw: ImageDraw.ImageDraw, s: int, rng: random.Random) -> None:
    c = s / 2
    draw.polygon(_polygon(c, c, s * 0.49, 8, math.pi / 8), fill=_WHITE)
    draw.polygon(_polygon(c, c, s * 0.44, 8, math.pi / 8), fill=_jitter(_RED, rng))
    word = rng.choice(["STOP", "STOP", "STOP", "ARRET", "ALTO"])
    _text(draw, (c, c), word, round(s * (0.26 if len(word) == 4 else 0.2)), _WHITE)


def _no_entry(draw: ImageDraw.ImageDraw, s: int, rng: random.Random) -> None:
    c = s / 2
    draw.ellipse((s * 0.02, s * 0.02, s * 0.98, s * 0.98), fill=_jitter(_RED, rng))
    draw.rectangle((s * 0.18, c - s * 0.08, s * 0.82, c + s * 0.08), fill=_WHITE)


def _no_parking(draw: ImageDraw.ImageDraw, s: int, rng: random.Random) -> None:
    draw.ellipse((s * 0.02, s * 0.02, s * 0.98, s * 0.98), fill=_jitter(_RED, rng))
    draw.ellipse((s * 0.14, s * 0.14, s * 0.86, s * 0.86), fill=_jitter((30, 80, 170), rng))
    draw.line(
        (s * 0.25, s * 0.25, s * 0.75, s * 0.75),
        fill=_jitter(_RED, rng),
        width=max(2, round(s * 0.1)),
    )


def _speed(draw: ImageDraw.ImageDraw, s: int, rng: random.Random) -> None:
    c = s / 2
    draw.ellipse((s * 0.02, s * 0.02, s * 0.98, s * 0.98), fill=_jitter(_RED, rng))
    draw.ellipse((s * 0.13, s * 0.13, s * 0.87, s * 0.87), fill=_WHITE)
    _text(draw, (c, c), str(rng.choice([20, 30, 50, 60, 70, 90])), round(s * 0.34), (20, 20, 20))


def _yield(draw: ImageDraw.ImageDraw, s: int, rng: random.Random) -> None:
    outer = [(s * 0.02, s * 0.1), (s * 0.98, s * 0.1), (s * 0.5, s * 0.94)]
    inner = [(s * 0.2, s * 0.2), (s * 0.8, s * 0.2), (s * 0.5, s * 0.74)]
    draw.polygon(outer, fill=_jitter(_RED, rng))
    draw.polygon(inner, fill=_WHITE)


def _warning(draw: ImageDraw.ImageDraw, s: int, rng: random.Random) -> None:
    c = s / 2
    draw.polygon(_polygon(c, c, s * 0.49, 4, 0), fill=(20, 20, 20))
    draw.polygon(_polygon(c, c, s * 0.44, 4, 0), fill=_jitter((240, 190, 20), rng))
    _text(draw, (c, c), rng.choice(["!", "X", "~"]), round(s * 0.4), (20, 20, 20))


def _mandatory(draw: ImageDraw.ImageDraw, s: int, rng: random.Random) -> None:
    c = s / 2
    draw.ellipse((s * 0.02, s * 0.02, s * 0.98, s * 0.98), fill=_jitter((30, 80, 170), rng))
    draw.polygon(
        [
            (c, s * 0.2),
            (s * 0.72, c),
            (s * 0.58, c),
            (s * 0.58, s * 0.8),
            (s * 0.42, s * 0.8),
            (s * 0.42, c),
            (s * 0.28, c),
        ],
        fill=_WHITE,
    )


def _street_name(draw: ImageDraw.ImageDraw, s: int, rng: random.Random) -> None:
    c = s / 2
    colour = rng.choice([(20, 110, 60), (30, 80, 170), (240, 240, 240)])
    ink = _WHITE if colour != (240, 240, 240) else (20, 20, 20)
    draw.rectangle((s * 0.02, s * 0.32, s * 0.98, s * 0.68), fill=_jitter(colour, rng))
    _text(draw, (c, c), rng.choice(["MAIN ST", "ELM AV", "OAK RD", "PARK"]), round(s * 0.14), ink)


def _red_octagon_decoy(draw: ImageDraw.ImageDraw, s: int, rng: random.Random) -> None:
    """An octagon in another colour: shape alone does not make a stop sign."""
    c = s / 2
    colour = rng.choice([(30, 80, 170), (20, 110, 60), (240, 190, 20)])
    draw.polygon(_polygon(c, c, s * 0.49, 8, math.pi / 8), fill=_WHITE)
    draw.polygon(_polygon(c, c, s * 0.44, 8, math.pi / 8), fill=_jitter(colour, rng))


# Red round and triangular signs are the hard cases; they are a third of the other class.
_RED_OTHERS = [_no_entry, _no_parking, _speed, _yield]
_PLAIN_OTHERS = [_warning, _mandatory, _street_name, _red_octagon_decoy]


def _occlude(img: Image.Image, rng: random.Random, box: tuple[float, float, float, float]) -> None:
    """Something in front of part of the sign: a branch, a post or a sticker."""
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    kind = rng.choice(["branch", "post", "sticker"])
    if kind == "branch":
        y = rng.uniform(y0, y1)
        draw.line(
            (x0 - 10, y, x1 + 10, y + rng.uniform(-20, 20)),
            fill=_jitter((70, 50, 30), rng),
            width=rng.randint(3, 7),
        )
        for _ in range(8):
            lx, ly, r = rng.uniform(x0, x1), y + rng.uniform(-12, 12), rng.uniform(3, 8)
            draw.ellipse((lx - r, ly - r, lx + r, ly + r), fill=_jitter((50, 120, 45), rng, 30))
    elif kind == "post":
        x = rng.uniform(x0, x1)
        draw.rectangle((x, 0, x + rng.uniform(5, 12), img.height), fill=_jitter((80, 80, 85), rng))
    else:
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        r = (x1 - x0) * rng.uniform(0.08, 0.18)
        draw.rectangle(
            (x - r, y - r, x + r, y + r),
            fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)),
        )


@dataclass(frozen=True)
class Style:
    """How hard the images are: the share of red signs among the others, the sign's size as a
    share of the image, how often something hides part of it, and the strongest blur."""

    red_others: float = 1 / 3
    scale: tuple[float, float] = (0.4, 0.75)
    occlusion: float = 0.35
    blur: float = 1.4


# The default: red round and triangular signs are a third of the other class.
HARD = Style()
# The demo's: other signs in other colours (as a first data set from a street would mostly be),
# signs a little larger, less often hidden. Every image still differs in background, size,
# rotation, lighting, blur and JPEG quality.
EASY = Style(red_others=0.0, scale=(0.5, 0.8), occlusion=0.2, blur=1.0)


def draw_sign(label: str, rng: random.Random, size: int = 160, style: Style = HARD) -> Image.Image:
    """One photo-like image of a sign of class `label` ("stop" or "not_stop")."""
    if label not in SIGN_CLASSES:
        raise ValueError(f"unknown sign class {label!r}")
    img = Image.new("RGB", (size, size))
    rng.choice(_BACKGROUNDS)(img, rng)
    side = round(size * rng.uniform(*style.scale))
    tile = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    if label == "stop":
        painter = _stop
    else:
        painter = rng.choice(_RED_OTHERS if rng.random() < style.red_others else _PLAIN_OTHERS)
    painter(ImageDraw.Draw(tile), side, rng)
    tile = tile.rotate(rng.uniform(-20, 20), resample=Image.Resampling.BICUBIC, expand=True)
    # Perspective of a sign seen from the side: squeeze one axis a little.
    squeeze = rng.uniform(0.75, 1.0)
    tile = tile.resize((max(1, round(tile.width * squeeze)), tile.height), Image.Resampling.BICUBIC)
    x = rng.randint(0, max(0, size - tile.width))
    y = rng.randint(0, max(0, size - tile.height))
    draw = ImageDraw.Draw(img)
    post_x = x + tile.width / 2
    draw.rectangle((post_x - 2, y + tile.height / 2, post_x + 2, size), fill=(110, 110, 115))
    img.paste(tile, (x, y), tile)
    if rng.random() < style.occlusion:
        _occlude(img, rng, (x, y, x + tile.width, y + tile.height))
    # Lighting: a global brightness and colour cast, then camera blur and noise via JPEG.
    factor = rng.uniform(0.7, 1.2)
    cast = [rng.uniform(0.9, 1.1) for _ in range(3)]
    img = Image.merge(
        "RGB",
        [
            band.point(lambda v, k=k: max(0, min(255, round(v * factor * k))))
            for band, k in zip(img.split(), cast, strict=True)
        ],
    )
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, style.blur)))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=rng.randint(60, 92))
    out.seek(0)
    return Image.open(out).convert("RGB")


def sign_bytes(label: str, seed: int, index: int, size: int = 160, style: Style = HARD) -> bytes:
    """The JPEG of image `index` of class `label` for `seed` (deterministic)."""
    img = draw_sign(label, random.Random(f"signs-{seed}-{label}-{index}"), size, style)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()
