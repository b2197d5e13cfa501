"""Parsers for the standard person re-ID benchmarks, returning ``datasets.DatasetDict``.

Every loader returns the splits ``train``, ``query`` and ``gallery`` with the columns

* ``image``: :class:`datasets.Image` feature holding the file path; decoded lazily to a
  ``PIL.Image.Image`` when a row is accessed (nothing is read into memory at load time);
* ``pid``: identity, ``int64``. In ``train`` it is relabelled to ``0..C-1`` (``C`` training
  identities, in ascending order of the original id) and stored as a
  :class:`datasets.ClassLabel` whose ``names`` are the original ids as strings, so
  ``ds["train"].features["pid"].int2str(label)`` maps a label back to the release's id.
  ``query`` and ``gallery`` keep the original ids (``Value("int64")``) because evaluation
  matches identities across the two;
* ``camid``: camera, ``int64``, 0-based (camera ``c1`` of a file name is ``camid`` 0);
* ``path``: absolute path of the image file, ``string``.

Supported layouts (see :func:`available_datasets` and ``docs/datasets.md``):

``market1501``
    Folders ``bounding_box_train`` (train), ``query`` and ``bounding_box_test`` (gallery).
    File names ``<pid>_c<camera>s<sequence>_<frame>_<box>.jpg``, e.g.
    ``0002_c1s1_000451_03.jpg`` is identity 2 seen by camera 1 (of 6). Identity ``-1`` marks
    junk boxes and is dropped from every split; identity ``0`` marks distractors, kept in
    the gallery as negatives and dropped from train and query (they have no true match).
``dukemtmc`` / ``occluded_duke``
    The same three folders; names ``<pid>_c<camera>_f<frame>.jpg`` such as
    ``0001_c2_f0046182.jpg``, cameras 1..8. Identity ``-1`` is dropped as junk; identity
    ``0`` has no special meaning.
``cuhk03_np``
    The CUHK03-NP (new protocol) release: ``detected/`` and ``labeled/`` each hold the three
    Market-style folders; ``cuhk03_split`` picks one. Names ``<pid>_c<camera>_<index>.png``
    such as ``0001_c1_1.png``, cameras 1..2.
``msmt17`` / ``msmt17_v2``
    List files ``list_train.txt``, ``list_val.txt``, ``list_query.txt`` and
    ``list_gallery.txt``, one ``<relative path> <pid>`` per line. Train/val paths are relative
    to ``train/`` (V1) or ``mask_train_v2/`` (V2), query/gallery paths to ``test/`` (V1) or
    ``mask_test_v2/`` (V2). The camera is the third ``_``-separated field of the file name
    (``0000_000_01_0303morning_0015_0.jpg`` is camera 1 of 15). The list's pid is
    authoritative. ``merge_val=True`` adds the validation list (images of training
    identities) to ``train``.
``generic``
    A CSV file with header ``path,pid,camid,split`` (extra columns are ignored). ``split``
    is ``train``, ``query`` or ``gallery``; ``path`` is absolute or relative to the CSV's
    folder; ``pid`` and ``camid`` are integers used verbatim (``camid`` is *not* shifted, so
    write 0-based camera indices if you want them 0-based; it must be >= 0). Rows keep the
    CSV's order and no junk/distractor rule is applied. Each image file may appear in one
    row only: the same file in two rows (however its path is spelt) is an error naming
    both, since one in train and in query or gallery leaks test images into training.

For the folder layouts, each split folder is searched by :func:`find_image_files`, the way
a folder given to ``reid-transformers extract --images`` is searched: image files at any
depth count, hidden files and folders (name starting with ``.``, e.g. macOS ``._*``
forks) and links to folders are skipped, and files whose extension is not one of
:data:`IMAGE_SUFFIXES` (case-insensitive) are ignored, e.g. the ``Thumbs.db`` files shipped
with Market-1501. A warning says how many entries of a split were ignored. Files are read
in sorted order so a dataset is identical from one load to the next.
"""

from __future__ import annotations

import csv
import functools
import logging
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    DatasetInfo,
    Features,
    Image,
    NamedSplit,
    Value,
)
from PIL import Image as PILImage
from tqdm.auto import tqdm

