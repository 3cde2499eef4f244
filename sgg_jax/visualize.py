"""Drawing a scene graph on its image (Pillow only).

Layout of `draw_scene_graph`'s result:
  * top: the image, enlarged by an integer factor k = max(1, 512 // long side) so labels stay
    readable on small images (k = 1 from a 257 px long side up, 2 for 256 px, 4 for 128 px);
    each drawn object has a box in its own colour and a tag "#i name" (i = its index in the
    scene graph's objects / the JSON's "objects");
  * each drawn relation is a line from the subject's box centre to the object's, in the
    subject's colour (a->b and b->a side by side), with an arrow head at the object and a
    label "r<rank> predicate" on it, 40% of the way from the subject or, where that covers an
    earlier tag, at another point along the line;
  * caption regions (graphs of captioning models, MSDN): the top `max_regions` regions drawn
    under the objects as dashed boxes, near-black and white dashes (REGION_COLOR, one style
    for all, unlike the objects' solid coloured boxes), with a near-black tag "c<rank>" near
    their bottom-left corner;
  * bottom: a white legend listing the drawn relations ("r1  #0 man  -riding->  #3 horse  0.412"),
    then the drawn objects with their scores, then (with regions) "Region captions (top N of
    M)" and one line per drawn region: "c1  <caption>  <score>".
The result is max(k*W, legend width) wide and k*H + legend height tall; the image occupies the
top-left k*W x k*H pixels.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Well-separated colours (Tableau 10 plus six strong extras), cycled by object index.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (0, 0, 139), (255, 215, 0), (0, 128, 128), (128, 0, 0), (0, 255, 127), (255, 0, 255),
)
MIN_LONG_SIDE = 512
DEFAULT_MAX_RELATIONS = 10
DEFAULT_MAX_OBJECTS = 12
DEFAULT_MAX_REGIONS = 5
# Caption regions: near-black dashes with white gaps (readable on dark and light images, and
# unlike any object's solid PALETTE colour), near-black tags; one style for all regions.
REGION_COLOR: tuple[int, int, int] = (20, 20, 20)
REGION_GAP_COLOR: tuple[int, int, int] = (255, 255, 255)


def color(i: int) -> tuple[int, int, int]:
    """The colour of object `i` (its index in the scene graph)."""
    return PALETTE[i % len(PALETTE)]


def _text_color(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on `bg` (relative luminance)."""
    lum = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    return (0, 0, 0) if lum > 150 else (255, 255, 255)


@functools.lru_cache(maxsize=16)
def font(size: int) -> Any:
    """Pillow's built-in scalable font at `size` px (the bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_scale(width: int, height: int) -> int:
    """Integer enlargement of the image in the drawing: max(1, 512 // long side)."""
    return max(1, MIN_LONG_SIDE // max(width, height, 1))


@dataclasses.dataclass(frozen=True)
class _Style:
    font_size: int
    line_width: int
    pad: int


def _style(long_side: int) -> _Style:
    fs = int(np.clip(round(long_side / 40), 14, 48))
    return _Style(font_size=fs, line_width=max(2, round(long_side / 300)), pad=max(3, fs // 4))


def _text_size(f: Any, text: str) -> tuple[int, int]:
    x0, y0, x1, y1 = f.getbbox(text)
    return x1 - x0, y1 - min(y0, 0)


def choose_objects(graph: Any, rel_rows: Sequence[int], max_objects: int) -> list[int]:
    """Objects to draw: those in the drawn relations (in order of appearance), then the
    best-scoring others until `max_objects` are drawn."""
    chosen: list[int] = []
    for r in rel_rows:
        for i in (int(graph.rel_pairs[r][0]), int(graph.rel_pairs[r][1])):
            if i not in chosen:
                chosen.append(i)
    for i in np.argsort(-np.asarray(graph.scores, np.float64), kind="stable"):
        if len(chosen) >= max_objects:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    return chosen


def _tag_rect(xy: tuple[float, float], text: str, f: Any, pad: int,
              bounds: tuple[int, int]) -> tuple[int, int, int, int]:
    """x1, y1, x2, y2 of a text tag whose top-left is near `xy`, kept inside `bounds`."""
    tw, th = _text_size(f, text)
    w, h = tw + 2 * pad, th + 2 * pad
    x = int(np.clip(xy[0], 0, max(bounds[0] - w, 0)))
    y = int(np.clip(xy[1], 0, max(bounds[1] - h, 0)))
    return x, y, x + w, y + h


def _draw_tag(draw: ImageDraw.ImageDraw, rect: tuple[int, int, int, int], text: str, f: Any,
              fill: tuple[int, int, int], pad: int,
              outline: tuple[int, int, int] | None = None) -> None:
    draw.rectangle(rect, fill=fill, outline=outline, width=1 if outline else 0)
    draw.text((rect[0] + pad, rect[1] + pad), text, fill=_text_color(fill), font=f)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _arrow(draw: ImageDraw.ImageDraw, p0: np.ndarray, p1: np.ndarray,
           fill: tuple[int, int, int], width: int) -> None:
    draw.line([tuple(p0), tuple(p1)], fill=fill, width=width)
    d = p1 - p0
    n = float(np.hypot(*d))
    if n < 1e-6:
        return
    d = d / n
    size = 4 * width + 6
    back = p1 - d * size
    perp = np.array([-d[1], d[0]]) * size * 0.5
    draw.polygon([tuple(p1), tuple(back + perp), tuple(back - perp)], fill=fill)


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: Sequence[float],
                      colors: Sequence[tuple[int, int, int]], width: int, dash: int) -> None:
    """A rectangle outline of `dash` px long dashes cycling through `colors`."""
    x1, y1, x2, y2 = (float(v) for v in box)
    for a, b in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)),
                 ((x1, y2), (x1, y1))):
        p0, p1 = np.asarray(a), np.asarray(b)
        n = max(float(np.hypot(*(p1 - p0))), 1e-6)
        for j, t0 in enumerate(np.arange(0.0, n, dash)):
            q0, q1 = p0 + (p1 - p0) * (t0 / n), p0 + (p1 - p0) * (min(t0 + dash, n) / n)
            draw.line([tuple(q0), tuple(q1)], fill=colors[j % len(colors)], width=width)


