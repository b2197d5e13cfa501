"""Procedurally drawn pedestrian re-ID dataset in the Market-1501 folder layout.

The package ships no real images and cannot download any, so demos, tests and benchmarks
run on this generator. It draws simple pedestrians with ``PIL.ImageDraw`` and writes JPEG
crops exactly as Market-1501 stores them::

    <root>/bounding_box_train/0007_c2s1_104522_01.jpg    training identities
    <root>/query/0012_c1s1_051020_02.jpg                 one crop per (test id, camera)
    <root>/bounding_box_test/0012_c4s1_230114_01.jpg     gallery: test ids, 0000, -1
    <root>/synthetic_manifest.json                       parameters, attributes, counts

An identity is a combination of attributes drawn from small shared palettes (clothing
colours and patterns, lower-body garment, shoes, hair, hat, bag, skin tone, body
proportions), so colour alone does not identify a person. Every camera has its own
illumination, colour cast, blur, noise, JPEG quality, framing, background, occlusion rate
and typical viewpoint, so the same person looks different across cameras while different
people can look alike within one. A colour-histogram matcher therefore gets part of the
way but not all of it; a model must also use shape, pattern and part cues.

Everything is derived from ``seed`` through one ``numpy`` generator per camera, identity
and image (seeded by ``SeedSequence([seed, stream, ...])``), so each file depends only on
its own keys and not on the order in which files are produced.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from ..utils import (
    check_in_range,
    check_int,
    default_cache_dir,
    is_integer,
    replace_directory,
    write_atomically,
)

__all__ = [
    "SYNTHETIC_FORMAT_VERSION",
    "SYNTHETIC_MANIFEST_NAME",
    "make_synthetic_reid",
    "synthetic_dataset_info",
]

SYNTHETIC_FORMAT_VERSION = 1
"""Bumped whenever the drawing or the layout changes, so cached datasets are regenerated."""

SYNTHETIC_MANIFEST_NAME = "synthetic_manifest.json"

TRAIN_DIR = "bounding_box_train"
QUERY_DIR = "query"
GALLERY_DIR = "bounding_box_test"

RGB = tuple[int, int, int]

# Everything is drawn at twice the output resolution and box-downsampled, which gives
# anti-aliased edges at the cost of ~4x more pixels to fill (still < 1 ms per image).
_SUPERSAMPLE = 2

# Independent random streams: SeedSequence([seed, stream, *keys]).
_STREAM_CAMERA = 1
_STREAM_ATTRIBUTES = 2
_STREAM_SPLIT = 3
_STREAM_IDENTITY = 4
_STREAM_IMAGE = 5
_STREAM_DISTRACTOR = 6
_STREAM_JUNK = 7

_VIEWS = ("front", "back", "left", "right")

# Tracklet frame numbers must fit in 6 digits (see _frame_numbers); +1 for the query.
_MAX_IMAGES_PER_CAMERA = 249

_COLORS: dict[str, RGB] = {
    "black": (28, 28, 32),
    "charcoal": (62, 62, 68),
    "grey": (128, 128, 130),
    "white": (232, 232, 228),
    "navy": (32, 42, 92),
    "blue": (42, 94, 190),
    "red": (188, 32, 38),
    "maroon": (108, 28, 40),
    "green": (42, 122, 62),
    "yellow": (228, 198, 44),
    "pink": (228, 142, 172),
    "purple": (108, 54, 140),
    "denim": (62, 88, 132),
    "khaki": (168, 150, 102),
    "beige": (210, 192, 152),
    "brown": (104, 68, 40),
    "dark_brown": (58, 38, 24),
    "blonde": (204, 172, 104),
    "auburn": (128, 52, 28),
}

_SKIN_TONES: dict[str, RGB] = {
    "pale": (246, 214, 188),
    "light": (228, 190, 156),
    "tan": (196, 148, 108),
    "brown": (148, 100, 68),
    "dark": (98, 64, 44),
}

# Person height / image height before camera framing; only small differences survive
# because detectors crop to the person, as in real re-ID data.
_HEIGHT_SCALE = {"short": 0.91, "medium": 0.955, "tall": 1.0}
# Torso width (front view) / person height.
_BUILD_WIDTH = {"slim": 0.24, "average": 0.275, "broad": 0.31, "heavy": 0.35}
# Hip-to-sole length / person height.
_LEG_FRACTION = {"short": 0.43, "average": 0.475, "long": 0.52}
# Head height / person height.
_HEAD_FRACTION = {"small": 0.118, "medium": 0.134, "large": 0.152}

# Attribute -> (value, prior weight). Palettes are deliberately small and skewed towards
# dark clothes (as in street footage) so that many identities share each value.
_ATTRIBUTE_PALETTES: dict[str, tuple[tuple[str, float], ...]] = {
    "upper_color": (
        ("black", 0.17), ("white", 0.13), ("grey", 0.12), ("navy", 0.1), ("blue", 0.1),
        ("red", 0.1), ("green", 0.08), ("yellow", 0.07), ("pink", 0.07), ("purple", 0.06),
    ),
    "upper_pattern": (
        ("plain", 0.36), ("horizontal_stripes", 0.18), ("vertical_stripes", 0.12),
        ("checks", 0.14), ("logo", 0.2),
    ),
    "pattern_color": (
        ("white", 0.3), ("black", 0.25), ("red", 0.15), ("navy", 0.15), ("yellow", 0.15),
    ),
    "sleeves": (("long", 0.55), ("short", 0.45)),
    "lower_color": (
        ("black", 0.22), ("denim", 0.22), ("grey", 0.14), ("navy", 0.12), ("khaki", 0.1),
        ("beige", 0.08), ("brown", 0.06), ("white", 0.06),
    ),
    "lower_type": (("trousers", 0.6), ("shorts", 0.25), ("skirt", 0.15)),
    "shoes_color": (
        ("black", 0.35), ("white", 0.3), ("brown", 0.15), ("grey", 0.12), ("red", 0.08),
    ),
    "hair_color": (
        ("black", 0.32), ("dark_brown", 0.24), ("brown", 0.16), ("blonde", 0.12),
        ("grey", 0.08), ("auburn", 0.08),
    ),
    "hair_length": (("short", 0.6), ("long", 0.4)),
    "hat": (("none", 0.6), ("cap", 0.22), ("beanie", 0.18)),
    "hat_color": (
        ("black", 0.25), ("white", 0.2), ("red", 0.15), ("blue", 0.15), ("green", 0.1),
        ("beige", 0.15),
    ),
    "bag": (("none", 0.4), ("backpack", 0.35), ("shoulder_bag", 0.25)),
    "bag_color": (
        ("black", 0.3), ("brown", 0.2), ("grey", 0.15), ("red", 0.12), ("blue", 0.12),
        ("green", 0.11),
    ),
    "skin_tone": tuple((name, 0.2) for name in _SKIN_TONES),
    "height": tuple((name, 1 / 3) for name in _HEIGHT_SCALE),
    "build": (("slim", 0.25), ("average", 0.35), ("broad", 0.25), ("heavy", 0.15)),
    "leg_length": (("short", 0.3), ("average", 0.4), ("long", 0.3)),
    "head_size": (("small", 0.3), ("medium", 0.4), ("large", 0.3)),
}
_ATTRIBUTE_NAMES = tuple(_ATTRIBUTE_PALETTES)

# Muted scene colours for walls, floors and background objects.
_SCENE_COLORS: tuple[RGB, ...] = (
    (150, 146, 138), (170, 164, 150), (120, 124, 128), (100, 106, 100), (160, 142, 124),
    (132, 122, 110), (186, 184, 178), (92, 96, 106), (138, 146, 128), (112, 102, 94),
    (184, 172, 152), (84, 86, 84), (142, 142, 146), (166, 156, 140),
)
_WALL_TEXTURES = ("plain", "bricks", "windows", "foliage", "panels")
_FLOOR_TEXTURES = ("plain", "tiles", "crosswalk", "gradient")


@dataclass(frozen=True)
class _Camera:
    """Appearance model of one camera; all images it takes share these settings."""

    camera: int  # 1-based, as written in file names
    gain: float  # global illumination multiplier
    white_balance: tuple[float, float, float]  # per-channel gains, mean 1
    saturation: float  # 1 = unchanged, < 1 washes colours out
    gamma: float
    light_gradient: float  # relative brightness change from top to bottom of the crop
    blur_sigma: float  # Gaussian blur in output pixels
    noise_sigma: float  # additive Gaussian noise in grey levels (0..255)
    jpeg_quality: int
    scale: float  # typical person height / crop height
    misalign_prob: float  # chance that a crop cuts part of the person off
    occlusion_prob: float  # chance of a foreground occluder
    view_probs: tuple[float, float, float, float]  # over _VIEWS
    wall_colors: tuple[RGB, ...]  # each image picks one
    floor_colors: tuple[RGB, ...]
    horizon: float  # wall/floor boundary as a fraction of crop height
    wall_textures: tuple[str, ...]
    floor_textures: tuple[str, ...]
    clutter_colors: tuple[RGB, RGB, RGB]
    max_clutter: int  # background objects per image, at most


@dataclass(frozen=True)
class _Shot:
    """One image to write: where it goes and the keys that seed its randomness."""

    folder: str
    filename: str
    camera: int
    kind: str  # "identity", "distractor" or "junk"
    rng_keys: tuple[int, ...]
    pid: int = 0  # identity for kind == "identity"
    view: str = "front"  # preferred view of the tracklet this image belongs to


@dataclass(frozen=True)
class _Plan:
    """Everything decided before drawing: images, identities and cameras."""

    shots: list[_Shot]
    identities: list[dict[str, Any]]  # manifest records, one per pid
    attributes: list[dict[str, str]]  # attribute values of pid ``i + 1``
    cameras: list[_Camera]  # camera ``i + 1``


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def make_synthetic_reid(
    root: str | os.PathLike[str] | None = None,
    *,
    num_identities: int = 150,
    num_cameras: int = 6,
    image_size: tuple[int, int] = (128, 64),
    images_per_camera: tuple[int, int] = (2, 5),
    num_distractors: int = 30,
    num_junk: int = 15,
    train_fraction: float = 0.5,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Generate (or reuse) a synthetic pedestrian re-ID dataset in the Market-1501 layout.

    Files are named ``{pid:04d}_c{camera}s1_{frame:06d}_{box:02d}.jpg`` (camera 1-based), so
    ``^(-?\\d+)_c(\\d+)`` parses identity and camera as for Market-1501. Identities ``1..N``
    are split into disjoint train and test sets. Each identity is seen by a random subset
    of at least two cameras, with ``images_per_camera`` crops per camera. Test identities
    put all those crops in the gallery (``bounding_box_test``) and one extra crop per
    camera, for a random non-empty subset of their cameras, in ``query``; a query therefore
    always has a true match in another camera and never appears in the gallery. The
    gallery also holds ``num_distractors`` images with pid ``0000`` (people outside the
    identity set and empty background crops; loaders keep them as negatives) and
    ``num_junk`` images with pid ``-1`` (badly cut or tiny people; loaders drop them).

    With the defaults (150 identities, 6 cameras) 2,382 images (11 MB) are written, in
    about 3-4 s on two CPU cores (~1.5 ms per image).

    Caching: the manifest (``synthetic_manifest.json``) is written last and records every
    generation parameter and :data:`SYNTHETIC_FORMAT_VERSION`. If ``root`` already holds a
    complete dataset with identical parameters it is returned at once, untouched. Files are
    generated into a hidden temporary sibling of ``root`` and renamed into place at the
    end, so an interrupted run never leaves a dataset that looks complete.

    Output is deterministic: the same parameters give byte-identical files (for a given
    Pillow/libjpeg build).

    Args:
        root: Output folder. ``None`` uses ``default_cache_dir() / "synthetic" / <name>``
            with a name derived from all parameters, so differing settings never collide.
        num_identities: Number of labelled identities, 2..9999 (pids are 4 digits), with
            pids ``1..num_identities``.
        num_cameras: Number of cameras (>= 2); camera ids ``1..num_cameras``.
        image_size: ``(height, width)`` of every crop in pixels, each >= 16.
        images_per_camera: Inclusive ``(min, max)`` number of train/gallery crops of one
            identity in one camera, ``1 <= min <= max <= 249`` (frame numbers have 6
            digits). Queries come on top.
        num_distractors: Gallery images with pid ``0``, 0..999999.
        num_junk: Gallery images with pid ``-1``, 0..999999.
        train_fraction: Fraction of identities used for training, in ``(0, 1)``; both
            splits must end up non-empty.
        seed: Non-negative integer seed.
        overwrite: Replace an existing synthetic dataset at ``root`` whose parameters
            differ (or which is incomplete). Folders without a synthetic manifest are
            never deleted, even with ``overwrite=True``.
        progress: Show a tqdm progress bar while generating.

    Returns:
        The dataset root, holding ``bounding_box_train/``, ``query/``,
        ``bounding_box_test/`` and the manifest.

    Raises:
        ValueError: A parameter is out of range.
        FileExistsError: ``root`` holds a synthetic dataset with other parameters (and
            ``overwrite`` is false), or a non-empty folder that is not a synthetic dataset.
        NotADirectoryError: ``root`` exists and is a file.
    """
    params = _validated_parameters(
        num_identities=num_identities,
        num_cameras=num_cameras,
        image_size=image_size,
        images_per_camera=images_per_camera,
        num_distractors=num_distractors,
        num_junk=num_junk,
        train_fraction=train_fraction,
        seed=seed,
    )
    root_path = _default_root(params) if root is None else Path(root).expanduser()
    if _existing_dataset_matches(root_path, params, overwrite=overwrite):
        return root_path

    root_path.parent.mkdir(parents=True, exist_ok=True)
    staging = root_path.parent / f".{root_path.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        manifest = _generate(staging, params, progress=progress)
        _write_json_atomically(staging / SYNTHETIC_MANIFEST_NAME, manifest)
        _install(staging, root_path, params)
    except BaseException:
        # Also on KeyboardInterrupt: never leave a staging folder behind.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root_path