from ..image_processing_reid import check_pil_image
from ..utils import check_choice

__all__ = [
    "CUHK03_SPLITS",
    "IMAGE_SUFFIXES",
    "MARKET_NAME_PATTERN",
    "SPLITS",
    "available_datasets",
    "describe_dataset",
    "find_image_files",
    "load_reid_dataset",
]

logger = logging.getLogger(__name__)

VerifyMode = Literal["none", "header", "full"]
Cuhk03Split = Literal["detected", "labeled"]

#: Split names of every returned ``DatasetDict``, in this order.
SPLITS: tuple[str, ...] = ("train", "query", "gallery")

#: Suffixes (any case) of the files taken for images: by :func:`find_image_files` by default,
#: by the benchmark loaders and by gallery folders of retrieval. The benchmark releases ship
#: JPEG and PNG only; the other formats cost nothing there and let custom folders use them.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_VERIFY_MODES: tuple[str, ...] = ("none", "header", "full")
#: The two box sets of CUHK03-NP (``cuhk03_split``).
CUHK03_SPLITS: tuple[str, ...] = ("detected", "labeled")
# Below this many files a progress bar is noise and a thread pool costs more than it saves.
_PARALLEL_VERIFY_MIN_FILES = 1000
_VERIFY_CHUNK = 256
# How many unreadable files an error message lists before summarising the rest as a count.
_MAX_LISTED_ERRORS = 10
# How many ignored entries the warning of find_image_files names.
_MAX_LISTED_IGNORED = 5
# The last bytes of every complete file of a format: JPEG's end-of-image marker (MPO files
# are JPEGs with more frames), PNG's IEND chunk.
_END_MARKERS: dict[str, bytes] = {
    "JPEG": b"\xff\xd9",
    "MPO": b"\xff\xd9",
    "PNG": b"\x00\x00\x00\x00IEND\xaeB`\x82",
}

_JUNK_PID = -1
_SPLIT_FOLDERS: dict[str, str] = {
    "train": "bounding_box_train",
    "query": "query",
    "gallery": "bounding_box_test",
}
#: The one rule for Market-style file names ``<pid>_c<camera>...``: group 1 is the identity
#: (``-1`` = junk), group 2 the 1-based camera. Market-1501, DukeMTMC-reID, MSMT17 and the
#: synthetic dataset all start names this way; retrieval parses gallery folders with it too.
# Only the leading "<pid>_c<camera>" is interpreted; the rest (sequence, frame, box index)
# differs between releases and carries nothing the loaders need.
MARKET_NAME_PATTERN = re.compile(r"^(-?\d+)_c(\d+)")


@dataclass(frozen=True, slots=True)
class _Record:
    """One image of a split before it becomes a dataset row (``camid`` already 0-based)."""

    path: str
    pid: int
    camid: int


