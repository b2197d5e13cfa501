"""Search a gallery of person crops for one query image with a saved re-ID checkpoint.

    python examples/search.py --model CHECKPOINT_DIR --gallery GALLERY --query IMAGE \
        [--top-k 10] [--index-dir DIR] [--output ranked.png] [--flip] \
        [--batch-size 64] [--num-workers 0] [--device cuda]

GALLERY is a folder of images (searched recursively; identity and camera are read from
Market-1501-style names ``<pid>_c<camera>...``, e.g. ``0002_c1s1_000451_03.jpg``, and are
unknown otherwise), or a dataset written with ``save_to_disk`` (a ``Dataset``, or a
``DatasetDict`` whose ``gallery`` split is used) with an ``image`` column and optional
``pid`` / ``camid`` / ``path`` columns. The query's identity and camera are read from its
file name the same way.

The gallery is embedded and put in an exact cosine ``GalleryIndex``. With ``--index-dir``
the index is saved there and reused by later runs, after checking that it still fits:
same images (paths) in the same order, and the stored embedding of the first gallery image
equals a fresh one (so a different model or ``--flip`` setting triggers a rebuild).

Prints the top-k (rank, cosine score, pid, camid, path; -1 = unknown) and writes a PNG:
the query then the top-k crops, framed green / red when both identities are known and
equal / different, grey otherwise.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict, Features, Image, Value, load_from_disk
from transformers import AutoImageProcessor, AutoModel

import reid_transformers  # noqa: F401  (registers the architectures with the Auto classes)
from reid_transformers.retrieval import GalleryIndex
from reid_transformers.retrieval.extraction import ImageProcessor, extract_embeddings
from reid_transformers.retrieval.visualization import save_ranked_list

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Market-1501, DukeMTMC-reID, MSMT17 and the synthetic dataset all start names this way.
MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")
# A reused index must return the first gallery image's fresh embedding with at least this
# cosine similarity; recomputing on another device or thread count moves it by ~1e-6.
PROBE_MIN_SIMILARITY = 0.999


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        help="checkpoint folder (save_pretrained of a model and its processor)",
    )
    parser.add_argument(
        "--gallery",
        type=Path,
        required=True,
        help="folder of images, or a dataset saved with save_to_disk",
    )
    parser.add_argument("--query", type=Path, required=True, help="query image file")
    parser.add_argument("--top-k", type=int, default=10, help="neighbours to show (default 10)")
    parser.add_argument(
        "--index-dir",
        type=Path,
        default=None,
        help="save the gallery index here, and reuse it when it still fits",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("ranked.png"),
        help="PNG of the ranked list (default ranked.png)",
    )
    parser.add_argument(
        "--flip", action="store_true", help="average each embedding with its horizontal mirror's"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0, help="image decoding processes")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = parser.parse_args(argv)
    if not args.model.is_dir():
        parser.error(f"--model {args.model} is not a folder")
    if not args.gallery.exists():
        parser.error(f"--gallery {args.gallery} does not exist")
    if not args.query.is_file():
        parser.error(f"--query {args.query} is not a file")
    if args.top_k < 1:
        parser.error(f"--top-k must be >= 1, got {args.top_k}")
    if args.output.suffix.lower() != ".png":
        parser.error(f"--output must end in .png, got {args.output}")
    return args


def market_style_ids(path: str | Path) -> tuple[int, int]:
    """``(pid, camid)`` from a ``<pid>_c<camera>...`` file name (camid 0-based), else -1s."""
    match = MARKET_NAME.match(Path(path).name)
    if match is None or int(match.group(2)) < 1:
        return -1, -1
    return int(match.group(1)), int(match.group(2)) - 1


def image_folder_dataset(folder: Path) -> Dataset:
    """Every image under ``folder`` (recursively, sorted, hidden entries skipped)."""
    paths = sorted(
        str(path.resolve())
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    if not paths:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    ids = [market_style_ids(path) for path in paths]
    features = Features(
        {"image": Image(), "pid": Value("int64"), "camid": Value("int64"), "path": Value("string")}
    )
    return Dataset.from_dict(
        {
            "image": paths,
            "pid": [pid for pid, _ in ids],
            "camid": [camid for _, camid in ids],
            "path": paths,
        },
        features=features,
    )


def load_gallery(source: Path) -> Dataset:
    """The gallery as a dataset with ``image``, ``pid``, ``camid`` and ``path`` columns."""
    if source.is_dir() and (
        (source / "state.json").is_file() or (source / "dataset_dict.json").is_file()
    ):
        loaded = load_from_disk(str(source))
        if isinstance(loaded, DatasetDict):
            if "gallery" not in loaded:
                raise ValueError(
                    f"the DatasetDict at {source} has no 'gallery' split (splits: {list(loaded)})"
                )
            loaded = loaded["gallery"]
        rows = len(loaded)
        for column, missing in (("pid", -1), ("camid", -1), ("path", None)):
            if column not in loaded.column_names:
                loaded = loaded.add_column(column, [missing] * rows)
        return loaded
    if source.is_dir():
        return image_folder_dataset(source)
    raise ValueError(
        f"--gallery {source} is a file; expected a folder of images or a dataset folder "
        f"written with save_to_disk"
    )


def indexed_paths(gallery: Dataset) -> list[str | None]:
    """The gallery paths as the index stores them (all None unless every row has one)."""
    paths = list(gallery["path"])
    return paths if all(path is not None for path in paths) else [None] * len(paths)


def stale_reason(index: GalleryIndex, gallery: Dataset, probe: np.ndarray) -> str | None:
    """Why a saved index does not fit this gallery and model (None if it does)."""
    if index.metric != "cosine":
        return f"it uses the {index.metric} metric, this script uses cosine"
    if len(index) != len(gallery):
        return f"it holds {len(index)} images, the gallery has {len(gallery)}"
    if index.paths != indexed_paths(gallery):
        return "its image paths differ from the gallery's"
    if index.dim != probe.shape[1]:
        return f"its embeddings have {index.dim} dimensions, the model's have {probe.shape[1]}"
    similarity = float(index.search(probe, k=1).scores[0, 0])
    if similarity < PROBE_MIN_SIMILARITY:
        return (
            f"the first gallery image embeds differently now (best stored match: cosine "
            f"{similarity:.4f}); was it built with another model or --flip setting?"
        )
    return None


def gallery_index(
    args: argparse.Namespace, model: torch.nn.Module, processor: ImageProcessor, gallery: Dataset
) -> GalleryIndex:
    """Load the index from ``--index-dir`` if it still fits, else embed and index."""
    embed = dict(batch_size=args.batch_size, flip=args.flip, num_workers=args.num_workers)
    if args.index_dir is not None and args.index_dir.exists():
        index = GalleryIndex.load(args.index_dir)
        probe = extract_embeddings(model, gallery.select([0]), processor, progress=False, **embed)
        reason = stale_reason(index, gallery, probe)
        if reason is None:
            print(f"Reusing the gallery index at {args.index_dir} ({len(index)} images)")
            return index
        print(f"Rebuilding the gallery index at {args.index_dir}: {reason}")
    embeddings = extract_embeddings(model, gallery, processor, **embed)
    index = GalleryIndex(embeddings.shape[1], metric="cosine")
    paths = indexed_paths(gallery)
    index.add(
        embeddings,
        pids=gallery["pid"],
        camids=gallery["camid"],
        paths=None if paths[0] is None else paths,
    )
    if args.index_dir is not None:
        print(f"Saved the gallery index to {index.save(args.index_dir)}")
    return index


def id_label(pid: int, camid: int) -> str | None:
    """Caption text like "pid 12 c3" (camera 1-based, as in the file names)."""
    parts = ([f"pid {pid}"] if pid != -1 else []) + ([f"c{camid + 1}"] if camid != -1 else [])
    return " ".join(parts) or None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = AutoModel.from_pretrained(args.model).to(device)
    processor = AutoImageProcessor.from_pretrained(args.model)
    gallery = load_gallery(args.gallery)

    index = gallery_index(args, model, processor, gallery)
    query_path = str(args.query.resolve())
    query = Dataset.from_dict(
        {"image": [query_path], "path": [query_path]},
        features=Features({"image": Image(), "path": Value("string")}),
    )
    query_embedding = extract_embeddings(model, query, processor, flip=args.flip, progress=False)
    found = index.search(query_embedding, k=args.top_k)

    query_pid, query_camid = market_style_ids(query_path)
    print(f"Query {query_path} (pid {query_pid}, camid {query_camid})")
    print(f"{'rank':>4}  {'score':>7}  {'pid':>5}  {'camid':>5}  path")
    for rank in range(found.indices.shape[1]):
        print(
            f"{rank + 1:4d}  {found.scores[0, rank]:7.4f}  {found.pids[0, rank]:5d}  "
            f"{found.camids[0, rank]:5d}  {found.paths[0][rank]}"
        )

    pids, camids = found.pids[0].tolist(), found.camids[0].tolist()
    matches = [None if query_pid == -1 or pid == -1 else pid == query_pid for pid in pids]
    output = save_ranked_list(
        query_path,
        [gallery[int(row)]["image"] for row in found.indices[0]],
        args.output,
        matches=matches,
        scores=found.scores[0],
        labels=[id_label(pid, camid) for pid, camid in zip(pids, camids, strict=True)],
        query_label=id_label(query_pid, query_camid),
    )
    print(f"Wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
