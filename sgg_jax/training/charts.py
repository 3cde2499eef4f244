"""Small PNG charts drawn with PIL (no plotting dependency): per-predicate bars for the
comparison runner, and metrics against training steps for `eval_history.jsonl`. Files are
written whole (a temporary file, then renamed)."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw

COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
          (140, 86, 75))


def _save(im: Image.Image, path: str) -> str:
    tmp = path + ".tmp.png"
    im.save(tmp)
    os.replace(tmp, path)
    return path


def bar_chart(series: Mapping[str, Mapping[str, float]], order: Sequence[str], title: str,
              path: str) -> str:
    """A grouped horizontal bar chart (one row per predicate, one bar per series, 0-100 %)."""
    names = list(series)
    row_h, bar_h, left, width = 6 + 8 * len(names), 7, 190, 420
    height = 60 + row_h * len(order) + 20 * len(names)
    im = Image.new("RGB", (left + width + 60, height), (255, 255, 255))
    d = ImageDraw.Draw(im)
    d.text((10, 8), title, fill=(0, 0, 0))
    for x in range(0, 101, 20):
        px = left + width * x / 100
        d.line([(px, 40), (px, 40 + row_h * len(order))], fill=(225, 225, 225))
        d.text((px - 6, 28), f"{x}", fill=(90, 90, 90))
    for i, pred in enumerate(order):
        y = 40 + i * row_h
        d.text((10, y + 2), pred[:28], fill=(0, 0, 0))
        for j, name in enumerate(names):
            v = series[name].get(pred, 0.0)
            yy = y + 3 + j * 8
            d.rectangle([left, yy, left + width * v / 100, yy + bar_h - 1],
                        fill=COLORS[j % len(COLORS)])
    y = 48 + row_h * len(order)
    for j, name in enumerate(names):
        d.rectangle([left, y + 20 * j, left + 12, y + 20 * j + 10], fill=COLORS[j % len(COLORS)])
        d.text((left + 18, y + 20 * j), f"{name} R@50 (%)", fill=(0, 0, 0))
    return _save(im, path)


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], title: str, x_label: str,
               path: str) -> str:
    """Lines of (x, y %) points, one per series, on a 0-100 % axis from x = 0 to the largest x;
    each point is marked and its value written next to the last one."""
    left, top, width, height = 50, 36, 520, 300
    im = Image.new("RGB", (left + width + 150, top + height + 50), (255, 255, 255))
    d = ImageDraw.Draw(im)
    d.text((10, 8), title, fill=(0, 0, 0))
    x_max = max((x for pts in series.values() for x, _ in pts), default=1.0) or 1.0
    px = lambda x: left + width * x / x_max  # noqa: E731
    py = lambda y: top + height * (1 - y / 100)  # noqa: E731
    for y in range(0, 101, 20):
        d.line([(left, py(y)), (left + width, py(y))], fill=(225, 225, 225))
        d.text((left - 24, py(y) - 6), f"{y}", fill=(90, 90, 90))
    for i in range(5):
        x = x_max * i / 4
        d.text((px(x) - 10, top + height + 6), f"{x:g}", fill=(90, 90, 90))
    d.text((left + width / 2 - 20, top + height + 24), x_label, fill=(0, 0, 0))
    for j, (name, pts) in enumerate(series.items()):
        color = COLORS[j % len(COLORS)]
        xy = [(px(x), py(y)) for x, y in sorted(pts)]
        if len(xy) > 1:
            d.line(xy, fill=color, width=2)
        for x, y in xy:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        if xy:
            d.text((xy[-1][0] + 6, xy[-1][1] - 6), f"{sorted(pts)[-1][1]:.1f}", fill=color)
        d.rectangle([left + width + 50, top + 20 * j, left + width + 62, top + 20 * j + 10],
                    fill=color)
        d.text((left + width + 68, top + 20 * j), name[:18], fill=(0, 0, 0))
    return _save(im, path)