def _normalise(name: str) -> str:
    """Fold case and drop separators so ``Market-1501``, ``market_1501`` and ``market1501``
    compare equal (also used for release folder names such as ``Market-1501-v15.09.15``)."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


# --------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LoadOptions:
    merge_val: bool
    cuhk03_split: str


@dataclass(frozen=True)
class _FolderLayout:
    """Market-1501-style layout: one folder of images per split, labels in the file names.

    ``subfolders`` is non-empty for releases that hold several variants side by side
    (CUHK03-NP's ``detected``/``labeled``); ``options.cuhk03_split`` picks one.
    """

    name: str
    release_names: tuple[str, ...]
    num_cameras: int
    example: str
    distractor_pid: int | None = None
    subfolders: tuple[str, ...] = ()

    def root_markers(self) -> tuple[str, ...]:
        return self.subfolders or tuple(_SPLIT_FOLDERS.values())

    def looks_like_root(self, path: Path) -> bool:
        return any((path / marker).is_dir() for marker in self.root_markers())

    def collect(self, root: Path, options: _LoadOptions) -> dict[str, list[_Record]]:
        base = root / options.cuhk03_split if self.subfolders else root
        if self.subfolders and not base.is_dir():
            raise FileNotFoundError(
                f"{self.name}: folder {base} is missing; cuhk03_split={options.cuhk03_split!r} "
                f"expects {root}/{options.cuhk03_split}/ with "
                f"{', '.join(_SPLIT_FOLDERS.values())} inside"
            )
        return {split: self._collect_split(base, split) for split in SPLITS}

    def _collect_split(self, base: Path, split: str) -> list[_Record]:
        folder = base / _SPLIT_FOLDERS[split]
        records: list[_Record] = []
        junk = distractors = 0
        for file_path in _list_image_files(folder, self.name, split):
            path = Path(file_path)
            pid, camera = self._parse_name(path)
            if pid == _JUNK_PID:
                junk += 1
                continue
            if pid == self.distractor_pid and split != "gallery":
                distractors += 1
                continue
            records.append(_Record(file_path, pid, camera - 1))
        if junk or distractors:
            logger.info(
                "%s %s: dropped %d junk (pid -1) and %d distractor (pid %s) images from %s",
                self.name,
                split,
                junk,
                distractors,
                self.distractor_pid,
                folder,
            )
        if not records:
            raise ValueError(
                f"{self.name}: split {split!r} ({folder}) has no images left after dropping "
                f"{junk} junk (pid -1) and {distractors} distractor (pid {self.distractor_pid}) "
                f"images"
            )
        return records

    def _parse_name(self, path: Path) -> tuple[int, int]:
        match = MARKET_NAME_PATTERN.match(path.name)
        if match is None:
            raise ValueError(
                f"{self.name}: file name {path.name!r} ({path}) does not fit the layout; "
                f"expected '<pid>_c<camera>...' like {self.example}"
            )
        pid, camera = int(match.group(1)), int(match.group(2))
        if pid < _JUNK_PID:
            raise ValueError(
                f"{self.name}: file {path} has pid {pid}; expected an id >= 0, or -1 for junk"
            )
        if not 1 <= camera <= self.num_cameras:
            raise ValueError(
                f"{self.name}: file {path} has camera c{camera}, outside the layout's "
                f"cameras c1..c{self.num_cameras}"
            )
        return pid, camera


@dataclass(frozen=True)
class _ListLayout:
    """MSMT17-style layout: ``list_<split>.txt`` files of ``<relative path> <pid>`` lines."""

    name: str
    release_names: tuple[str, ...]
    train_dir: str
    test_dir: str
    num_cameras: int = 15
    example: str = "0000_000_01_0303morning_0015_0.jpg"

    def root_markers(self) -> tuple[str, ...]:
        return (self.train_dir, self.test_dir, "list_train.txt")

    def looks_like_root(self, path: Path) -> bool:
        return (path / self.train_dir).is_dir() or (path / "list_train.txt").is_file()

    def collect(self, root: Path, options: _LoadOptions) -> dict[str, list[_Record]]:
        train = self._read_list(root, "train", self.train_dir)
        if options.merge_val:
            train += self._read_list(root, "val", self.train_dir)
        splits = {
            "train": train,
            "query": self._read_list(root, "query", self.test_dir),
            "gallery": self._read_list(root, "gallery", self.test_dir),
        }
        # _read_list rejects empty lists, so no split can be empty here.
        for records in splits.values():
            records.sort(key=lambda record: record.path)
        return splits

    def _read_list(self, root: Path, list_name: str, image_dir: str) -> list[_Record]:
        list_path = root / f"list_{list_name}.txt"
        if not list_path.is_file():
            raise FileNotFoundError(f"{self.name}: list file {list_path} is missing")
        folder = root / image_dir
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{self.name}: image folder {folder} (referenced by {list_path.name}) is missing"
            )
        records: list[_Record] = []
        with list_path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                fields = line.split()
                if not fields:
                    continue
                where = f"{list_path}, line {line_number}"
                if len(fields) != 2 or not re.fullmatch(r"-?\d+", fields[1]):
                    raise ValueError(
                        f"{self.name}: {where}: {line.strip()!r} is not '<relative path> <pid>' "
                        f"like '0000/{self.example} 0'"
                    )
                path = folder / fields[0]
                camid = self._camera(path, where) - 1
                if not path.is_file():
                    raise FileNotFoundError(f"{self.name}: {where}: image {path} does not exist")
                records.append(_Record(os.path.abspath(path), int(fields[1]), camid))
        if not records:
            raise ValueError(f"{self.name}: list file {list_path} has no entries")
        return records

    def _camera(self, path: Path, where: str) -> int:
        parts = path.stem.split("_")
        if len(parts) < 3 or not parts[2].isdigit():
            raise ValueError(
                f"{self.name}: {where}: file name {path.name!r} does not fit the layout; "
                f"expected '<pid>_<index>_<camera>_<date><time>_<frame>_<box>' like {self.example}"
            )
        camera = int(parts[2])
        if not 1 <= camera <= self.num_cameras:
            raise ValueError(
                f"{self.name}: {where}: file {path.name!r} has camera {camera}, outside the "
                f"layout's cameras 1..{self.num_cameras}"
            )
        return camera


_Layout = _FolderLayout | _ListLayout

_LAYOUTS: dict[str, _Layout] = {
    layout.name: layout
    for layout in (
        _FolderLayout(
            name="market1501",
            release_names=("Market-1501-v15.09.15", "Market-1501"),
            num_cameras=6,
            example="0002_c1s1_000451_03.jpg",
            distractor_pid=0,
        ),
        _FolderLayout(
            name="dukemtmc",
            release_names=("DukeMTMC-reID", "dukemtmc"),
            num_cameras=8,
            example="0001_c2_f0046182.jpg",
        ),
        _FolderLayout(
            name="occluded_duke",
            release_names=("Occluded_Duke", "Occluded_DukeMTMC"),
            num_cameras=8,
            example="0001_c2_f0046182.jpg",
        ),
        _ListLayout(
            name="msmt17",
            release_names=("MSMT17_V1", "MSMT17"),
            train_dir="train",
            test_dir="test",
        ),
        _ListLayout(
            name="msmt17_v2",
            release_names=("MSMT17_V2",),
            train_dir="mask_train_v2",
            test_dir="mask_test_v2",
        ),
        _FolderLayout(
            name="cuhk03_np",
            release_names=("cuhk03-np",),
            num_cameras=2,
            example="0001_c1_1.png",
            subfolders=CUHK03_SPLITS,
        ),
    )
}

_GENERIC = "generic"
_GENERIC_CSV_NAME = "annotations.csv"
_GENERIC_COLUMNS: tuple[str, ...] = ("path", "pid", "camid", "split")

# Other spellings people use for the same release; matched after _normalise.
_ALIASES = {"msmt17v1": "msmt17", "dukemtmcreid": "dukemtmc", "occludeddukemtmc": "occluded_duke"}


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_reid_dataset` (canonical spelling, in display order)."""
    return [*_LAYOUTS, _GENERIC]


def _canonical_name(name: str) -> str:
    key = _normalise(name)
    lookup = {_normalise(known): known for known in available_datasets()}
    lookup.update(_ALIASES)
    if key not in lookup:
        raise ValueError(
            f"unknown dataset {name!r}; expected one of {', '.join(available_datasets())} "
            f"(case, '-' and '_' are ignored)"
        )
    return lookup[key]


# --------------------------------------------------------------------------------------
# Discovery and generic CSV
# --------------------------------------------------------------------------------------


def find_image_files(
    folder: str | os.PathLike[str],
    *,
    label: str | None = None,
) -> list[str]:
    """Every image file under ``folder``, at any depth: the rule for folders of images.

    A file is an image when its suffix is one of :data:`IMAGE_SUFFIXES` (any case). Hidden files and
    folders (name starting with ``.``, e.g. macOS ``._*`` forks, ``.ipynb_checkpoints``) are
    skipped, and so are symbolic links to folders (never followed, so a link cannot loop);
    links to files count like files. Everything skipped that way, and every file with
    another suffix, is *ignored*: a warning names how many entries were ignored and the
    first few, so that nothing is left out silently.

    Args:
        folder: the folder to search.
        label: what the warning calls the folder, e.g. ``"market1501 train"``; default the
            folder's path.

    Returns:
        Absolute paths, sorted (so the order is the same from one run to the next).

    Raises:
        NotADirectoryError: ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder; expected a folder of images")
    found: list[str] = []
    ignored: list[str] = []
    pending = [root]
    while pending:
        current = pending.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                relative = os.path.relpath(entry.path, root)
                if entry.name.startswith("."):
                    ignored.append(relative + ("/" if entry.is_dir() else ""))
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.is_dir():
                    ignored.append(relative + "/")  # a link to a folder
                elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                    found.append(os.path.abspath(entry.path))
                else:
                    ignored.append(relative)
    if ignored:
        ignored.sort()
        listed = ", ".join(ignored[:_MAX_LISTED_IGNORED])
        more = ", ..." if len(ignored) > _MAX_LISTED_IGNORED else ""
        logger.warning(
            "%s: ignored %d %s under %s (hidden, linked folders, or not %s files): %s%s",
            label or root,
            len(ignored),
            "entry" if len(ignored) == 1 else "entries",
            root,
            "/".join(IMAGE_SUFFIXES),
            listed,
            more,
        )
    return sorted(found)


def _list_image_files(folder: Path, dataset: str, split: str) -> list[str]:
    """Sorted absolute paths of the images of one split folder (see :func:`find_image_files`)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{dataset}: folder {folder} for split {split!r} is missing")
    paths = find_image_files(folder, label=f"{dataset} {split}")
    if not paths:
        raise FileNotFoundError(
            f"{dataset}: folder {folder} for split {split!r} contains no images "
            f"(looked for {', '.join(IMAGE_SUFFIXES)} files, at any depth)"
        )
    return paths


def _find_root(layout: _Layout, data_dir: Path) -> Path:
    """``data_dir`` itself when it holds the layout's folders, else a child named like a release.

    Among several matching children, one that holds the layout's folders wins, then the
    order of ``release_names``; a matching child without them is still returned so the
    caller's error names the missing folder inside it.
    """
    if layout.looks_like_root(data_dir):
        return data_dir
    priority = {_normalise(release): rank for rank, release in enumerate(layout.release_names)}
    candidates = sorted(
        (
            child
            for child in data_dir.iterdir()
            if child.is_dir() and _normalise(child.name) in priority
        ),
        key=lambda child: (
            not layout.looks_like_root(child),
            priority[_normalise(child.name)],
            child.name,
        ),
    )
    if candidates:
        return candidates[0]
    raise FileNotFoundError(
        f"{layout.name}: no dataset found at {data_dir}: it holds none of "
        f"{', '.join(layout.root_markers())}, and no sub-folder is named like "
        f"{', '.join(layout.release_names)} (case, '-', '_' and '.' ignored)"
    )


def _resolve_generic_csv(data_dir: Path) -> Path:
    if data_dir.is_file():
        return data_dir
    csv_path = data_dir / _GENERIC_CSV_NAME
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"generic: annotation file {csv_path} is missing; pass the CSV path or a folder "
            f"holding {_GENERIC_CSV_NAME} with header {','.join(_GENERIC_COLUMNS)}"
        )
    return csv_path


