from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from reid_transformers.retrieval.visualization import (
    BACKGROUND_COLOR,
    LETTERBOX_COLOR,
    MARGIN,
    MATCH_COLOR,
    MISMATCH_COLOR,
    QUERY_COLOR,
    QUERY_GAP,
    SPACING,
    UNKNOWN_COLOR,
    render_ranked_list,
    save_ranked_list,
)

YELLOW, CYAN = (255, 255, 0), (0, 255, 255)
TILE = (128, 64)
BORDER = 4
CELL_W, CELL_H = TILE[1] + 2 * BORDER, TILE[0] + 2 * BORDER


def crop(color=CYAN, size=(32, 64)) -> PIL.Image.Image:
    """A solid crop; ``size`` is PIL's (width, height)."""
    return PIL.Image.new("RGB", size, color)


def tile_left(position: int) -> int:
    """x of a tile's left frame edge; position 0 is the query, 1.. the ranks."""
    if position == 0:
        return MARGIN
    return MARGIN + CELL_W + QUERY_GAP + (position - 1) * (CELL_W + SPACING)


def has_text(image: PIL.Image.Image, box: tuple[int, int, int, int]) -> bool:
    """Whether the region holds dark (text) pixels."""
    region = np.asarray(image.crop(box).convert("L"))
    return bool((region < 128).any())


