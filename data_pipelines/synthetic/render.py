"""Rendering of synthetic scenes with Pillow: backgrounds, textured class shapes, eyes, hands.

Each class is drawn so that its shape touches all four sides of its box (the box is the full
object extent). Every object has a main part filled with its colour and texture (through a mask)
and details in fixed colours (legs, wheels, trunk, eye). Animate classes get an eye and a
nose/beak on the side they face, which is the image evidence for "looking at" and
"facing away from"; a held item gets a skin-coloured hand drawn over it ("holding").
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

SKIN = (224, 172, 140)
DARK = (45, 40, 40)
PANTS = (50, 55, 90)
TRUNK = (110, 72, 40)
LEAF = (40, 130, 40)
GLASS = (170, 210, 235)
SCREEN = (30, 50, 90)
WHITE = (250, 250, 250)
BLACK = (15, 15, 15)
BEAK = (245, 150, 30)


@dataclasses.dataclass
class DrawItem:
    """What the renderer needs about one object, in draw order (back to front)."""

    cls: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 (x2/y2 exclusive)
    rgb: tuple[int, int, int]
    texture: str
    facing: int  # +1 right, -1 left, 0 none
    hand: tuple[int, int, int] | None = None  # (x, y, radius): draw a hand over this object


def shade(rgb: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    """A darker (f < 1) or lighter (f > 1, towards white) version of a colour."""
    if f <= 1:
        return tuple(int(c * f) for c in rgb)  # type: ignore[return-value]
    return tuple(int(c + (255 - c) * (f - 1)) for c in rgb)  # type: ignore[return-value]


def texture_pattern(rgb: tuple[int, int, int], texture: str, w: int, h: int,
                    period: int) -> np.ndarray:
    """[h, w, 3] uint8 fill: the colour with a stripe/dot/checker pattern in a second shade."""
    fill = np.empty((h, w, 3), np.uint8)
    fill[:] = rgb
    if texture == "solid":
        return fill
    second = shade(rgb, 0.55) if sum(rgb) > 200 else shade(rgb, 1.6)
    y = np.arange(h)[:, None]
    x = np.arange(w)[None, :]
    if texture == "stripes":
        m = (y // period) % 2 == 1
        m = np.broadcast_to(m, (h, w))
    elif texture == "vstripes":
        m = np.broadcast_to((x // period) % 2 == 1, (h, w))
    elif texture == "dots":
        m = ((y % (2 * period)) < period) & ((x % (2 * period)) < period) & \
            (((y // (2 * period)) + (x // (2 * period))) % 2 == 0)
    elif texture == "checker":
        m = ((y // period) + (x // period)) % 2 == 1
    else:
        raise ValueError(f"unknown texture {texture!r}")
    fill[m] = second
    return fill


def eye_point(cls: str, box: tuple[int, int, int, int], facing: int) -> tuple[float, float]:
    """Image position of an animate object's eye (used by "looking at")."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    fx = {"bird": 0.72, "cat": 0.85, "dog": 0.84}.get(cls, 0.5)
    fy = {"bird": 0.17, "cat": 0.33, "dog": 0.2}.get(cls, 0.5)
    if cls == "person":
        d = min(0.6 * w, 0.28 * h)
        fy = 0.45 * d / max(h, 1)
        fx = 0.5 + 0.22 * d / max(w, 1)
    if facing < 0:
        fx = 1.0 - fx
    return x1 + fx * w, y1 + fy * h


# A shape function draws into (mask_draw, w, h, facing) the main part; a detail function draws
# on the image in global coordinates: (draw, box, facing, rgb).
ShapeFn = Callable[[ImageDraw.ImageDraw, int, int, int], None]
DetailFn = Callable[[ImageDraw.ImageDraw, tuple[int, int, int, int], int, tuple], None]


def _mx(x: float, w: int, facing: int) -> float:
    """x for a shape designed facing right, mirrored when facing left."""
    return x if facing >= 0 else (w - 1) - x