def _parse_int(value: str | None, column: str, where: str) -> int:
    text = (value or "").strip()
    if not re.fullmatch(r"[+-]?\d+", text):
        raise ValueError(f"generic: {where}: {column} {value!r} is not an integer")
    return int(text)


def _collect_generic(csv_path: Path) -> dict[str, list[_Record]]:
    splits: dict[str, list[_Record]] = {split: [] for split in SPLITS}
    # The first row naming each image file, keyed by the file's real path so that another
    # spelling ("imgs/../imgs/a.jpg", an absolute path, a symlink) is the same image.
    first_rows: dict[str, str] = {}
    repeats: list[str] = []
    # utf-8-sig: spreadsheet programs prepend a byte-order mark that would corrupt "path".
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [column for column in _GENERIC_COLUMNS if column not in header]
        if missing:
            raise ValueError(
                f"generic: {csv_path} lacks column(s) {', '.join(missing)}; expected header "
                f"{','.join(_GENERIC_COLUMNS)}, found {','.join(header) or 'nothing'}"
            )
        reader.fieldnames = header
        for row in reader:
            where = f"{csv_path}, row at line {reader.line_num}"
            split = (row["split"] or "").strip().lower()
            if split not in splits:
                raise ValueError(
                    f"generic: {where}: split {row['split']!r} is not one of {', '.join(SPLITS)}"
                )
            raw_path = (row["path"] or "").strip()
            if not raw_path:
                raise ValueError(f"generic: {where}: path is empty")
            pid = _parse_int(row["pid"], "pid", where)
            camid = _parse_int(row["camid"], "camid", where)
            if camid < 0:
                raise ValueError(f"generic: {where}: camid {camid} is negative; expected >= 0")
            path = csv_path.parent / Path(raw_path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"generic: {where}: image {path} does not exist")
            row = f"line {reader.line_num} ({split}, pid {pid})"
            key = os.path.normcase(os.path.realpath(path))
            if key in first_rows:
                repeats.append(f"{first_rows[key]} and {row}")
            else:
                first_rows[key] = f"{os.path.abspath(path)}: {row}"
            splits[split].append(_Record(os.path.abspath(path), pid, camid))
    if repeats:
        listed = "\n".join(f"  {repeat}" for repeat in repeats[:_MAX_LISTED_ERRORS])
        more = len(repeats) - _MAX_LISTED_ERRORS
        suffix = f"\n  ... and {more} more" if more > 0 else ""
        count = f"{len(repeats)} image{' appears' if len(repeats) == 1 else 's appear'}"
        raise ValueError(
            f"generic: {csv_path}: {count} in more than one row; each image may appear once "
            f"(one in train and in query or gallery leaks test images into training; a repeat "
            f"within a split counts it twice):\n{listed}{suffix}"
        )
    for split, records in splits.items():
        if not records:
            raise ValueError(f"generic: {csv_path} has no rows with split {split!r}")
    return splits


