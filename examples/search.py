"""Search a gallery of person crops for one query image with a saved re-ID checkpoint.

    python examples/search.py --model CHECKPOINT_DIR --gallery GALLERY --query IMAGE \
        [--top-k 10] [--index-dir DIR] [--output ranked.png] [--flip] \
        [--batch-size 64] [--num-workers 0] [--device cuda]

The same as ``reid-transformers search`` (``--help`` describes every flag). GALLERY is a
folder of images (searched recursively; identity and camera are read from Market-1501-style
names ``<pid>_c<camera>...``, e.g. ``0002_c1s1_000451_03.jpg``, and are unknown otherwise),
or a dataset written with ``save_to_disk``. The gallery is embedded into an exact cosine
``GalleryIndex``, saved to ``--index-dir`` and reused by later runs while it still fits.
Prints the top-k (rank, cosine score, pid, camid, path; -1 = unknown) and writes the ranked
list as a PNG.

The work is done by library functions you can call from your own code:

    from reid_transformers.models.auto import load_checkpoint
    from reid_transformers.retrieval.search import (
        load_gallery, prepare_gallery_index, search_gallery)

    model, processor = load_checkpoint("runs/la-market/best")
    gallery = load_gallery("gallery_folder/")
    index = prepare_gallery_index(model, processor, gallery, index_dir="gallery_index").index
    found = search_gallery(model, processor, index, gallery, "person.jpg", k=10,
                           output="ranked.png")
    print(found.format_table())
"""

from __future__ import annotations

from collections.abc import Sequence

from reid_transformers.cli import run_command

# These helpers lived in this script before they moved to the library; they stay importable
# from here for code that used them.
from reid_transformers.retrieval.search import image_folder_dataset, market_style_ids

__all__ = ["image_folder_dataset", "main", "market_style_ids"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the search with ``argv`` (default: the command line); returns the exit code."""
    return run_command("search", argv, prog="examples/search.py")


if __name__ == "__main__":
    raise SystemExit(main())