def test_frames_are_coloured_by_match_and_the_query_is_blue():
    image = render_ranked_list(crop(YELLOW), [crop()] * 3, matches=[True, False, None])
    expected = [QUERY_COLOR, MATCH_COLOR, MISMATCH_COLOR, UNKNOWN_COLOR]
    for position, color in enumerate(expected):
        left = tile_left(position)
        for x, y in [
            (left, MARGIN),  # top-left corner of the frame
            (left + CELL_W - 1, MARGIN + CELL_H - 1),  # bottom-right corner
            (left + BORDER - 1, MARGIN + CELL_H // 2),  # inside the left bar
        ]:
            assert image.getpixel((x, y)) == color, (position, x, y)
        # Inside the frame: the crop itself (it fills the tile, having the tile's 1:2 shape).
        inner = image.getpixel((left + BORDER, MARGIN + BORDER))
        assert inner == (YELLOW if position == 0 else CYAN)
        # Outside the frame: background.
        assert image.getpixel((left - 1, MARGIN + 5)) == BACKGROUND_COLOR


def test_without_matches_every_gallery_frame_is_grey():
    image = render_ranked_list(crop(), [crop(), crop()])
    assert image.getpixel((tile_left(1), MARGIN)) == UNKNOWN_COLOR
    assert image.getpixel((tile_left(2), MARGIN)) == UNKNOWN_COLOR


def test_size_follows_the_documented_layout():
    one = render_ranked_list(crop(), [crop()])
    three = render_ranked_list(crop(), [crop()] * 3)
    assert one.mode == "RGB"
    assert one.width == 2 * MARGIN + 2 * CELL_W + QUERY_GAP
    assert three.width - one.width == 2 * (CELL_W + SPACING)
    assert one.height == three.height > 2 * MARGIN + CELL_H  # plus the caption strip
    small = render_ranked_list(crop(), [crop()], tile_size=(64, 32), border=0)
    assert small.width == 2 * MARGIN + 2 * 32 + QUERY_GAP


def test_captions_sit_under_each_tile_and_grow_with_labels():
    plain = render_ranked_list(crop(), [crop()] * 2)
    labelled = render_ranked_list(
        crop(),
        [crop()] * 2,
        scores=[0.91, 0.5],
        labels=["pid 12 c3", None],
        query_label="pid 12 c1",
    )
    assert labelled.height > plain.height  # a second caption line
    strip_top = MARGIN + CELL_H
    for position in range(3):
        left = tile_left(position)
        assert has_text(labelled, (left, strip_top, left + CELL_W, labelled.height))
    # Nothing is drawn between the tiles or below the strip's margin.
    gap = (tile_left(1) - QUERY_GAP + 2, 0, tile_left(1) - 2, labelled.height)
    assert not has_text(labelled, gap)
    # Rank 2 has no label: only one line of text under it, in the strip's top half.
    left = tile_left(2)
    lower = (
        left,
        strip_top + (labelled.height - strip_top) // 2 + 2,
        left + CELL_W,
        labelled.height,
    )
    assert not has_text(labelled, lower)
    assert has_text(labelled, (tile_left(1), lower[1], tile_left(1) + CELL_W, lower[3]))


def test_long_captions_are_cut_to_the_tile_width():
    image = render_ranked_list(
        crop(), [crop()] * 2, labels=["a very long label that cannot possibly fit " * 3, "x"]
    )
    # The gap between rank 1 and rank 2 stays blank: the text was cut, not spilled over.
    between = (tile_left(1) + CELL_W + 1, MARGIN + CELL_H, tile_left(2) - 1, image.height)
    assert not has_text(image, between)


def test_crops_are_letterboxed_keeping_their_aspect_ratio():
    wide = crop(YELLOW, size=(64, 16))  # 4:1 wide into a 1:2 tile
    image = render_ranked_list(wide, [crop()])
    left = tile_left(0) + BORDER
    assert image.getpixel((left + 5, MARGIN + BORDER + 2)) == LETTERBOX_COLOR
    assert image.getpixel((left + 5, MARGIN + BORDER + TILE[0] // 2)) == YELLOW


def test_accepts_paths_arrays_and_transparent_images(tmp_path):
    path = tmp_path / "crop.png"
    crop(YELLOW).save(path)
    array = np.zeros((64, 32, 3), dtype=np.uint8)
    transparent = PIL.Image.new("RGBA", (32, 64), (255, 0, 0, 0))
    image = render_ranked_list(str(path), [array, transparent, np.zeros((64, 32), np.uint8)])
    assert image.getpixel((tile_left(0) + BORDER, MARGIN + BORDER)) == YELLOW
    assert image.getpixel((tile_left(1) + BORDER, MARGIN + BORDER)) == (0, 0, 0)
    # Fully transparent red composites to white, not to red or black.
    assert image.getpixel((tile_left(2) + BORDER, MARGIN + BORDER)) == (255, 255, 255)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"gallery_images": []}, ValueError, "gallery_images is empty"),
        ({"matches": [True]}, ValueError, "matches has 1 entries but there are 2 gallery"),
        ({"scores": [0.1, 0.2, 0.3]}, ValueError, "scores has 3 entries but there are 2"),
        ({"labels": ["a"]}, ValueError, "labels has 1 entries but there are 2"),
        ({"matches": [1, 0]}, ValueError, r"matches\[0\] must be True, False or None, got 1"),
        ({"scores": ["high", 0.2]}, ValueError, r"scores\[0\] must be a real number"),
        ({"scores": np.zeros((2, 1))}, ValueError, "scores must be one-dimensional"),
        ({"labels": "pid 1"}, ValueError, "labels must be a sequence"),
        ({"labels": [3, None]}, ValueError, r"labels\[0\] must be a string or None"),
        ({"tile_size": (128,)}, ValueError, r"tile_size must be \(height, width\)"),
        ({"tile_size": (0, 64)}, ValueError, r"tile_size must be \(height, width\)"),
        ({"border": -1}, ValueError, "border must be an integer >= 0"),
        ({"gallery_images": crop()}, TypeError, "wrap it in a list"),
        ({"gallery_images": [crop(), 3]}, TypeError, r"gallery_images\[1\] must be a PIL"),
        (
            {"gallery_images": [crop(), np.zeros((4, 4), np.float32)]},
            ValueError,
            r"gallery_images\[1\]: arrays must be uint8",
        ),
        (
            {"gallery_images": [crop(), "/no/such/crop.jpg"]},
            FileNotFoundError,
            "'/no/such/crop.jpg' does not exist",
        ),
        (
            # Converted like the image processor converts crops: no 16-bit mode is guessed at.
            {"gallery_images": [crop(), PIL.Image.new("I;16", (8, 16))]},
            ValueError,
            r"gallery_images\[1\]: unsupported PIL image mode 'I;16'",
        ),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, message):
    arguments = {"query_image": crop(), "gallery_images": [crop(), crop()], **kwargs}
    with pytest.raises(error, match=message):
        render_ranked_list(**arguments)


def test_undecodable_file_is_named(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot decode image file .*broken.jpg"):
        render_ranked_list(broken, [crop()])


def test_save_writes_the_rendered_png_atomically(tmp_path):
    target = tmp_path / "out" / "ranked.png"
    kwargs = dict(matches=[True, None], scores=np.array([0.9, 0.1]), labels=["pid 1 c2", None])
    returned = save_ranked_list(crop(YELLOW), [crop(), crop()], target, **kwargs)
    assert returned == target
    with PIL.Image.open(target) as saved:
        assert saved.format == "PNG"
        expected = render_ranked_list(crop(YELLOW), [crop(), crop()], **kwargs)
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(expected))
    # Overwriting works; a failed render leaves the old file and no temporary behind.
    save_ranked_list(crop(), [crop()], target)
    with pytest.raises(ValueError, match="gallery_images is empty"):
        save_ranked_list(crop(), [], target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["ranked.png"]
    with PIL.Image.open(target) as saved:
        assert saved.width == 2 * MARGIN + 2 * CELL_W + QUERY_GAP


def test_save_refuses_other_formats(tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.png.*ranked\.jpg"):
        save_ranked_list(crop(), [crop()], tmp_path / "ranked.jpg")
    assert list(Path(tmp_path).iterdir()) == []
