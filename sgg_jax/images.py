"""Images in: reading any image file Pillow reads, and letterboxing it onto the model's canvas.

Images go through the same letterbox as the training pipeline (`data_pipelines.pipeline`): the
long side is resized to S (bilinear, content size round(original * scale)) and pasted at the
top-left of a zeroed S x S canvas; JPEG files without an EXIF rotation go through the pipeline's
own `decode_resize` (with its DCT-domain draft), so a photo sees exactly the pixels training
images saw.
"""
from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from data_pipelines.errors import DataFormatError
from data_pipelines import pipeline
from data_pipelines.pipeline import decode_resize

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]
_EXIF_ORIENTATION = 0x0112



@dataclasses.dataclass
class LoadedImage:
    """One input image: the model's canvas and what is needed to map results back.

    image: the original as RGB (EXIF orientation applied), for drawing.
    canvas: [S, S, 3] uint8 letterboxed model input; content_hw: (h, w) of the content on it.
    scale: S / max(width, height) of `image` (canvas pixels per original pixel).
    """

    image: Image.Image
    canvas: np.ndarray
    scale: float
    content_hw: tuple[int, int]
    path: str | None = None


def letterbox(image: Image.Image, size: int) -> tuple[np.ndarray, float, int, int]:
    """RGB image -> (canvas [S,S,3] uint8, scale, content h, content w): the pipeline's own
    geometry and resize-and-pad, as `decode_resize` applies them to a decoded image."""
    scale, tw, th = pipeline.canvas_geometry(image.size, size)
    return pipeline.paste_on_canvas(image, size, tw, th), scale, th, tw


def _image_error(name: str, reason: str) -> DataFormatError:
    return DataFormatError(name, None, "an image file Pillow can read (JPEG, PNG, BMP, GIF, "
                           "TIFF, WebP, ...)", reason)


def read_image_file(path: str | os.PathLike) -> tuple[Image.Image, bytes, int]:
    """(fully decoded image, file bytes, EXIF orientation) or DataFormatError naming the file."""
    name = os.fspath(path)
    if not os.path.exists(name):
        raise _image_error(name, "no such file")
    if not os.path.isfile(name):
        raise _image_error(name, "not a regular file")
    try:
        with open(name, "rb") as f:
            data = f.read()
        im = Image.open(io.BytesIO(data))
        im.load()  # decode now: truncated / corrupt data fails here, not later
        orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except UnidentifiedImageError:
        raise _image_error(name, "not a recognised image format") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _image_error(name, f"unreadable image data ({e})") from e
    return im, data, orientation


def _array_to_image(arr: np.ndarray) -> Image.Image:
    arr = np.asarray(arr)
    ok_shape = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))
    if arr.dtype != np.uint8 or not ok_shape or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image: expected an HxWx3 (or HxW, HxWx4) uint8 array, got shape "
                         f"{arr.shape} dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return Image.fromarray(np.ascontiguousarray(arr))


def load_image(source: ImageInput, size: int) -> LoadedImage:
    """A path, PIL image or uint8 array -> `LoadedImage` on an S x S canvas.

    RGBA / L / P / CMYK inputs become RGB (as the pipeline's convert("RGB")); EXIF orientation
    is applied (ImageOps.exif_transpose). Raises DataFormatError (a ValueError) naming the file
    for missing, unreadable or non-image files.
    """
    path = None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        im, data, orientation = read_image_file(path)
        try:
            rgb = ImageOps.exif_transpose(im).convert("RGB")
            if orientation == 1:
                # Exactly the training pipeline's decode (incl. JPEG draft) and resize.
                canvas, scale, th, tw = decode_resize(data, size)
            else:
                canvas, scale, th, tw = letterbox(rgb, size)
        except (OSError, ValueError, SyntaxError) as e:
            raise _image_error(path, f"unreadable image data ({e})") from e
    elif isinstance(source, Image.Image):
        rgb = ImageOps.exif_transpose(source).convert("RGB")
        canvas, scale, th, tw = letterbox(rgb, size)
    elif isinstance(source, np.ndarray):
        rgb = _array_to_image(source).convert("RGB")
        canvas, scale, th, tw = letterbox(rgb, size)
    else:
        raise ValueError(f"image: expected a file path, a PIL.Image or an HxWx3 uint8 array, "
                         f"got {type(source).__name__}")
    return LoadedImage(image=rgb, canvas=canvas, scale=float(scale), content_hw=(th, tw),
                       path=path)


def find_images(specs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Comma-separated string or list of files / folders -> list of image paths.

    A folder contributes its files (not sub-folders, not hidden files) whose extension Pillow
    knows, sorted by name; a named file is always kept (a non-image or missing file then fails
    on its own, with an error naming it, instead of vanishing silently).
    """
    if isinstance(specs, (str, os.PathLike)):
        specs = [s for s in os.fspath(specs).split(",")]
    exts = {e.lower() for e in Image.registered_extensions()}
    out: list[str] = []
    for spec in specs:
        spec = os.path.expanduser(os.fspath(spec).strip())
        if not spec:
            continue
        if os.path.isdir(spec):
            names = sorted(n for n in os.listdir(spec) if not n.startswith("."))
            out.extend(os.path.join(spec, n) for n in names
                       if os.path.isfile(os.path.join(spec, n))
                       and os.path.splitext(n)[1].lower() in exts)
        else:
            out.append(spec)
    return out