def draw_scene_graph(image: Image.Image, graph: Any, max_relations: int | None = None,
                     max_objects: int | None = None,
                     max_regions: int | None = None) -> Image.Image:
    """Returns a new RGB image: `image` with `graph`'s objects and relations, and a legend.

    `graph` is a `sgg_jax.scene_graph.SceneGraph` (boxes in `image`'s pixels); the top
    `max_relations` relations (default 10) and the objects they use plus the best others up to
    `max_objects` (default 12) are drawn, and of a graph with caption regions the first
    `max_regions` (default 5) regions. See the module docstring for the layout.
    """
    image = image.convert("RGB")
    w0, h0 = image.size
    k = draw_scale(w0, h0)
    if k > 1:
        image = image.resize((w0 * k, h0 * k), Image.BICUBIC)
    W, H = image.size
    st = _style(max(W, H))
    f, f_small = font(st.font_size), font(max(12, st.font_size - 2))
    n_rel = min(len(graph.rel_scores),
                DEFAULT_MAX_RELATIONS if max_relations is None else int(max_relations))
    rel_rows = list(range(n_rel))
    objs = choose_objects(graph, rel_rows,
                          DEFAULT_MAX_OBJECTS if max_objects is None else int(max_objects))
    boxes = np.asarray(graph.boxes, np.float64).reshape(-1, 4) * k
    names = graph.names
    col = {i: color(i) for i in objs}

    has_regions = getattr(graph, "region_boxes", None) is not None
    region_boxes = np.asarray(graph.region_boxes if has_regions else np.zeros((0, 4)),
                              np.float64).reshape(-1, 4)
    n_reg = min(len(region_boxes),
                DEFAULT_MAX_REGIONS if max_regions is None else int(max_regions))

    draw = ImageDraw.Draw(image)
    # Regions first, so that objects, relations and all tags are drawn over them.
    for q in reversed(range(n_reg)):
        _dashed_rectangle(draw, region_boxes[q] * k, (REGION_COLOR, REGION_GAP_COLOR),
                          st.line_width, dash=3 * st.line_width + 2)
    for i in reversed(objs):  # the first (in the top relations, best) on top
        draw.rectangle([float(v) for v in boxes[i]], outline=col[i], width=st.line_width)
    centres = {i: np.array([(boxes[i, 0] + boxes[i, 2]) / 2, (boxes[i, 1] + boxes[i, 3]) / 2])
               for i in objs}
    ends = {}
    for r in rel_rows:
        s, o = (int(v) for v in graph.rel_pairs[r])
        # Shifted sideways by two line widths, so a->b and b->a run side by side.
        d = centres[o] - centres[s]
        side = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-6) * 2 * st.line_width
        ends[r] = (centres[s] + side, centres[o] + side)
        _arrow(draw, *ends[r], col[s], st.line_width)
    placed: list[tuple[int, int, int, int]] = []

    def place(text: str, corners: list[tuple[float, float]]) -> tuple[int, int, int, int]:
        """The first candidate top-left whose tag overlaps no earlier tag (else the first)."""
        rects = [_tag_rect(c, text, f_small, st.pad, (W, H)) for c in corners]
        rect = next((q for q in rects if not any(_overlaps(q, p) for p in placed)), rects[0])
        placed.append(rect)
        return rect

    for i in objs:
        text = f"#{i} {names[i]}"
        tw, th = _text_size(f_small, text)
        x1, y1, x2, y2 = boxes[i]
        step = th + 2 * st.pad
        rect = place(text, [(x1, y1), (x1, y1 - step), (x1, y1 + step), (x2 - tw - 2 * st.pad, y1),
                            (x1, y2 - step), (x1, y1 + 2 * step)])
        _draw_tag(draw, rect, text, f_small, col[i], st.pad)
    for r in rel_rows:
        s = int(graph.rel_pairs[r][0])
        text = f"r{r + 1} {graph.predicate_names[int(graph.rel_predicates[r])]}"
        tw, th = _text_size(f_small, text)
        step = th + 2 * st.pad
        # Along the line, first 40% of the way from the subject (a->b and b->a differ), then
        # other points and small sideways shifts, until the tag covers no earlier tag.
        corners = []
        for dy in (0, step, -step, 2 * step, -2 * step):
            for t in (0.4, 0.3, 0.5, 0.2, 0.6):
                mid = (1 - t) * ends[r][0] + t * ends[r][1]
                corners.append((mid[0] - tw / 2, mid[1] - th / 2 + dy))
        rect = place(text, corners)
        _draw_tag(draw, rect, text, f_small, (255, 255, 255), st.pad, outline=col[s])
    for q in range(n_reg):
        text = f"c{q + 1}"
        tw, th = _text_size(f_small, text)
        x1, y1, x2, y2 = region_boxes[q] * k
        step = th + 2 * st.pad
        rect = place(text, [(x1, y2 - step), (x2 - tw - 2 * st.pad, y2 - step), (x1, y2),
                            (x1, y2 - 2 * step), (x2 - tw - 2 * st.pad, y2)])
        _draw_tag(draw, rect, text, f_small, REGION_COLOR, st.pad)

    # Legend under the image.
    lines: list[tuple[str, tuple[int, int, int]]] = []
    lines.append((f"Relations (top {n_rel} of {len(graph.rel_scores)}; score = subject x "
                  "object x predicate)" if n_rel else "Relations: none", (0, 0, 0)))
    for r in rel_rows:
        s, o = (int(v) for v in graph.rel_pairs[r])
        pred = graph.predicate_names[int(graph.rel_predicates[r])]
        lines.append((f"r{r + 1}  #{s} {names[s]}  -{pred}->  #{o} {names[o]}   "
                      f"{float(graph.rel_scores[r]):.3g}", col[s]))
    lines.append((f"Objects ({len(objs)} of {len(names)} drawn)", (0, 0, 0)))
    for i in sorted(objs):
        x1, y1, x2, y2 = (float(v) for v in graph.boxes[i])
        lines.append((f"#{i} {names[i]}  {float(graph.scores[i]):.3g}  "
                      f"[{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}]", col[i]))
    if has_regions:
        lines.append((f"Region captions (top {n_reg} of {len(region_boxes)})" if n_reg
                      else "Region captions: none", (0, 0, 0)))
        for q in range(n_reg):
            caption = graph.region_captions[q] or "(empty caption)"
            lines.append((f"c{q + 1}  {caption}   {float(graph.region_scores[q]):.3g}",
                          REGION_COLOR))
    line_h = _text_size(f, "Ag#[]")[1] + st.pad
    swatch = line_h - st.pad
    text_w = max(_text_size(f, t)[0] for t, _ in lines)
    out_w = max(W, text_w + swatch + 4 * st.pad)
    out_h = H + 2 * st.pad + line_h * len(lines)
    out = Image.new("RGB", (out_w, out_h), (255, 255, 255))
    out.paste(image, (0, 0))
    d = ImageDraw.Draw(out)
    d.line([(0, H), (out_w, H)], fill=(0, 0, 0), width=1)
    y = H + st.pad
    for text, c in lines:
        if c != (0, 0, 0):
            d.rectangle([st.pad, y + 2, st.pad + swatch - 2, y + swatch], fill=c)
            d.text((2 * st.pad + swatch, y), text, fill=(0, 0, 0), font=f)
        else:
            d.text((st.pad, y), text, fill=(0, 0, 0), font=f)
        y += line_h
    return out