# --------------------------------------------------------------------------------------
# Image verification
# --------------------------------------------------------------------------------------


def _ends_complete(handle: BinaryIO, image_format: str | None) -> bool:
    """Whether the file ends as a complete file of its format does (True for formats
    without an end marker to test)."""
    marker = _END_MARKERS.get(image_format or "")
    if marker is None:
        return True
    size = handle.seek(0, os.SEEK_END)
    if size < len(marker):
        return False
    handle.seek(size - len(marker))
    return handle.read(len(marker)) == marker


def _image_problem(path: str, mode: str) -> str | None:
    """Why the image processor could not read ``path`` (``None`` when it can)."""
    try:
        with open(path, "rb") as handle, PILImage.open(handle) as image:
            # open() parses the header only; load() runs the decoder over the whole file,
            # which is what catches truncated or corrupt pixel data. "header" decodes only
            # the files whose last bytes are not their format's end marker: the truncated
            # ones, and the rare complete ones with bytes after the marker, which pass.
            if mode == "full" or not _ends_complete(handle, image.format):
                image.load()
    except (OSError, SyntaxError, ValueError, PILImage.DecompressionBombError) as exc:
        # PIL reports broken files through all of these (SyntaxError for bad PNG chunks).
        return f"{type(exc).__name__}: {exc}"
    try:
        check_pil_image(image)
    except ValueError as exc:
        return str(exc)
    return None