def synthetic_dataset_info(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the manifest of a dataset written by :func:`make_synthetic_reid`.

    Returns:
        A dict with keys ``format_version`` (int), ``parameters`` (the generation
        parameters), ``counts`` (images per folder, identities per split, distractors,
        junk), ``cameras`` (per-camera appearance settings), ``identities`` (per pid: split,
        cameras, query cameras and attribute values) and ``software`` (library versions).

    Raises:
        FileNotFoundError: ``root`` has no manifest (not a synthetic dataset, or generation
            never finished).
        ValueError: The manifest is not valid JSON or lacks the expected keys.
    """
    path = Path(root).expanduser() / SYNTHETIC_MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"No synthetic dataset manifest at {path}; expected a folder written by "
            "make_synthetic_reid()."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"Synthetic dataset manifest {path} is not valid JSON: {error}") from error
    required = ("format_version", "parameters", "counts", "cameras", "identities")
    missing = [key for key in required if not isinstance(manifest, dict) or key not in manifest]
    if missing:
        raise ValueError(f"Synthetic dataset manifest {path} lacks the keys {missing}.")
    return manifest


# --------------------------------------------------------------------------------------
# Parameters, caching and installation
# --------------------------------------------------------------------------------------


def _validated_parameters(
    *,
    num_identities: int,
    num_cameras: int,
    image_size: tuple[int, int],
    images_per_camera: tuple[int, int],
    num_distractors: int,
    num_junk: int,
    train_fraction: float,
    seed: int,
) -> dict[str, Any]:
    """Check the arguments and return them as the JSON-ready dict stored in the manifest."""

    def require_pair(name: str, value: object) -> tuple[int, int]:
        if (
            not isinstance(value, Sequence)
            or isinstance(value, str)
            or len(value) != 2
            or not all(is_integer(v) for v in value)
        ):
            raise ValueError(f"{name} must be a pair of integers, got {value!r}.")
        return int(value[0]), int(value[1])

    # Upper bounds keep file names in the Market-1501 widths: 4-digit pids, 6-digit frames.
    for name, value, minimum, maximum in (
        ("num_identities", num_identities, 2, 9999),
        ("num_cameras", num_cameras, 2, None),
        ("num_distractors", num_distractors, 0, 999_999),
        ("num_junk", num_junk, 0, 999_999),
        ("seed", seed, 0, None),
    ):
        check_int(name, value, minimum=minimum)
        if maximum is not None and value > maximum:
            raise ValueError(f"{name} must be <= {maximum}, got {value!r}.")
    height, width = require_pair("image_size", image_size)
    if height < 16 or width < 16:
        raise ValueError(
            f"image_size must be (height, width) with both >= 16 pixels, got {image_size!r}."
        )
    low, high = require_pair("images_per_camera", images_per_camera)
    if not 1 <= low <= high <= _MAX_IMAGES_PER_CAMERA:
        raise ValueError(
            f"images_per_camera must be (min, max) with 1 <= min <= max <= "
            f"{_MAX_IMAGES_PER_CAMERA}, got {images_per_camera!r}."
        )
    check_in_range(
        "train_fraction", train_fraction, 0, 1, low_inclusive=False, high_inclusive=False
    )
    num_train = round(float(train_fraction) * int(num_identities))
    if not 1 <= num_train <= int(num_identities) - 1:
        raise ValueError(
            f"train_fraction={train_fraction!r} with num_identities={num_identities} gives "
            f"{num_train} training identities; both splits need at least one."
        )
    return {
        "format_version": SYNTHETIC_FORMAT_VERSION,
        "num_identities": int(num_identities),
        "num_cameras": int(num_cameras),
        "image_size": [height, width],
        "images_per_camera": [low, high],
        "num_distractors": int(num_distractors),
        "num_junk": int(num_junk),
        "train_fraction": float(train_fraction),
        "seed": int(seed),
    }


def _default_root(params: Mapping[str, Any]) -> Path:
    """Cache folder whose name is readable and changes with any parameter."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    height, width = params["image_size"]
    name = (
        f"ids{params['num_identities']}_cams{params['num_cameras']}_{height}x{width}"
        f"_seed{params['seed']}_{digest}"
    )
    return default_cache_dir() / "synthetic" / name


def _existing_dataset_matches(root: Path, params: Mapping[str, Any], *, overwrite: bool) -> bool:
    """True if ``root`` already holds this exact dataset; raise if it must not be replaced."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise NotADirectoryError(f"Synthetic dataset root {root} exists and is not a folder.")
    if not (root / SYNTHETIC_MANIFEST_NAME).is_file():
        if any(root.iterdir()):
            raise FileExistsError(
                f"{root} is a non-empty folder without {SYNTHETIC_MANIFEST_NAME}; refusing to "
                "write a synthetic dataset over it. Pass an empty or new folder."
            )
        return False
    try:
        manifest = synthetic_dataset_info(root)
    except ValueError as error:
        if overwrite:
            return False
        raise FileExistsError(
            f"{root} holds an unreadable synthetic manifest ({error}); pass overwrite=True "
            "to regenerate it."
        ) from error
    differences = _parameter_differences(manifest["parameters"], params)
    if not differences:
        problem = _missing_files(root, manifest)
        if problem is None:
            return True
        if not overwrite:
            raise FileExistsError(
                f"Synthetic dataset at {root} is incomplete ({problem}); pass overwrite=True "
                "to regenerate it."
            )
        return False
    if not overwrite:
        raise FileExistsError(
            f"{root} holds a synthetic dataset generated with different parameters "
            f"({'; '.join(differences)}). Pass overwrite=True to replace it, or choose "
            "another root."
        )
    return False


def _parameter_differences(stored: object, wanted: Mapping[str, Any]) -> list[str]:
    if not isinstance(stored, dict):
        return [f"stored parameters are {stored!r}"]
    keys = sorted(set(stored) | set(wanted))
    return [
        f"{key}: existing {stored.get(key)!r}, requested {wanted.get(key)!r}"
        for key in keys
        if stored.get(key) != wanted.get(key)
    ]


def _missing_files(root: Path, manifest: Mapping[str, Any]) -> str | None:
    """Cheap completeness check: the folders hold as many JPEGs as the manifest says."""
    counts = manifest["counts"]
    for folder, key in ((TRAIN_DIR, "train_images"), (QUERY_DIR, "query_images"),
                        (GALLERY_DIR, "gallery_images")):
        directory = root / folder
        found = sum(1 for _ in directory.glob("*.jpg")) if directory.is_dir() else 0
        if found != counts.get(key):
            return f"{folder}/ has {found} images, manifest says {counts.get(key)}"
    return None


def _write_json_atomically(path: Path, payload: Mapping[str, Any]) -> None:
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def _install(staging: Path, root: Path, params: Mapping[str, Any]) -> None:
    """Move the finished ``staging`` folder to ``root``, replacing what is there."""
    try:
        replace_directory(staging, root)
    except OSError:
        # Another process finished the same dataset first: keep theirs if it matches.
        if not _existing_dataset_matches(root, params, overwrite=False):
            raise
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Planning: cameras, identities, splits, file names
# --------------------------------------------------------------------------------------


def _rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, *keys]))


def _round(value: float) -> float:
    # Rounded so that the manifest stays readable; the camera uses the rounded values too.
    return round(float(value), 4)


def _mix_with_grey(color: np.ndarray, weight: float) -> RGB:
    r, g, b = (int(c) for c in (1.0 - weight) * color + weight * 128)
    return r, g, b


def _make_camera(seed: int, camera: int) -> _Camera:
    rng = _rng(seed, _STREAM_CAMERA, camera)
    white_balance = rng.uniform(0.91, 1.09, size=3)
    white_balance = white_balance / white_balance.mean()
    # Each camera mostly sees people walking one way (Dirichlet), with some of everything.
    views = 0.8 * rng.dirichlet(np.full(len(_VIEWS), 0.8)) + 0.2 / len(_VIEWS)
    # Scenes share one muted palette and each camera sees several wall/floor colours, so
    # the background hints at the camera without dominating a colour histogram.
    scene = [_SCENE_COLORS[i] for i in rng.permutation(len(_SCENE_COLORS))[:6]]
    walls = tuple(_jitter_color(c, rng, 12) for c in scene[:3])
    floors = tuple(_jitter_color(c, rng, 12) for c in scene[3:])
    # Street furniture is mostly muted: pull random colours halfway to mid-grey.
    clutter = [_mix_with_grey(rng.integers(30, 230, size=3), 0.45) for _ in range(3)]
    views = views / views.sum()
    return _Camera(
        camera=camera,
        gain=round(float(rng.uniform(0.82, 1.12)), 4),
        white_balance=(_round(white_balance[0]), _round(white_balance[1]),
                       _round(white_balance[2])),
        saturation=round(float(rng.uniform(0.82, 1.08)), 4),
        gamma=round(float(rng.uniform(0.92, 1.1)), 4),
        light_gradient=round(float(rng.uniform(-0.15, 0.15)), 4),
        blur_sigma=round(float(rng.uniform(0.0, 0.9)), 4),
        noise_sigma=round(float(rng.uniform(1.5, 7.0)), 4),
        jpeg_quality=int(rng.integers(72, 96)),
        scale=round(float(rng.uniform(0.84, 0.94)), 4),
        misalign_prob=round(float(rng.uniform(0.05, 0.2)), 4),
        occlusion_prob=round(float(rng.uniform(0.08, 0.3)), 4),
        view_probs=(_round(views[0]), _round(views[1]), _round(views[2]), _round(views[3])),
        wall_colors=walls,
        floor_colors=floors,
        horizon=round(float(rng.uniform(0.42, 0.72)), 4),
        wall_textures=tuple(str(t) for t in rng.choice(_WALL_TEXTURES, 2, replace=False)),
        floor_textures=tuple(str(t) for t in rng.choice(_FLOOR_TEXTURES, 2, replace=False)),
        clutter_colors=(clutter[0], clutter[1], clutter[2]),
        max_clutter=int(rng.integers(1, 5)),
    )


def _sample_view(rng: np.random.Generator, camera: _Camera) -> str:
    probs = np.asarray(camera.view_probs)
    return _VIEWS[int(rng.choice(len(_VIEWS), p=probs / probs.sum()))]


def _palette(attribute: str) -> tuple[list[str], np.ndarray]:
    values = [value for value, _ in _ATTRIBUTE_PALETTES[attribute]]
    weights = np.array([weight for _, weight in _ATTRIBUTE_PALETTES[attribute]])
    return values, weights / weights.sum()


def _sample_free_attributes(rng: np.random.Generator) -> dict[str, str]:
    """Attributes of a person outside the identity set (distractors, junk)."""
    attributes = {}
    for attribute in _ATTRIBUTE_NAMES:
        values, weights = _palette(attribute)
        attributes[attribute] = values[int(rng.choice(len(values), p=weights))]
    return _fix_pattern_contrast(attributes, rng)


def _fix_pattern_contrast(attributes: dict[str, str], rng: np.random.Generator) -> dict[str, str]:
    if attributes["pattern_color"] == attributes["upper_color"]:
        values, _ = _palette("pattern_color")
        others = [v for v in values if v != attributes["upper_color"]]
        attributes["pattern_color"] = others[int(rng.integers(len(others)))]
    return attributes


def _assign_attributes(seed: int, num_identities: int) -> list[dict[str, str]]:
    """Attribute table for pids ``1..num_identities`` (row ``pid - 1``).

    Values follow the palette priors, but when there are at least twice as many
    identities as palette entries every value is used by at least two identities: colour
    or any single attribute must never give an identity away. Later fix-ups only swap
    values between identities, which keeps those counts.
    """
    rng = _rng(seed, _STREAM_ATTRIBUTES)
    columns: dict[str, list[str]] = {}
    for attribute in _ATTRIBUTE_NAMES:
        values, weights = _palette(attribute)
        k = len(values)
        if num_identities >= 2 * k:
            drawn = np.concatenate(
                [np.repeat(np.arange(k), 2), rng.choice(k, size=num_identities - 2 * k, p=weights)]
            )
        else:
            drawn = rng.choice(k, size=num_identities, p=weights)
        columns[attribute] = [values[i] for i in rng.permutation(drawn)]

    # A stripe in the shirt's own colour would be invisible: swap pattern colours with
    # another identity for which the swap creates no new clash (redraw if there is none,
    # which only happens with a handful of identities).
    rows = [{a: columns[a][i] for a in _ATTRIBUTE_NAMES} for i in range(num_identities)]
    for i, row in enumerate(rows):
        if _has_contrast(row):
            continue
        for j in rng.permutation(num_identities):
            if _swap_keeps_contrast(rows, i, int(j), "pattern_color"):
                row["pattern_color"], rows[j]["pattern_color"] = (
                    rows[j]["pattern_color"], row["pattern_color"])
                break
        else:
            _fix_pattern_contrast(row, rng)

    _make_distinct(rows, rng)
    return rows


def _make_distinct(rows: list[dict[str, str]], rng: np.random.Generator) -> None:
    """Swap attribute values between rows (in place) until no two rows are identical.

    Identical rows would be indistinguishable identities (~1e-9 per pair with the default
    palettes). Swaps keep how often each value is used and never hide a pattern; only
    when every row has the same value is a value redrawn.
    """
    while (i := _first_duplicate(rows)) is not None:
        attribute = _ATTRIBUTE_NAMES[int(rng.integers(len(_ATTRIBUTE_NAMES)))]
        partners = [j for j in range(len(rows))
                     if rows[j][attribute] != rows[i][attribute]
                     and _swap_keeps_contrast(rows, i, j, attribute)]
        if partners:
            j = partners[int(rng.integers(len(partners)))]
            rows[i][attribute], rows[j][attribute] = rows[j][attribute], rows[i][attribute]
        elif attribute not in ("upper_color", "pattern_color"):
            # Every identity has the same value (tiny datasets only): redraw this one.
            values, _ = _palette(attribute)
            others = [v for v in values if v != rows[i][attribute]]
            rows[i][attribute] = others[int(rng.integers(len(others)))]


def _has_contrast(row: Mapping[str, str]) -> bool:
    return row["pattern_color"] != row["upper_color"]


def _swap_keeps_contrast(rows: list[dict[str, str]], i: int, j: int, attribute: str) -> bool:
    """Whether swapping ``attribute`` between rows ``i`` and ``j`` leaves both patterns visible."""
    first, second = dict(rows[i]), dict(rows[j])
    first[attribute], second[attribute] = second[attribute], first[attribute]
    return _has_contrast(first) and _has_contrast(second)


def _first_duplicate(rows: list[dict[str, str]]) -> int | None:
    """Index of the first row whose attributes all equal an earlier row's, if any."""
    seen: set[tuple[str, ...]] = set()
    for i, row in enumerate(rows):
        signature = tuple(row[a] for a in _ATTRIBUTE_NAMES)
        if signature in seen:
            return i
        seen.add(signature)
    return None


def _frame_numbers(rng: np.random.Generator, count: int) -> list[int]:
    """Increasing frame numbers of one tracklet (6 digits for ``count <= 250``)."""
    start = int(rng.integers(0, 400_000))
    gaps = rng.integers(20, 2_400, size=count)
    return [start + int(v) for v in np.cumsum(gaps)]


def _image_name(pid: int, camera: int, frame: int, box: int) -> str:
    identity = "-1" if pid == -1 else f"{pid:04d}"
    return f"{identity}_c{camera}s1_{frame:06d}_{box:02d}.jpg"


def _plan(params: Mapping[str, Any]) -> _Plan:
    """Decide every image to write (cheap: nothing is drawn here)."""
    seed = params["seed"]
    num_ids = params["num_identities"]
    num_cameras = params["num_cameras"]
    low, high = params["images_per_camera"]
    attributes = _assign_attributes(seed, num_ids)

    order = _rng(seed, _STREAM_SPLIT).permutation(np.arange(1, num_ids + 1))
    num_train = round(params["train_fraction"] * num_ids)
    train_ids = {int(pid) for pid in order[:num_train]}

    cameras = [_make_camera(seed, c) for c in range(1, num_cameras + 1)]
    shots: list[_Shot] = []
    identities: list[dict[str, Any]] = []
    for pid in range(1, num_ids + 1):
        rng = _rng(seed, _STREAM_IDENTITY, pid)
        split = "train" if pid in train_ids else "test"
        num_seen = int(rng.integers(2, num_cameras + 1))
        seen = sorted(int(c) for c in rng.choice(np.arange(1, num_cameras + 1), num_seen,
                                                 replace=False))
        query_cameras: list[int] = []
        if split == "test":
            num_query = int(rng.integers(1, num_seen + 1))
            query_cameras = sorted(int(c) for c in rng.choice(seen, num_query, replace=False))
        for camera in seen:
            count = int(rng.integers(low, high + 1))
            has_query = camera in query_cameras
            frames = _frame_numbers(rng, count + int(has_query))
            # One walking direction per tracklet; individual images may still turn.
            view = _sample_view(rng, cameras[camera - 1])
            # The query is a random frame of the tracklet, not always the first one.
            query_index = int(rng.integers(len(frames))) if has_query else -1
            for index, frame in enumerate(frames):
                if index == query_index:
                    folder = QUERY_DIR
                else:
                    folder = TRAIN_DIR if split == "train" else GALLERY_DIR
                box = int(rng.integers(1, 4))
                shots.append(
                    _Shot(
                        folder=folder,
                        filename=_image_name(pid, camera, frame, box),
                        camera=camera,
                        kind="identity",
                        rng_keys=(_STREAM_IMAGE, pid, camera, index),
                        pid=pid,
                        view=view,
                    )
                )
        identities.append(
            {
                "pid": pid,
                "split": split,
                "cameras": seen,
                "query_cameras": query_cameras,
                "attributes": attributes[pid - 1],
            }
        )

    for kind, stream, pid, count in (
        ("distractor", _STREAM_DISTRACTOR, 0, params["num_distractors"]),
        ("junk", _STREAM_JUNK, -1, params["num_junk"]),
    ):
        for index in range(count):
            rng = _rng(seed, stream, index)
            # 7919 is coprime with 10**6, so frames are distinct for up to 10**6 images.
            frame = (index * 7919 + 101) % 1_000_000
            camera = int(rng.integers(1, num_cameras + 1))
            shots.append(
                _Shot(
                    folder=GALLERY_DIR,
                    filename=_image_name(pid, camera, frame, int(rng.integers(1, 6))),
                    camera=camera,
                    kind=kind,
                    # The trailing key separates drawing from the naming draws above.
                    rng_keys=(stream, index, 1),
                )
            )
    return _Plan(shots=shots, identities=identities, attributes=attributes, cameras=cameras)


def _generate(staging: Path, params: Mapping[str, Any], *, progress: bool) -> dict[str, Any]:
    """Write every image into ``staging`` and return the manifest (not yet written)."""
    plan = _plan(params)
    shots, identities = plan.shots, plan.identities
    height, width = params["image_size"]
    for folder in (TRAIN_DIR, QUERY_DIR, GALLERY_DIR):
        (staging / folder).mkdir()

    with tqdm(total=len(shots), desc="synthetic re-ID", unit="img", disable=not progress) as bar:
        for shot in shots:
            rng = _rng(params["seed"], *shot.rng_keys)
            camera = plan.cameras[shot.camera - 1]
            person = plan.attributes[shot.pid - 1] if shot.kind == "identity" else None
            image = _render(camera, person, rng, kind=shot.kind, view=shot.view,
                            size=(width, height))
            _save_jpeg(image, staging / shot.folder / shot.filename, camera.jpeg_quality)
            bar.update()

    counts: dict[str, int] = {
        "train_images": sum(s.folder == TRAIN_DIR for s in shots),
        "query_images": sum(s.folder == QUERY_DIR for s in shots),
        "gallery_images": sum(s.folder == GALLERY_DIR for s in shots),
        "train_identities": sum(r["split"] == "train" for r in identities),
        "test_identities": sum(r["split"] == "test" for r in identities),
        "distractors": sum(s.kind == "distractor" for s in shots),
        "junk": sum(s.kind == "junk" for s in shots),
    }
    return {
        "format_version": SYNTHETIC_FORMAT_VERSION,
        "generator": f"{__name__}.make_synthetic_reid",
        "parameters": dict(params),
        "counts": counts,
        "cameras": [asdict(camera) for camera in plan.cameras],
        "identities": identities,
        "software": {"numpy": np.__version__, "pillow": PIL.__version__},
    }


def _save_jpeg(image: Image.Image, path: Path, quality: int) -> None:
    image.save(path, format="JPEG", quality=quality)


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


def _jitter_color(color: RGB, rng: np.random.Generator, amount: float) -> RGB:
    values = np.clip(np.asarray(color, dtype=np.float64) + rng.uniform(-amount, amount, 3), 0, 255)
    return int(values[0]), int(values[1]), int(values[2])


def _shade(color: RGB, factor: float) -> RGB:
    r, g, b = (int(min(255.0, max(0.0, c * factor))) for c in color)
    return r, g, b


def _render(
    camera: _Camera,
    attributes: Mapping[str, str] | None,
    rng: np.random.Generator,
    *,
    kind: str,
    view: str,
    size: tuple[int, int],
) -> Image.Image:
    """Draw one crop of ``size = (width, height)`` pixels as a camera would record it."""
    width, height = size
    canvas_w, canvas_h = width * _SUPERSAMPLE, height * _SUPERSAMPLE
    image = Image.new("RGB", (canvas_w, canvas_h))
    draw = ImageDraw.Draw(image)
    _draw_background(draw, camera, rng, canvas_w, canvas_h)

    if kind == "distractor" and rng.random() < 0.4:
        person = None  # a false detection: background and clutter only
    elif kind == "identity":
        person = attributes
    else:
        person = _sample_free_attributes(rng)

    if person is not None:
        # Tracklets keep their walking direction most of the time.
        if kind == "identity" and rng.random() < 0.75:
            pose_view = view
        else:
            pose_view = _sample_view(rng, camera)
        person_h = canvas_h * camera.scale * _HEIGHT_SCALE[person["height"]]
        person_h *= rng.uniform(0.93, 1.05)
        bottom = canvas_h * rng.uniform(0.96, 1.0)
        center_x = canvas_w * (0.5 + rng.uniform(-0.07, 0.07))
        if kind == "junk":
            person_h, bottom, center_x = _junk_framing(rng, person_h, canvas_w, canvas_h)
        elif rng.random() < camera.misalign_prob:
            person_h, bottom, center_x = _misaligned_framing(
                rng, person_h, bottom, center_x, canvas_w, canvas_h
            )
        _draw_person(
            draw,
            person,
            rng,
            center_x=center_x,
            top=bottom - person_h,
            height=person_h,
            view=pose_view,
        )

    if rng.random() < camera.occlusion_prob:
        _draw_occluder(draw, camera, rng, canvas_w, canvas_h)

    image = image.reduce(_SUPERSAMPLE)
    blur = camera.blur_sigma * rng.uniform(0.7, 1.3)
    if kind == "junk" and rng.random() < 0.5:
        blur += 2.0
    if blur > 0.2:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    return _apply_sensor(image, camera, rng)


def _misaligned_framing(
    rng: np.random.Generator,
    person_h: float,
    bottom: float,
    center_x: float,
    canvas_w: int,
    canvas_h: int,
) -> tuple[float, float, float]:
    """Detector errors: the box is shifted sideways, cuts the head or feet, or is too tight."""
    mode = int(rng.integers(4))
    if mode == 0:
        center_x = canvas_w * (0.5 + rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.34))
    elif mode == 1:
        bottom = canvas_h + person_h * rng.uniform(0.1, 0.25)
    elif mode == 2:
        # The box starts below the top of the head.
        person_h = bottom + person_h * rng.uniform(0.06, 0.16)
    else:
        person_h *= rng.uniform(1.15, 1.35)
        bottom = canvas_h + person_h * rng.uniform(0.05, 0.15)
    return person_h, bottom, center_x


