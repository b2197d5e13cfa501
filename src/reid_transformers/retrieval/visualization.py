"""Ranked-list pictures: a query crop followed by its top-k gallery crops, colour-coded.

:func:`render_ranked_list` draws one row: the query in a blue frame, then the gallery crops
in rank order, each framed green (same identity), red (different identity) or grey
(unknown), with a caption under every crop (rank, score, and an optional label such as
``"pid 12 c3"``). :func:`save_ranked_list` writes that picture to a PNG file atomically.

Layout, in pixels: an outer margin of ``MARGIN``; every crop is letterboxed (aspect ratio
kept, padded with ``LETTERBOX_COLOR``) into a ``tile_size`` box framed by ``border`` pixels
of its colour; gallery tiles are ``SPACING`` apart and the first one is ``QUERY_GAP`` to the
right of the query. Captions sit in a strip under the tiles whose height fits the tallest
caption; text wider than a tile is cut with "...".
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import PIL.ImageOps

from ..image_processing_reid import load_image_file, to_rgb_image
from ..utils import check_int, is_integer, write_atomically

__all__ = [
    "BACKGROUND_COLOR",
    "LETTERBOX_COLOR",
    "MARGIN",
    "MATCH_COLOR",
    "MISMATCH_COLOR",
    "QUERY_COLOR",
    "QUERY_GAP",
    "SPACING",
    "UNKNOWN_COLOR",
    "CropImage",
    "render_ranked_list",
    "save_ranked_list",
]

RGB: TypeAlias = tuple[int, int, int]
CropImage: TypeAlias = PIL.Image.Image | np.ndarray | str | os.PathLike[str]
"""A crop: a PIL image, a uint8 array ``(H, W)`` / ``(H, W, 3)`` / ``(H, W, 4)``, or an
image file path."""

QUERY_COLOR: RGB = (45, 105, 200)
MATCH_COLOR: RGB = (30, 160, 60)
MISMATCH_COLOR: RGB = (210, 40, 40)
UNKNOWN_COLOR: RGB = (150, 150, 150)
BACKGROUND_COLOR: RGB = (255, 255, 255)
LETTERBOX_COLOR: RGB = (232, 232, 232)
_TEXT_COLOR: RGB = (25, 25, 25)

#: Blank pixels around the whole picture.
MARGIN = 8
#: Horizontal gap between two gallery tiles.
SPACING = 6
#: Horizontal gap between the query tile and the first gallery tile.
QUERY_GAP = 24
# Space between a tile's frame and its caption, and between caption lines.
_CAPTION_PAD = 3
_LINE_GAP = 2
# Caption font size as a fraction of the tile width: 10 px (PIL's default size) for the
# usual 64-pixel-wide tiles, growing with larger tiles so captions stay readable.
_FONT_SIZE_PER_WIDTH = 1 / 6
_MIN_FONT_SIZE = 10


def render_ranked_list(
    query_image: CropImage,
    gallery_images: Sequence[CropImage],
    *,
    matches: Sequence[bool | None] | None = None,
    scores: Sequence[float] | np.ndarray | None = None,
    labels: Sequence[str | None] | None = None,
    query_label: str | None = None,
    tile_size: tuple[int, int] = (128, 64),
    border: int = 4,
) -> PIL.Image.Image:
    """Draw a query and its ranked gallery crops as one RGB picture.

    Args:
        query_image: the query crop (see :data:`CropImage`).
        gallery_images: the top-k gallery crops, best first (k >= 1).
        matches: per gallery crop, ``True`` (same identity: ``MATCH_COLOR`` frame),
            ``False`` (``MISMATCH_COLOR``) or ``None`` (unknown: ``UNKNOWN_COLOR``). ``None``
            for all unknown.
        scores: per gallery crop, a similarity or distance shown with 3 decimals after the
            rank (``"#1  0.873"``); ``None`` shows the rank only.
        labels: per gallery crop, an extra caption line such as ``"pid 12 c3"`` (``None``
            entries add nothing).
        query_label: an extra caption line under the query (its caption starts with
            ``"query"``).
        tile_size: ``(height, width)`` of every crop box in pixels, frame excluded; crops
            are letterboxed into it, keeping their aspect ratio.
        border: frame width in pixels (0 for no frame).

    Returns:
        RGB ``PIL.Image`` of width ``2 * MARGIN + (k + 1) * (tile_w + 2 * border) +
        (k - 1) * SPACING + QUERY_GAP`` and height ``2 * MARGIN + tile_h + 2 * border`` plus
        the caption strip.

    Raises:
        ValueError: an empty gallery; ``matches`` / ``scores`` / ``labels`` whose length is
            not k or whose entries have the wrong type; a bad ``tile_size`` or ``border``;
            an undecodable image file or an unsupported array.
        FileNotFoundError: an image path that does not exist.
        TypeError: an image of an unsupported type.
    """
    height, width = _check_tile_size(tile_size)
    check_int("border", border, minimum=0)
    border = int(border)
    if isinstance(gallery_images, str | os.PathLike | np.ndarray | PIL.Image.Image):
        raise TypeError(
            f"gallery_images must be a sequence of crops, got a single "
            f"{type(gallery_images).__name__}; wrap it in a list"
        )
    k = len(gallery_images)
    if k == 0:
        raise ValueError("gallery_images is empty: a ranked list needs at least one gallery crop")
    frame_colors = [
        _match_color(value, i) for i, value in enumerate(_per_item(matches, k, "matches"))
    ]
    score_values = _check_scores(scores, k)
    label_values = _per_item(labels, k, "labels")
    for i, label in enumerate(label_values):
        if label is not None and not isinstance(label, str):
            raise ValueError(f"labels[{i}] must be a string or None, got {label!r}")
    if query_label is not None and not isinstance(query_label, str):
        raise ValueError(f"query_label must be a string or None, got {query_label!r}")

    crops = [_to_rgb(query_image, "query_image")]
    crops += [_to_rgb(image, f"gallery_images[{i}]") for i, image in enumerate(gallery_images)]
    captions = [["query"] + ([query_label] if query_label else [])]
    for rank, (score, label) in enumerate(zip(score_values, label_values, strict=True), 1):
        head = f"#{rank}" if score is None else f"#{rank}  {score:.3f}"
        captions.append([head] + ([label] if label else []))

    font = PIL.ImageFont.load_default(size=max(_MIN_FONT_SIZE, round(width * _FONT_SIZE_PER_WIDTH)))
    # Height of one line from the drawing origin down to the lowest descender.
    line_height = font.getbbox("Agy|")[3]
    most_lines = max(len(lines) for lines in captions)
    caption_height = _CAPTION_PAD + most_lines * line_height + (most_lines - 1) * _LINE_GAP

    cell_width, cell_height = width + 2 * border, height + 2 * border
    canvas_width = 2 * MARGIN + (k + 1) * cell_width + (k - 1) * SPACING + QUERY_GAP
    canvas_height = 2 * MARGIN + cell_height + caption_height
    canvas = PIL.Image.new("RGB", (canvas_width, canvas_height), BACKGROUND_COLOR)
    draw = PIL.ImageDraw.Draw(canvas)
    for position, (crop, lines, color) in enumerate(
        zip(crops, captions, [QUERY_COLOR, *frame_colors], strict=True)
    ):
        left = MARGIN + position * cell_width
        if position > 0:
            left += QUERY_GAP + (position - 1) * SPACING
        top = MARGIN
        if border:
            draw.rectangle((left, top, left + cell_width - 1, top + cell_height - 1), fill=color)
        tile = PIL.ImageOps.pad(
            crop, (width, height), method=PIL.Image.Resampling.BILINEAR, color=LETTERBOX_COLOR
        )
        canvas.paste(tile, (left + border, top + border))
        y = top + cell_height + _CAPTION_PAD
        for line in lines:
            draw.text((left, y), _fit(line, font, cell_width), font=font, fill=_TEXT_COLOR)
            y += line_height + _LINE_GAP
    return canvas


def save_ranked_list(
    query_image: CropImage,
    gallery_images: Sequence[CropImage],
    path: str | os.PathLike[str],
    *,
    matches: Sequence[bool | None] | None = None,
    scores: Sequence[float] | np.ndarray | None = None,
    labels: Sequence[str | None] | None = None,
    query_label: str | None = None,
    tile_size: tuple[int, int] = (128, 64),
    border: int = 4,
) -> Path:
    """Render with :func:`render_ranked_list` and write the picture to a PNG file atomically.

    The PNG is written to a hidden temporary file next to ``path``, flushed to disk and
    renamed over ``path``, so an interrupted call leaves either the old file or the new
    one, never a truncated PNG. Missing parent folders are created.

    Args:
        query_image, gallery_images, matches, scores, labels, query_label, tile_size,
            border: as for :func:`render_ranked_list`.
        path: the output file; its name must end in ``.png`` (any case).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: ``path`` does not end in ``.png``, or any error of
            :func:`render_ranked_list`.
        FileNotFoundError / TypeError: as for :func:`render_ranked_list`.
    """
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(
            f"path must end in .png (the picture is written as PNG), got {str(path)!r}"
        )
    image = render_ranked_list(
        query_image,
        gallery_images,
        matches=matches,
        scores=scores,
        labels=labels,
        query_label=query_label,
        tile_size=tile_size,
        border=border,
    )
    return write_atomically(target, lambda f: image.save(f, format="PNG"))


def _check_tile_size(tile_size: object) -> tuple[int, int]:
    if (
        not isinstance(tile_size, Sequence)
        or len(tile_size) != 2
        or not all(
            is_integer(v) and v > 0 for v in tile_size
        )
    ):
        raise ValueError(
            f"tile_size must be (height, width) in pixels, two positive integers; got {tile_size!r}"
        )
    return int(tile_size[0]), int(tile_size[1])


def _per_item(values: Sequence[Any] | np.ndarray | None, k: int, name: str) -> list[Any]:
    """``values`` as a list of k entries (all None when ``values`` is None)."""
    if values is None:
        return [None] * k
    if isinstance(values, str) or not isinstance(values, Sequence | np.ndarray):
        raise ValueError(
            f"{name} must be a sequence with one entry per gallery image, got "
            f"{type(values).__name__}"
        )
    if len(values) != k:
        raise ValueError(
            f"{name} has {len(values)} entries but there are {k} gallery images; expected one "
            f"entry per gallery image"
        )
    return list(values)


def _match_color(value: object, i: int) -> RGB:
    if value is None:
        return UNKNOWN_COLOR
    if isinstance(value, bool | np.bool_):
        return MATCH_COLOR if value else MISMATCH_COLOR
    raise ValueError(f"matches[{i}] must be True, False or None, got {value!r}")


def _check_scores(scores: Sequence[float] | np.ndarray | None, k: int) -> list[float | None]:
    if isinstance(scores, np.ndarray) and scores.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {scores.shape}")
    values = _per_item(scores, k, "scores")
    if scores is None:
        return values
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"scores[{i}] must be a real number, got {value!r}")
    return [float(value) for value in values]


def _to_rgb(image: CropImage, name: str) -> PIL.Image.Image:
    """An RGB PIL image of a crop, converted like the image processor converts it
    (transparency composited onto white); errors start with ``name``."""
    try:
        if isinstance(image, str | os.PathLike):
            image = load_image_file(image)
        elif isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or not (
                image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))
            ):
                raise ValueError(
                    f"arrays must be uint8 (H, W), (H, W, 3) or (H, W, 4); got "
                    f"{image.dtype} {image.shape}"
                )
            if image.size == 0:
                raise ValueError(f"the array is empty, shape {image.shape}")
            image = PIL.Image.fromarray(np.ascontiguousarray(image))
        elif not isinstance(image, PIL.Image.Image):
            raise TypeError(
                f"{name} must be a PIL image, a uint8 numpy array or an image file path, got "
                f"{type(image).__name__}"
            )
        return to_rgb_image(image)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from error
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{name}: {error}") from error


def _fit(text: str, font: PIL.ImageFont.FreeTypeFont | PIL.ImageFont.ImageFont, width: int) -> str:
    """``text``, cut and ended with "..." if it is wider than ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    for end in range(len(text) - 1, 0, -1):
        candidate = text[:end] + "..."
        if font.getlength(candidate) <= width:
            return candidate
    return ""