def _problems_in(paths: Sequence[str], mode: str) -> list[tuple[str, str]]:
    """``(path, reason)`` for each unreadable file of ``paths``, in order."""
    found = []
    for path in paths:
        problem = _image_problem(path, mode)
        if problem is not None:
            found.append((path, problem))
    return found


def _verify_images(
    paths: Sequence[str], mode: str, *, progress: bool, num_workers: int, dataset: str
) -> None:
    """Raise one error listing every path PIL cannot read (``mode``: "header" or "full")."""
    large = len(paths) >= _PARALLEL_VERIFY_MIN_FILES
    # One task per chunk, not per file: a future per file costs more than a header read.
    chunks = [paths[start : start + _VERIFY_CHUNK] for start in range(0, len(paths), _VERIFY_CHUNK)]
    problems: list[tuple[str, str]] = []
    with tqdm(
        total=len(paths),
        desc=f"Verifying {dataset} images ({mode})",
        unit="img",
        disable=not (progress and large),
    ) as bar:
        if large and num_workers > 1:
            # Threads only pay off when opens block on I/O (network file systems): PIL's
            # header parsing is Python code holding the GIL.
            with ThreadPoolExecutor(max_workers=num_workers) as pool:
                results = pool.map(functools.partial(_problems_in, mode=mode), chunks)
                for chunk, found in zip(chunks, results, strict=True):
                    problems.extend(found)
                    bar.update(len(chunk))
        else:
            for chunk in chunks:
                problems.extend(_problems_in(chunk, mode))
                bar.update(len(chunk))
    if problems:
        listed = "\n".join(
            f"  {path}: {problem}" for path, problem in problems[:_MAX_LISTED_ERRORS]
        )
        more = len(problems) - _MAX_LISTED_ERRORS
        suffix = f"\n  ... and {more} more" if more > 0 else ""
        raise ValueError(
            f"{dataset}: {len(problems)} of {len(paths)} image files are unreadable "
            f"(verify_images={mode!r}); remove or replace them, or load with "
            f"verify_images='none' and leave them out when embedding (skip_unreadable=True, "
            f"--skip-unreadable on the command line):\n{listed}{suffix}"
        )