def _junk_framing(
    rng: np.random.Generator, person_h: float, canvas_w: int, canvas_h: int
) -> tuple[float, float, float]:
    """Unusable boxes: a tiny far-away person, or a box holding only a fragment."""
    if rng.random() < 0.4:
        small = person_h * rng.uniform(0.3, 0.5)
        return small, canvas_h * rng.uniform(0.6, 0.95), canvas_w * rng.uniform(0.25, 0.75)
    big = person_h * rng.uniform(1.6, 2.4)
    bottom = canvas_h + big * rng.uniform(0.0, 0.5)
    center_x = canvas_w * (0.5 + rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.6))
    return big, bottom, center_x


def _draw_background(
    draw: ImageDraw.ImageDraw, camera: _Camera, rng: np.random.Generator, w: int, h: int
) -> None:
    """Wall, floor, their textures and some background objects of this camera's scene."""
    horizon = int(h * (camera.horizon + rng.uniform(-0.04, 0.04)))
    # Half the crops show the camera's usual scene colours, the rest any scene colour (a
    # camera pans over varied surroundings); brightness varies with sun and shade.
    wall, floor = (
        colors[int(rng.integers(len(colors)))] if rng.random() < 0.5
        else _SCENE_COLORS[int(rng.integers(len(_SCENE_COLORS)))]
        for colors in (camera.wall_colors, camera.floor_colors)
    )
    wall = _shade(wall, rng.uniform(0.88, 1.12))
    floor = _shade(floor, rng.uniform(0.88, 1.12))
    wall_texture = camera.wall_textures[int(rng.integers(len(camera.wall_textures)))]
    floor_texture = camera.floor_textures[int(rng.integers(len(camera.floor_textures)))]
    draw.rectangle((0, 0, w, horizon), fill=wall)
    draw.rectangle((0, horizon, w, h), fill=floor)
    unit = max(4, h // 16)
    offset_x = int(rng.integers(0, 2 * unit))
    offset_y = int(rng.integers(0, unit))
    dark_wall = _shade(wall, 0.8)
    if wall_texture == "bricks":
        for row, y in enumerate(range(offset_y - unit, horizon, unit // 2 + 2)):
            draw.line((0, y, w, y), fill=dark_wall, width=1)
            shift = unit if row % 2 else 0
            for x in range(offset_x - 2 * unit + shift, w, 2 * unit):
                draw.line((x, y, x, y + unit // 2 + 2), fill=dark_wall, width=1)
    elif wall_texture == "windows":
        glass = _shade(wall, 1.25)
        for x in range(offset_x - 2 * unit, w, 3 * unit):
            for y in range(offset_y, horizon - unit, 3 * unit):
                draw.rectangle((x, y, x + 2 * unit, y + 2 * unit), fill=glass, outline=dark_wall)
    elif wall_texture == "foliage":
        for _ in range(10):
            cx, cy = rng.uniform(0, w), rng.uniform(0, horizon)
            r = rng.uniform(0.5, 1.6) * unit
            leaf = _jitter_color((92, 110, 84), rng, 16)
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=leaf)
    elif wall_texture == "panels":
        for x in range(offset_x, w, 2 * unit + 3):
            draw.line((x, 0, x, horizon), fill=dark_wall, width=2)
    draw.line((0, horizon, w, horizon), fill=_shade(floor, 0.7), width=2)

    dark_floor = _shade(floor, 0.82)
    if floor_texture == "tiles":
        for y in range(horizon + offset_y, h, unit + unit // 2):
            draw.line((0, y, w, y), fill=dark_floor, width=1)
        for x in range(offset_x - 2 * unit, w, 2 * unit):
            draw.line((x, horizon, x - (x - w / 2) * 0.3, h), fill=dark_floor, width=1)
    elif floor_texture == "crosswalk":
        stripe = _shade(floor, 1.35)
        for y in range(horizon + offset_y, h, 2 * unit):
            draw.rectangle((0, y, w, y + unit), fill=stripe)
    elif floor_texture == "gradient":
        for step in range(6):
            y0 = horizon + (h - horizon) * step / 6
            draw.rectangle((0, y0, w, h), fill=_shade(floor, 1.0 - 0.04 * step))

    for _ in range(int(rng.integers(0, camera.max_clutter + 1))):
        color = _jitter_color(camera.clutter_colors[int(rng.integers(3))], rng, 12)
        kind = int(rng.integers(4))
        x = rng.uniform(-0.1, 1.0) * w
        if kind == 0:  # pole or pillar
            pw = rng.uniform(0.04, 0.12) * w
            draw.rectangle((x, 0, x + pw, horizon + rng.uniform(0.1, 0.3) * h), fill=color)
        elif kind == 1:  # bin, box or bench on the floor
            bw, bh = rng.uniform(0.2, 0.45) * w, rng.uniform(0.08, 0.2) * h
            base = horizon + rng.uniform(0.02, 0.15) * h
            draw.rectangle((x, base - bh, x + bw, base), fill=color, outline=_shade(color, 0.7))
        elif kind == 2:  # parked car seen at the edge of the crop
            cw, ch = rng.uniform(0.5, 0.9) * w, rng.uniform(0.12, 0.2) * h
            base = horizon + rng.uniform(0.05, 0.15) * h
            draw.rounded_rectangle((x, base - ch, x + cw, base), radius=ch / 3, fill=color)
            draw.rectangle((x + cw * 0.2, base - ch * 0.95, x + cw * 0.7, base - ch * 0.6),
                           fill=_shade(color, 0.55))
        else:  # sign or poster on the wall
            sw, sh = rng.uniform(0.15, 0.35) * w, rng.uniform(0.06, 0.14) * h
            y = rng.uniform(0.05, 0.6) * horizon
            draw.rectangle((x, y, x + sw, y + sh), fill=color)


def _draw_person(
    draw: ImageDraw.ImageDraw,
    attributes: Mapping[str, str],
    rng: np.random.Generator,
    *,
    center_x: float,
    top: float,
    height: float,
    view: str,
) -> None:
    """Draw a pedestrian whose head top is at ``top`` and soles at ``top + height`` (px)."""
    skin = _jitter_color(_SKIN_TONES[attributes["skin_tone"]], rng, 6)
    upper = _jitter_color(_COLORS[attributes["upper_color"]], rng, 8)
    secondary = _jitter_color(_COLORS[attributes["pattern_color"]], rng, 8)
    lower = _jitter_color(_COLORS[attributes["lower_color"]], rng, 8)
    shoes = _COLORS[attributes["shoes_color"]]
    hair = _COLORS[attributes["hair_color"]]
    bag = _COLORS[attributes["bag_color"]]
    hat = _COLORS[attributes["hat_color"]]

    side = view in ("left", "right")
    facing = -1.0 if view == "left" else 1.0  # +x is the direction a side view looks at
    cx = center_x
    head_h = height * _HEAD_FRACTION[attributes["head_size"]]
    head_w = head_h * 0.8
    torso_w = height * _BUILD_WIDTH[attributes["build"]] * (0.62 if side else 1.0)
    shoulder_y = top + head_h + height * 0.025
    hip_y = top + height * (1.0 - _LEG_FRACTION[attributes["leg_length"]])
    foot_y = top + height
    knee_y = (hip_y + foot_y) / 2
    torso_h = hip_y - shoulder_y
    # Heavier builds get thicker limbs, but limbs never vanish at small scales.
    leg_w = max(2.0, height * 0.06 + height * _BUILD_WIDTH[attributes["build"]] * 0.14)
    arm_w = max(2.0, leg_w * 0.72)
    shoe_h = max(2.0, height * 0.028)

    # Pose: stride and arm swing vary per image; side views walk with visible strides.
    stride = height * (rng.uniform(0.04, 0.16) if side else rng.uniform(0.0, 0.04))
    swing = rng.uniform(0.1, 0.5) if side else rng.uniform(0.05, 0.2)

    if view == "front" and attributes["hair_length"] == "long":
        draw.rectangle(
            (cx - head_w * 0.6, top + head_h * 0.35, cx + head_w * 0.6, shoulder_y + height * 0.07),
            fill=hair,
        )
    if side and attributes["bag"] == "backpack":
        back_x = cx - facing * torso_w / 2
        depth = torso_w * 0.75
        x0, x1 = sorted((back_x - facing * depth, back_x + facing * torso_w * 0.3))
        draw.rounded_rectangle(
            (x0, shoulder_y + torso_h * 0.05, x1, shoulder_y + torso_h * 0.85),
            radius=depth * 0.25,
            fill=bag,
        )

    # Legs: (hip, foot) pairs.
    if side:
        legs = [((cx, hip_y), (cx + facing * stride, foot_y - shoe_h)),
                ((cx, hip_y), (cx - facing * stride, foot_y - shoe_h))]
    else:
        spread = torso_w * 0.2
        legs = [((cx - spread, hip_y), (cx - spread - stride, foot_y - shoe_h)),
                ((cx + spread, hip_y), (cx + spread + stride, foot_y - shoe_h))]
    lower_type = attributes["lower_type"]
    for (hx, hy), (fx, fy) in legs:
        if lower_type == "trousers":
            draw.line((hx, hy, fx, fy), fill=lower, width=round(leg_w))
        else:
            draw.line((hx, hy, fx, fy), fill=skin, width=round(leg_w * 0.85))
            if lower_type == "shorts":
                kx, ky = hx + (fx - hx) * 0.45, hy + (fy - hy) * 0.45
                draw.line((hx, hy, kx, ky), fill=lower, width=round(leg_w * 1.1))
        shoe_len = leg_w * (1.6 if side else 1.15)
        sx0 = fx - shoe_len / 2 + (facing * shoe_len * 0.25 if side else 0.0)
        draw.ellipse((sx0, fy - shoe_h * 0.6, sx0 + shoe_len, fy + shoe_h), fill=shoes)
    if lower_type == "skirt":
        flare = torso_w * 0.75
        waist_y = hip_y - height * 0.03
        draw.polygon(
            [(cx - torso_w * 0.45, waist_y), (cx + torso_w * 0.45, waist_y),
             (cx + flare, knee_y), (cx - flare, knee_y)],
            fill=lower,
        )
    else:
        draw.rectangle(
            (cx - torso_w * 0.45, hip_y - height * 0.03, cx + torso_w * 0.45, hip_y + leg_w * 0.5),
            fill=lower,
        )

    # Torso with its pattern.
    x0, x1 = cx - torso_w / 2, cx + torso_w / 2
    y0, y1 = shoulder_y, hip_y + height * 0.01
    draw.rounded_rectangle((x0, y0, x1, y1), radius=torso_w * 0.22, fill=upper)
    _draw_pattern(draw, attributes["upper_pattern"], secondary, view,
                  (x0 + 1, y0 + torso_w * 0.08, x1 - 1, y1), height)

    # Bags drawn over the torso.
    if attributes["bag"] == "backpack" and view == "back":
        draw.rounded_rectangle(
            (cx - torso_w * 0.38, shoulder_y + torso_h * 0.06,
             cx + torso_w * 0.38, shoulder_y + torso_h * 0.88),
            radius=torso_w * 0.12,
            fill=bag,
            outline=_shade(bag, 0.6),
        )
        draw.rectangle(
            (cx - torso_w * 0.25, shoulder_y + torso_h * 0.5,
             cx + torso_w * 0.25, shoulder_y + torso_h * 0.78),
            fill=_shade(bag, 0.8),
        )
    elif attributes["bag"] == "backpack" and view == "front":
        strap = max(1, round(torso_w * 0.09))
        for sign in (-1, 1):
            draw.line((cx + sign * torso_w * 0.28, shoulder_y,
                       cx + sign * torso_w * 0.3, shoulder_y + torso_h * 0.65),
                      fill=bag, width=strap)
    elif attributes["bag"] == "backpack":
        draw.line((cx, shoulder_y, cx - facing * torso_w * 0.15, shoulder_y + torso_h * 0.6),
                  fill=bag, width=max(1, round(torso_w * 0.12)))

    # Arms: shoulder -> hand, swinging about the vertical.
    arm_len = height * 0.36
    if side:
        angle = facing * swing * rng.choice([-1.0, 1.0])
        arms = [((cx, shoulder_y + arm_w * 0.5), angle)]
    else:
        arms = [((cx - torso_w / 2 + arm_w * 0.35, shoulder_y + arm_w * 0.5), -swing),
                ((cx + torso_w / 2 - arm_w * 0.35, shoulder_y + arm_w * 0.5), swing)]
    sleeve = _shade(upper, 0.88)  # slightly darker so arms read against the torso
    for (sx, sy), angle in arms:
        hx, hy = sx + math.sin(angle) * arm_len, sy + math.cos(angle) * arm_len
        if attributes["sleeves"] == "long":
            draw.line((sx, sy, hx, hy), fill=sleeve, width=round(arm_w))
        else:
            ex, ey = sx + (hx - sx) * 0.4, sy + (hy - sy) * 0.4
            draw.line((sx, sy, hx, hy), fill=skin, width=round(arm_w * 0.85))
            draw.line((sx, sy, ex, ey), fill=sleeve, width=round(arm_w * 1.1))
        r = arm_w * 0.55
        draw.ellipse((hx - r, hy - r, hx + r, hy + r), fill=skin)

    if attributes["bag"] == "shoulder_bag":
        # Strap across the chest; the bag hangs at the hip on the side away from the
        # strap's shoulder (mirrored when seen from behind).
        hang = facing * 0.2 if side else (1.0 if view == "front" else -1.0)
        draw.line((cx - hang * torso_w * 0.4, shoulder_y,
                   cx + hang * torso_w * 0.45, hip_y - torso_h * 0.1),
                  fill=_shade(bag, 0.8), width=max(1, round(torso_w * 0.06)))
        bx = cx + hang * torso_w * 0.5
        bw, bh = height * 0.1, height * 0.085
        draw.rounded_rectangle((bx - bw / 2, hip_y - bh * 0.8, bx + bw / 2, hip_y + bh * 0.2),
                               radius=bw * 0.15, fill=bag)

    _draw_head(draw, attributes, view, facing, cx, top, head_w, head_h, shoulder_y, height,
               skin, hair, hat)


def _draw_pattern(
    draw: ImageDraw.ImageDraw,
    pattern: str,
    color: RGB,
    view: str,
    box: tuple[float, float, float, float],
    height: float,
) -> None:
    x0, y0, x1, y1 = box
    period = max(4.0, height * 0.05)
    if pattern == "horizontal_stripes":
        for y in np.arange(y0 + period * 0.3, y1, period):
            _fill_clipped(draw, (x0, y, x1, y + period * 0.45), box, color)
    elif pattern == "vertical_stripes":
        for x in np.arange(x0 + period * 0.25, x1, period * 0.9):
            _fill_clipped(draw, (x, y0, x + period * 0.4, y1), box, color)
    elif pattern == "checks":
        cell = period * 0.75
        for row, y in enumerate(np.arange(y0, y1, cell)):
            for col, x in enumerate(np.arange(x0, x1, cell)):
                if (row + col) % 2 == 0:
                    _fill_clipped(draw, (x, y, x + cell, y + cell), box, color)
    elif pattern == "logo" and view == "front":
        # A chest print, invisible from behind or from the side.
        w = (x1 - x0) * 0.5
        cx, cy = (x0 + x1) / 2, y0 + (y1 - y0) * 0.35
        draw.ellipse((cx - w / 2, cy - w / 2, cx + w / 2, cy + w / 2), fill=color)
        draw.rectangle((cx - w * 0.18, cy - w * 0.18, cx + w * 0.18, cy + w * 0.18),
                       fill=_shade(color, 0.45))


def _fill_clipped(
    draw: ImageDraw.ImageDraw,
    rect: tuple[float, float, float, float],
    clip: tuple[float, float, float, float],
    color: RGB,
) -> None:
    """Fill ``rect`` cut to ``clip``; nothing if less than half a pixel remains.

    ``np.arange`` may overshoot its stop by an ulp, which would make PIL reject the box.
    """
    x0, y0 = max(rect[0], clip[0]), max(rect[1], clip[1])
    x1, y1 = min(rect[2], clip[2]), min(rect[3], clip[3])
    if x1 - x0 >= 0.5 and y1 - y0 >= 0.5:
        draw.rectangle((x0, y0, x1, y1), fill=color)


def _draw_head(
    draw: ImageDraw.ImageDraw,
    attributes: Mapping[str, str],
    view: str,
    facing: float,
    cx: float,
    top: float,
    head_w: float,
    head_h: float,
    shoulder_y: float,
    height: float,
    skin: RGB,
    hair: RGB,
    hat: RGB,
) -> None:
    side = view in ("left", "right")
    long_hair = attributes["hair_length"] == "long"
    draw.rectangle((cx - head_w * 0.2, top + head_h * 0.8, cx + head_w * 0.2, shoulder_y + 2),
                   fill=_shade(skin, 0.9))
    hx = cx + (facing * head_w * 0.08 if side else 0.0)
    box = (hx - head_w / 2, top, hx + head_w / 2, top + head_h)
    if view == "back":
        draw.ellipse(box, fill=hair)
        if long_hair:
            draw.rectangle((hx - head_w * 0.48, top + head_h * 0.5,
                            hx + head_w * 0.48, shoulder_y + height * 0.11), fill=hair)
    else:
        draw.ellipse(box, fill=skin)
        # Hair: a cap over the top of the head, plus the back half of the head in profile.
        draw.chord((box[0] - 1, top - 1, box[2] + 1, top + head_h * 0.8), 180, 360, fill=hair)
        if side:
            bx0, bx1 = sorted((hx, hx - facing * head_w / 2))
            draw.ellipse((bx0 - head_w * 0.05, top, bx1 + head_w * 0.05, top + head_h * 0.8),
                         fill=hair)
            if long_hair:
                lx0, lx1 = sorted((hx - facing * head_w * 0.1, hx - facing * head_w * 0.55))
                draw.rectangle((lx0, top + head_h * 0.4, lx1, shoulder_y + height * 0.09),
                               fill=hair)
            eye_x = [hx + facing * head_w * 0.28]
        else:
            eye_x = [hx - head_w * 0.18, hx + head_w * 0.18]
        r = max(0.8, head_h * 0.05)
        eye_y = top + head_h * 0.55
        for ex in eye_x:
            draw.ellipse((ex - r, eye_y - r, ex + r, eye_y + r), fill=(30, 24, 20))

    if attributes["hat"] == "cap":
        draw.chord((box[0] - 1, top - head_h * 0.08, box[2] + 1, top + head_h * 0.62), 180, 360,
                   fill=hat)
        brim_y = top + head_h * 0.24
        if side:
            bx0, bx1 = sorted((hx, hx + facing * head_w * 0.85))
            draw.rectangle((bx0, brim_y, bx1, brim_y + head_h * 0.09), fill=_shade(hat, 0.8))
        elif view == "front":
            draw.ellipse((box[0] - head_w * 0.05, brim_y - head_h * 0.04,
                          box[2] + head_w * 0.05, brim_y + head_h * 0.1), fill=_shade(hat, 0.8))
    elif attributes["hat"] == "beanie":
        draw.chord((box[0] - 1, top - head_h * 0.14, box[2] + 1, top + head_h * 0.8), 180, 360,
                   fill=hat)
        draw.rectangle((box[0] - 1, top + head_h * 0.26, box[2] + 1, top + head_h * 0.36),
                       fill=_shade(hat, 0.8))


def _draw_occluder(
    draw: ImageDraw.ImageDraw, camera: _Camera, rng: np.random.Generator, w: int, h: int
) -> None:
    """Something between camera and person: a car or bench, a pole, or a passer-by."""
    kind = int(rng.integers(3))
    color = _jitter_color(camera.clutter_colors[int(rng.integers(3))], rng, 20)
    if kind == 0:
        top = h * (1.0 - rng.uniform(0.15, 0.35))
        x0 = rng.uniform(-0.5, 0.2) * w
        draw.rounded_rectangle((x0, top, x0 + rng.uniform(0.8, 1.6) * w, h + 10),
                               radius=w * 0.08, fill=color, outline=_shade(color, 0.6))
    elif kind == 1:
        pw = rng.uniform(0.07, 0.14) * w
        x = rng.uniform(0.1, 0.9) * w
        draw.rectangle((x - pw / 2, -1, x + pw / 2, h + 1), fill=color)
        draw.line((x - pw / 4, 0, x - pw / 4, h), fill=_shade(color, 1.25), width=1)
    else:
        # Another pedestrian walking past the edge of the box.
        body_w = rng.uniform(0.3, 0.5) * w
        edge = rng.choice([-1.0, 1.0])
        x = (w + body_w * 0.1) if edge > 0 else -body_w * 0.1
        x0, x1 = sorted((x, x - edge * body_w))
        head_r = body_w * 0.3
        body_top = h * rng.uniform(0.12, 0.3)
        clothes = _COLORS[list(_COLORS)[int(rng.integers(len(_COLORS)))]]
        draw.rounded_rectangle((x0, body_top, x1, h + 10), radius=body_w * 0.2, fill=clothes)
        hx = (x0 + x1) / 2
        draw.ellipse((hx - head_r, body_top - 2 * head_r * 0.95, hx + head_r, body_top + 2),
                     fill=_jitter_color((200, 160, 130), rng, 40))


def _apply_sensor(image: Image.Image, camera: _Camera, rng: np.random.Generator) -> Image.Image:
    """Camera response: colour matrix, exposure, gamma, light fall-off and noise."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    saturation = np.float32(camera.saturation)
    mix = saturation * np.eye(3, dtype=np.float32) + (1 - saturation) * luma[None, :]
    matrix = np.asarray(camera.white_balance, dtype=np.float32)[:, None] * mix
    gain = camera.gain * rng.uniform(0.92, 1.08)
    pixels = pixels @ (matrix.T * np.float32(gain))
    rows = np.linspace(-0.5, 0.5, pixels.shape[0], dtype=np.float32)
    pixels *= (1.0 + camera.light_gradient * rows)[:, None, None]
    pixels = np.clip(pixels, 0.0, 1.0) ** np.float32(camera.gamma)
    noise = rng.standard_normal(pixels.shape, dtype=np.float32)
    pixels = pixels * 255.0 + noise * np.float32(camera.noise_sigma)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