def _poly(w: int, facing: int, pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(_mx(x, w, facing), y) for x, y in pts]


def _ell(w: int, facing: int, x0: float, y0: float, x1: float, y1: float) -> list[float]:
    a, b = _mx(x0, w, facing), _mx(x1, w, facing)
    return [min(a, b), y0, max(a, b), y1]


def _full_ellipse(d: ImageDraw.ImageDraw, w: int, h: int, f: int) -> None:
    d.ellipse([0, 0, w - 1, h - 1], fill=255)


def _full_rect(d: ImageDraw.ImageDraw, w: int, h: int, f: int) -> None:
    d.rectangle([0, 0, w - 1, h - 1], fill=255)


def _legs(g: ImageDraw.ImageDraw, box: tuple[int, int, int, int], rgb: tuple[int, int, int],
          xs: tuple[float, ...], top: float, width: float, dark: float) -> None:
    """Straight legs (bench, chair, table): from `top` (fraction of the height) down to the
    box's bottom, `width` (fraction of the width) wide, at fractions `xs` of the width, in a
    darker shade of the object's colour."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    lw = max(1, int(width * w))
    for fx in xs:
        g.rectangle([x1 + int(fx * w), y1 + int(top * h), x1 + int(fx * w) + lw, y2 - 1],
                    fill=shade(rgb, dark))


def _bench(d, w, h, f):
    d.rectangle([0, 0, w - 1, int(0.45 * h)], fill=255)


def _bench_d(g, b, f, rgb):
    _legs(g, b, rgb, (0.06, 0.87), top=0.45, width=0.07, dark=0.5)


def _bicycle(d, w, h, f):
    lw = max(1, w // 14)
    r = min(0.23 * w, 0.33 * h)
    cl, cr = (r, h - 1 - r), (w - 1 - r, h - 1 - r)
    seat, bar = (_mx(0.4 * w, w, f), 0.22 * h), (_mx(0.72 * w, w, f), 0.08 * h)
    for a, b in ((cl, seat), (seat, cr), (seat, bar), (bar, cr if f >= 0 else cl)):
        d.line([a, b], fill=255, width=lw)
    d.line([(_mx(0.64 * w, w, f), 0), (_mx(0.82 * w, w, f), 0)], fill=255, width=lw + 1)


def _bicycle_d(g, b, f, rgb):
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    r = min(0.23 * w, 0.33 * h)
    lw = max(1, w // 16)
    g.ellipse([x1, y2 - 1 - 2 * r, x1 + 2 * r, y2 - 1], outline=DARK, width=lw)
    g.ellipse([x2 - 1 - 2 * r, y2 - 1 - 2 * r, x2 - 1, y2 - 1], outline=DARK, width=lw)


def _bird(d, w, h, f):
    d.ellipse(_ell(w, f, 0, 0.32 * h, 0.8 * w, h - 1), fill=255)
    d.ellipse(_ell(w, f, 0.5 * w, 0, 0.88 * w, 0.5 * h), fill=255)
    d.polygon(_poly(w, f, [(0.0, 0.3 * h), (0.2 * w, 0.5 * h), (0.05 * w, 0.6 * h)]), fill=255)


def _eye(g, cx, cy, r):
    cx, cy = int(round(cx)), int(round(cy))  # the pupil's centre pixel is the eye point
    g.ellipse([cx - r - 1, cy - r - 1, cx + r + 1, cy + r + 1], fill=WHITE)
    pr = max(1.0, 0.6 * r)
    g.ellipse([cx - pr, cy - pr, cx + pr, cy + pr], fill=BLACK)


def _bird_d(g, b, f, rgb):
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    pts = _poly(w, f, [(0.86 * w, 0.15 * h), (w - 1, 0.26 * h), (0.86 * w, 0.36 * h)])
    g.polygon([(x1 + x, y1 + y) for x, y in pts], fill=BEAK)
    ex, ey = eye_point("bird", b, f)
    _eye(g, ex, ey, max(1.0, 0.06 * w))


def _book_d(g, b, f, rgb):
    x1, y1, x2, y2 = b
    h = y2 - y1
    g.rectangle([x1, y2 - 1 - max(1, int(0.2 * h)), x2 - 1, y2 - 1], fill=WHITE)


def _bottle(d, w, h, f):
    d.rectangle([0, int(0.38 * h), w - 1, h - 1], fill=255)
    d.rectangle([int(0.3 * w), 0, int(0.7 * w), int(0.4 * h)], fill=255)


def _bottle_d(g, b, f, rgb):
    x1, y1, x2, y2 = b
    h = y2 - y1
    g.rectangle([x1, y1 + int(0.6 * h), x2 - 1, y1 + int(0.74 * h)], fill=WHITE)


def _bowl(d, w, h, f):
    d.pieslice([0, -h + int(0.3 * h), w - 1, h - 1], 0, 180, fill=255)
    d.ellipse([0, 0, w - 1, int(0.6 * h)], fill=255)


def _bowl_d(g, b, f, rgb):
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    g.ellipse([x1 + max(1, w // 12), y1 + 1, x2 - 1 - max(1, w // 12), y1 + int(0.5 * h)],
              fill=shade(rgb, 0.45))


def _box_d(g, b, f, rgb):
    x1, y1, x2, y2 = b
    h = y2 - y1
    g.rectangle([x1, y1, x2 - 1, y2 - 1], outline=shade(rgb, 0.45), width=max(1, h // 20))
    g.line([(x1, y1 + int(0.22 * h)), (x2 - 1, y1 + int(0.22 * h))], fill=shade(rgb, 0.45),
           width=max(1, h // 24))


def _building_d(g, b, f, rgb):
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    g.rectangle([x1, y1, x2 - 1, y1 + max(2, h // 14)], fill=shade(rgb, 0.4))
    dw = max(2, w // 6)
    g.rectangle([x1 + w // 2 - dw // 2, y2 - 1 - int(0.2 * h), x1 + w // 2 + dw // 2, y2 - 1],
                fill=DARK)


def _car(d, w, h, f):
    d.rectangle([0, int(0.36 * h), w - 1, int(0.8 * h)], fill=255)
    d.polygon(_poly(w, f, [(0.18 * w, 0.38 * h), (0.3 * w, 0), (0.66 * w, 0),
                           (0.8 * w, 0.38 * h)]), fill=255)


def _car_d(g, b, f, rgb):
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    pts = _poly(w, f, [(0.26 * w, 0.34 * h), (0.34 * w, 0.08 * h), (0.62 * w, 0.08 * h),
                       (0.72 * w, 0.34 * h)])
    g.polygon([(x1 + x, y1 + y) for x, y in pts], fill=GLASS)
    r = 0.2 * h
    for fx in (0.22, 0.78):
        cx = x1 + fx * w
        g.ellipse([cx - r, y2 - 1 - 2 * r, cx + r, y2 - 1], fill=DARK)


def _cat(d, w, h, f):
    d.ellipse(_ell(w, f, 0, 0.38 * h, 0.8 * w, h - 1), fill=255)
    d.ellipse(_ell(w, f, 0.56 * w, 0.12 * h, w - 1, 0.62 * h), fill=255)
    d.polygon(_poly(w, f, [(0.58 * w, 0.28 * h), (0.64 * w, 0), (0.76 * w, 0.18 * h)]), fill=255)
    d.polygon(_poly(w, f, [(0.8 * w, 0.18 * h), (0.92 * w, 0), (0.98 * w, 0.3 * h)]), fill=255)
    d.line([(_mx(0.05 * w, w, f), 0.7 * h), (_mx(0, w, f), 0.3 * h)], fill=255,
           width=max(1, w // 14))


def _cat_d(g, b, f, rgb):
    ex, ey = eye_point("cat", b, f)
    _eye(g, ex, ey, max(1.0, 0.05 * (b[2] - b[0])))


def _chair(d, w, h, f):
    d.rectangle([0, 0, w - 1, int(0.25 * h)], fill=255)


def _chair_d(g, b, f, rgb):
    _legs(g, b, rgb, (0.04, 0.86), top=0.25, width=0.1, dark=0.55)


def _cup(d, w, h, f):
    d.rectangle([0, 0, int(0.74 * w), h - 1], fill=255)
    d.ellipse([int(0.5 * w), int(0.2 * h), w - 1, int(0.75 * h)], outline=255,
              width=max(1, w // 8))


def _desk(d, w, h, f):
    d.rectangle([0, 0, w - 1, int(0.2 * h)], fill=255)
    d.rectangle([int(0.62 * w), int(0.2 * h), w - 1, h - 1], fill=255)


def _desk_d(g, b, f, rgb):
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    g.rectangle([x1 + int(0.03 * w), y1 + int(0.2 * h), x1 + int(0.09 * w), y2 - 1],
                fill=shade(rgb, 0.5))
    for fy in (0.4, 0.7):
        g.line([(x1 + int(0.62 * w), y1 + int(fy * h)), (x2 - 1, y1 + int(fy * h))],
               fill=shade(rgb, 0.5), width=max(1, h // 30))


def _dog(d, w, h, f):
    d.ellipse(_ell(w, f, 0.04 * w, 0.3 * h, 0.8 * w, 0.78 * h), fill=255)
    d.ellipse(_ell(w, f, 0.6 * w, 0, w - 1, 0.5 * h), fill=255)
    d.line([(_mx(0.08 * w, w, f), 0.45 * h), (_mx(0, w, f), 0.15 * h)], fill=255,
           width=max(1, w // 16))


def _dog_d(g, b, f, rgb):
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    lw = max(1, int(0.07 * w))
    for fx in (0.14, 0.3, 0.56, 0.7):
        x = x1 + _mx(fx * w, w, f)
        g.rectangle([x - lw / 2, y1 + int(0.65 * h), x + lw / 2, y2 - 1], fill=shade(rgb, 0.6))
    ear = _poly(w, f, [(0.64 * w, 0.08 * h), (0.72 * w, 0.08 * h), (0.7 * w, 0.42 * h)])
    g.polygon([(x1 + x, y1 + y) for x, y in ear], fill=shade(rgb, 0.5))
    ex, ey = eye_point("dog", b, f)
    _eye(g, ex, ey, max(1.0, 0.04 * w))
    nx = x1 + _mx(0.97 * w, w, f)
    g.ellipse([nx - 0.03 * w, y1 + 0.26 * h, nx + 0.03 * w, y1 + 0.33 * h], fill=BLACK)


def _flower(d, w, h, f):
    d.ellipse([0, 0, w - 1, w - 1], fill=255)


def _flower_d(g, b, f, rgb):
    x1, y1, x2, y2 = b
    w = x2 - x1
    g.line([(x1 + w / 2, y1 + w), (x1 + w / 2, y2 - 1)], fill=LEAF, width=max(1, w // 6))
    g.ellipse([x1 + 0.32 * w, y1 + 0.32 * w, x1 + 0.68 * w, y1 + 0.68 * w], fill=(240, 200, 40))


def _hat(d, w, h, f):
    d.rectangle([0, int(0.72 * h), w - 1, h - 1], fill=255)
    d.rectangle([int(0.2 * w), 0, int(0.8 * w), int(0.8 * h)], fill=255)


def _hat_d(g, b, f, rgb):
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    g.rectangle([x1 + int(0.2 * w), y1 + int(0.5 * h), x1 + int(0.8 * w), y1 + int(0.62 * h)],
                fill=shade(rgb, 0.5))


def _kite(d, w, h, f):
    d.polygon([(w / 2, 0), (w - 1, 0.38 * h), (w / 2, h - 1), (0, 0.38 * h)], fill=255)


def _kite_d(g, b, f, rgb):
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    c = shade(rgb, 0.45)
    g.line([(x1 + w / 2, y1), (x1 + w / 2, y2 - 1)], fill=c, width=1)
    g.line([(x1, y1 + 0.38 * h), (x2 - 1, y1 + 0.38 * h)], fill=c, width=1)


def _lamp(d, w, h, f):
    d.polygon([(0.22 * w, 0), (0.78 * w, 0), (w - 1, 0.42 * h), (0, 0.42 * h)], fill=255)


def _lamp_d(g, b, f, rgb):
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    g.line([(x1 + w / 2, y1 + 0.42 * h), (x1 + w / 2, y2 - 1)], fill=DARK, width=max(1, w // 10))
    g.rectangle([x1 + int(0.2 * w), y2 - 1 - max(1, int(0.08 * h)), x1 + int(0.8 * w), y2 - 1],
                fill=DARK)


def _laptop(d, w, h, f):
    d.rectangle([int(0.08 * w), 0, int(0.92 * w), int(0.8 * h)], fill=255)
    d.rectangle([0, int(0.8 * h), w - 1, h - 1], fill=255)


def _laptop_d(g, b, f, rgb):
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    g.rectangle([x1 + int(0.16 * w), y1 + int(0.1 * h), x1 + int(0.84 * w), y1 + int(0.7 * h)],
                fill=SCREEN)


def _person(d, w, h, f):
    dd = min(0.6 * w, 0.28 * h)
    d.rectangle([0, int(dd), w - 1, int(0.62 * h)], fill=255)


def _person_d(g, b, f, rgb):
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    dd = min(0.6 * w, 0.28 * h)
    cx = x1 + w / 2
    g.rectangle([x1 + int(0.1 * w), y1 + int(0.62 * h), x1 + int(0.45 * w), y2 - 1], fill=PANTS)
    g.rectangle([x1 + int(0.55 * w), y1 + int(0.62 * h), x1 + int(0.9 * w), y2 - 1], fill=PANTS)
    g.ellipse([cx - dd / 2, y1, cx + dd / 2, y1 + dd], fill=SKIN)
    # nose on the facing side
    nx = cx + f * dd / 2
    g.polygon([(nx, y1 + 0.45 * dd), (nx + f * 0.22 * dd, y1 + 0.62 * dd), (nx, y1 + 0.75 * dd)],
              fill=SKIN)
    ex, ey = eye_point("person", b, f)
    _eye(g, ex, ey, max(1.0, 0.1 * dd))


def _plate_d(g, b, f, rgb):
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    g.ellipse([x1 + 0.18 * w, y1 + 0.2 * h, x2 - 1 - 0.18 * w, y2 - 1 - 0.2 * h],
              outline=shade(rgb, 0.7), width=1)


def _sign(d, w, h, f):
    s = w - 1
    d.polygon([(0.3 * s, 0), (0.7 * s, 0), (s, 0.3 * s), (s, 0.7 * s), (0.7 * s, s),
               (0.3 * s, s), (0, 0.7 * s), (0, 0.3 * s)], fill=255)


def _sign_d(g, b, f, rgb):
    x1, y1, x2, y2 = b
    w = x2 - x1
    g.rectangle([x1 + int(0.44 * w), y1 + w, x1 + int(0.56 * w), y2 - 1], fill=(110, 110, 110))
    g.rectangle([x1 + int(0.2 * w), y1 + int(0.44 * w), x1 + int(0.8 * w), y1 + int(0.56 * w)],
                fill=WHITE)


def _table(d, w, h, f):
    d.rectangle([0, 0, w - 1, int(0.18 * h)], fill=255)


def _table_d(g, b, f, rgb):
    _legs(g, b, rgb, (0.05, 0.89), top=0.18, width=0.06, dark=0.55)


def _tree(d, w, h, f):
    d.ellipse([0, 0, w - 1, int(0.72 * h)], fill=255)


def _tree_d(g, b, f, rgb):
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    g.rectangle([x1 + int(0.42 * w), y1 + int(0.66 * h), x1 + int(0.58 * w), y2 - 1], fill=TRUNK)


def _apple_d(g, b, f, rgb):
    x1, y1, x2, y2 = b
    w = x2 - x1
    g.ellipse([x1 + 0.5 * w, y1, x1 + 0.75 * w, y1 + 0.2 * w], fill=LEAF)


def _none(g, b, f, rgb):
    return None


RENDERERS: dict[str, tuple[ShapeFn, DetailFn]] = {
    "apple": (_full_ellipse, _apple_d),
    "ball": (_full_ellipse, _none),
    "bench": (_bench, _bench_d),
    "bicycle": (_bicycle, _bicycle_d),
    "bird": (_bird, _bird_d),
    "book": (_full_rect, _book_d),
    "bottle": (_bottle, _bottle_d),
    "bowl": (_bowl, _bowl_d),
    "box": (_full_rect, _box_d),
    "building": (_full_rect, _building_d),
    "car": (_car, _car_d),
    "cat": (_cat, _cat_d),
    "chair": (_chair, _chair_d),
    "cup": (_cup, _none),
    "desk": (_desk, _desk_d),
    "dog": (_dog, _dog_d),
    "flower": (_flower, _flower_d),
    "hat": (_hat, _hat_d),
    "kite": (_kite, _kite_d),
    "lamp": (_lamp, _lamp_d),
    "laptop": (_laptop, _laptop_d),
    "person": (_person, _person_d),
    "plate": (_full_ellipse, _plate_d),
    "sign": (_sign, _sign_d),
    "table": (_table, _table_d),
    "tree": (_tree, _tree_d),
}


def render_background(rng: np.random.Generator, width: int, height: int, horizon: int,
                      scene_type: str, colours: tuple[tuple[int, int, int], ...]) -> Image.Image:
    """Upper (wall/sky) and lower (floor/road/grass) regions with scene-type details."""
    upper, lower = (np.clip(np.array(c) + rng.integers(-14, 15, 3), 0, 255) for c in colours)
    arr = np.empty((height, width, 3), np.uint8)
    arr[:horizon] = upper
    arr[horizon:] = lower
    img = Image.fromarray(arr)
    g = ImageDraw.Draw(img)
    if scene_type == "kitchen":
        step = max(4, height // 12)
        c = tuple(int(v * 0.85) for v in lower)
        for y in range(horizon + step, height, step):
            g.line([(0, y), (width, y)], fill=c, width=1)
    elif scene_type == "street":
        y = horizon + (height - horizon) // 2
        dash = max(4, width // 16)
        for x in range(0, width, 2 * dash):
            g.line([(x, y), (x + dash, y)], fill=(225, 225, 225), width=max(1, height // 100))
    return img


def render(rng: np.random.Generator, width: int, height: int, horizon: int, scene_type: str,
           background: tuple[tuple[int, int, int], ...], items: list[DrawItem]) -> np.ndarray:
    """Draws `items` back to front on a background; returns uint8 [height, width, 3]."""
    img = render_background(rng, width, height, horizon, scene_type, background)
    draw = ImageDraw.Draw(img)
    period = max(2, max(width, height) // 80)
    for it in items:
        x1, y1, x2, y2 = it.box
        w, h = x2 - x1, y2 - y1
        shape_fn, detail_fn = RENDERERS[it.cls]
        mask = Image.new("L", (w, h), 0)
        shape_fn(ImageDraw.Draw(mask), w, h, it.facing)
        fill = Image.fromarray(texture_pattern(it.rgb, it.texture, w, h, period))
        img.paste(fill, (x1, y1), mask)
        detail_fn(draw, it.box, it.facing, it.rgb)
        if it.hand is not None:
            hx, hy, r = it.hand
            draw.ellipse([hx - r, hy - r, hx + r, hy + r], fill=SKIN, outline=shade(SKIN, 0.7))
    arr = np.asarray(img, dtype=np.int16)
    noise = rng.integers(-4, 5, size=arr.shape, dtype=np.int16)
    return np.clip(arr + noise, 0, 255).astype(np.uint8)