# --------------------------------------------------------------------------------------
# Dataset assembly
# --------------------------------------------------------------------------------------


def _build_split(
    records: Sequence[_Record], split: str, *, relabel: bool, info: DatasetInfo
) -> Dataset:
    paths = [record.path for record in records]
    pids = [record.pid for record in records]
    pid_feature: ClassLabel | Value
    if relabel:
        identities = sorted(set(pids))
        label_of = {pid: label for label, pid in enumerate(identities)}
        pid_feature = ClassLabel(names=[str(pid) for pid in identities])
        pids = [label_of[pid] for pid in pids]
    else:
        pid_feature = Value("int64")
    features = Features(
        {"image": Image(), "pid": pid_feature, "camid": Value("int64"), "path": Value("string")}
    )
    split_info = info.copy()
    split_info.features = features
    return Dataset.from_dict(
        {"image": paths, "pid": pids, "camid": [r.camid for r in records], "path": paths},
        features=features,
        info=split_info,
        split=NamedSplit(split),
    )


def load_reid_dataset(
    name: str,
    data_dir: str | os.PathLike[str],
    *,
    merge_val: bool = False,
    cuhk03_split: Cuhk03Split = "detected",
    verify_images: VerifyMode = "header",
    progress: bool = True,
    num_workers: int = 1,
) -> DatasetDict:
    """Load a re-ID benchmark (or a CSV-described dataset) as ``train``/``query``/``gallery``.

    Args:
        name: One of :func:`available_datasets`; case, ``-`` and ``_`` are ignored
            (``"Market-1501"`` selects ``market1501``).
        data_dir: The dataset root, or a folder holding it under its release name (e.g.
            ``Market-1501-v15.09.15``, ``DukeMTMC-reID``, ``Occluded_Duke``, ``MSMT17_V1``,
            ``MSMT17_V2``, ``cuhk03-np``; matched ignoring case, ``-``, ``_`` and ``.``).
            For ``generic``: the CSV file, or a folder holding ``annotations.csv``.
        merge_val: MSMT17 only: add ``list_val.txt`` to ``train``.
        cuhk03_split: CUHK03-NP only: ``"detected"`` or ``"labeled"`` boxes.
        verify_images: which images to reject before anything else happens; every
            rejected file is listed in one error. ``"none"``: open no image (files named by
            list files or the CSV are still checked to exist). ``"header"``: parse each
            file's header with PIL and check that the image processor can convert it (a
            size above zero, a mode such as RGB, L or P; 16-bit ``I;16`` and float images
            are rejected), and that a JPEG or PNG file ends with its end marker (a
            truncated file does not; the rare complete file with bytes after the marker
            is decoded to make sure). Fast: a few bytes at each end of a file. Catches
            non-image, empty, truncated and unconvertible files. ``"full"``: the same
            checks after decoding every image (slow; also catches corrupt pixel data in
            the middle of a complete file, and formats without an end marker).
        progress: Show a tqdm bar while verifying; never shown for fewer than 1000 files.
        num_workers: Threads for verifying 1000 files or more. Worth raising on network file
            systems, where each open waits on the server; on a local disk the work is
            GIL-bound and 1 is as fast or faster.

    Returns:
        ``DatasetDict`` with splits ``train``, ``query``, ``gallery``; columns ``image``
        (lazily decoded ``datasets.Image``), ``pid`` (``int64``; ``ClassLabel`` over the
        original ids in ``train``), ``camid`` (``int64``, 0-based), ``path`` (absolute).

    Raises:
        ValueError: unknown ``name`` or option value; a file name, list line or CSV row
            that does not fit the layout; a camera outside the layout's range; an image
            the processor cannot read; the same image in two CSV rows; a split that is
            empty after dropping junk/distractors.
        FileNotFoundError: ``data_dir``, the dataset root, a split folder, a list file or
            an image is missing, or a split folder contains no images.
    """
    canonical = _canonical_name(name)
    check_choice("verify_images", verify_images, _VERIFY_MODES)
    check_choice("cuhk03_split", cuhk03_split, CUHK03_SPLITS)
    layout = _LAYOUTS.get(canonical)
    if merge_val and not isinstance(layout, _ListLayout):
        raise ValueError(
            f"merge_val=True only applies to msmt17 and msmt17_v2 (they ship a validation "
            f"list), not to {canonical}"
        )
    if num_workers < 1:
        raise ValueError(f"num_workers={num_workers}; expected an integer >= 1")

    data_path = Path(data_dir).expanduser()
    if not data_path.exists():
        raise FileNotFoundError(f"{canonical}: data_dir {data_path} does not exist")
    if layout is None:
        source = _resolve_generic_csv(data_path)
        splits = _collect_generic(source)
    else:
        if not data_path.is_dir():
            raise FileNotFoundError(f"{canonical}: data_dir {data_path} is not a folder")
        source = _find_root(layout, data_path)
        splits = layout.collect(source, _LoadOptions(merge_val, cuhk03_split))

    if verify_images != "none":
        all_paths = [record.path for split in SPLITS for record in splits[split]]
        _verify_images(
            all_paths, verify_images, progress=progress, num_workers=num_workers, dataset=canonical
        )

    variant = f" ({cuhk03_split})" if canonical == "cuhk03_np" else ""
    info = DatasetInfo(
        description=f"{canonical}{variant} re-ID dataset loaded from {os.path.abspath(source)}",
        dataset_name=canonical,
        config_name=cuhk03_split if canonical == "cuhk03_np" else None,
    )
    return DatasetDict(
        {
            split: _build_split(splits[split], split, relabel=split == "train", info=info)
            for split in SPLITS
        }
    )


def describe_dataset(dataset_dict: Mapping[str, Dataset]) -> str:
    """A plain-text table with one row per split: images, distinct identities, cameras.

    Identities are counted on the stored ``pid`` column (relabelled or not, the count is the
    same); cameras on ``camid``.

    Raises:
        ValueError: a split lacks the ``pid`` or ``camid`` column, or ``dataset_dict`` is empty.
    """
    if not dataset_dict:
        raise ValueError("describe_dataset: the dataset dict has no splits")
    rows = [("split", "images", "identities", "cameras")]
    for split, dataset in dataset_dict.items():
        missing = [column for column in ("pid", "camid") if column not in dataset.column_names]
        if missing:
            raise ValueError(
                f"describe_dataset: split {split!r} lacks column(s) {', '.join(missing)}; "
                f"found {', '.join(dataset.column_names)}"
            )
        # Only the two integer columns are materialised (no image decoding); slicing the
        # formatted dataset honours an indices mapping left by select/filter/shuffle.
        columns = dataset.with_format("numpy", columns=["pid", "camid"])[:]
        pids, camids = columns["pid"], columns["camid"]
        rows.append(
            (split, str(len(dataset)), str(np.unique(pids).size), str(np.unique(camids).size))
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return "\n".join(lines)
