"""The ``reid-transformers`` command: train, evaluate, extract, export, search, card, push.

    reid-transformers COMMAND [FLAGS]             # the installed console script
    python -m reid_transformers.cli COMMAND ...   # the same, without the script
    reid-transformers COMMAND --help              # what a command does, with an example

Every command is a thin layer over library functions (``reid_transformers.training``,
``reid_transformers.evaluation``, ``reid_transformers.retrieval``, ``reid_transformers.hub``,
``reid_transformers.deployment``, loading through ``reid_transformers.models.auto``), which
the examples call too.

Exit status: 0 on success; 2 for a usage error (bad or missing flags, a missing checkpoint,
dataset or file, an output that exists), reported as one line on stderr; 1 when the Hub
refuses or cannot be reached during ``push``. ``--traceback`` before the command shows the
full traceback of an error instead.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol

from datasets import Dataset, DatasetDict
from transformers import HfArgumentParser

from . import __version__
from .backbones import CheckpointUnavailableError
from .data import SPLITS
from .data.datasets import CUHK03_SPLITS
from .evaluation import DISTANCE_METRICS, CheckpointEvaluation, evaluate_checkpoint
from .hub import HubPushError, ModelCardUpdate, push_to_hub, save_model_card, write_model_card
from .models.auto import checkpoint_source, load_checkpoint
from .retrieval import extract_checkpoint_embeddings
from .retrieval.search import load_gallery, prepare_gallery_index, search_gallery
from .training import ReIDTrainer, ReIDTrainingArguments, load_training_data, parse_arguments
from .training.arguments import ARGUMENT_FILE_SUFFIXES
from .utils import transformers_progress_bars_disabled

__all__ = ["PROG", "build_parser", "main", "run_command"]

#: The console script's name (``setup.cfg``: ``reid-transformers = reid_transformers.cli:main``).
PROG = "reid-transformers"

# Errors that mean "the user asked for something that cannot be done", reported as one line.
# Anything else is a bug and keeps its traceback.
_USAGE_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    ValueError,
)
_TRACEBACK_HINT = "add --traceback before the command for the full traceback"
# Skipped images that extract's summary names (all are logged, and stored in the file).
_MAX_LISTED_SKIPPED = 10


# ---------------------------------------------------------------------- argparse plumbing
class _OneLineErrors:
    """argparse errors as one line (argparse's default prints the whole usage first).

    A mixin for ``argparse.ArgumentParser`` subclasses, placed before it in the bases.
    """

    def error(self: Any, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _Parser(_OneLineErrors, argparse.ArgumentParser):
    pass


class _TrainerParser(_OneLineErrors, HfArgumentParser):
    pass


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions and examples as written, and shows one spelling per flag.

    Multi-word flags are registered as ``--top-k`` and ``--top_k`` (``HfArgumentParser``
    registers the training flags as ``--data_dir`` and ``--data-dir``); listing both would
    double the help, so only the first, the one the usage line shows, is listed.
    """

    def _format_action_invocation(self, action: argparse.Action) -> str:
        seen: set[str] = set()
        shown = []
        for option in action.option_strings:
            if option.replace("_", "-") not in seen:
                shown.append(option)
                seen.add(option.replace("_", "-"))
        if shown == action.option_strings:
            return super()._format_action_invocation(action)
        clone = copy.copy(action)
        clone.option_strings = shown
        return super()._format_action_invocation(clone)


class _TrainerFormatter(_Formatter, argparse.ArgumentDefaultsHelpFormatter):
    """The trainer's flags with their defaults, under this command's description as written.

    A default of None is not printed: the flag's help says what leaving it unset means."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


class _ArgumentContainer(Protocol):
    """A parser or an argument group: anything with argparse's ``add_argument``."""

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action: ...


def _flag(parser: _ArgumentContainer, name: str, **kwargs: Any) -> None:
    """Add ``--name`` (hyphens) with its ``--under_scored`` spelling as an alias."""
    spellings = [f"--{name}"]
    if "-" in name:
        spellings.append(f"--{name.replace('-', '_')}")
    parser.add_argument(*spellings, **kwargs)


def _require_at_least(parser: argparse.ArgumentParser, flag: str, value: int, minimum: int) -> None:
    if value < minimum:
        parser.error(f"{flag} must be >= {minimum}, got {value}")


def _add_model_flag(parser: argparse.ArgumentParser, what: str) -> None:
    _flag(parser, "model", required=True, metavar="CKPT", help=what)


def _add_dataset_flag(parser: _ArgumentContainer, *, default: str | None) -> None:
    _flag(
        parser,
        "dataset",
        default=default,
        metavar="NAME",
        help="synthetic (generated and cached on first use), market1501, dukemtmc, "
        "occluded_duke, msmt17, msmt17_v2, cuhk03_np or generic (a CSV of path,pid,camid,split)"
        + (f"; default {default}" if default else ""),
    )


def _add_dataset_loading_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that choose what of ``--dataset`` is loaded (as the trainer's)."""
    _flag(parser, "cuhk03-split", choices=CUHK03_SPLITS, default="detected",
          help="cuhk03_np: detected (default) or labeled boxes")
    _flag(parser, "merge-val", action="store_true",
          help="msmt17: add list_val.txt to the train split")


def _add_embedding_flags(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "flip", action="store_true", help="average each embedding with its mirror's")
    _flag(parser, "batch-size", type=int, default=64, metavar="N", help="default 64")
    _flag(
        parser,
        "num-workers",
        type=int,
        default=0,
        metavar="N",
        help="image-decoding processes (default 0: decode in the main process)",
    )
    _flag(parser, "device", default=None, help="e.g. cuda:1 or cpu; default cuda if available")
    _flag(parser, "no-progress", action="store_true", help="no progress bars")


def _check_embedding_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    _require_at_least(parser, "--batch-size", args.batch_size, 1)
    _require_at_least(parser, "--num-workers", args.num_workers, 0)


def _checkpoint_embedding_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments ``evaluate_checkpoint`` and ``extract_checkpoint_embeddings``
    share, from the flags of ``_add_embedding_flags`` and ``--skip-unreadable``."""
    return dict(
        flip=args.flip,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        progress=not args.no_progress,
        skip_unreadable=args.skip_unreadable,
    )


def _load_dataset(args: argparse.Namespace, *, progress: bool) -> DatasetDict:
    """The dataset the trainer would use for the same dataset flags.

    With ``--skip-unreadable`` a benchmark's images are not verified while loading (which
    would stop at the first unreadable one): the embedding step finds them and leaves them
    out. The synthetic images are generated, hence always readable.
    """
    return load_training_data(
        ReIDTrainingArguments(
            dataset=args.dataset,
            data_dir=args.data_dir,
            cuhk03_split=args.cuhk03_split,
            merge_val=args.merge_val,
            progress=progress,
        ),
        verify_images="none" if args.skip_unreadable else "header",
    )


# ---------------------------------------------------------------------- commands
@dataclass(frozen=True)
class _Command:
    name: str
    summary: str  # one line, in the command list
    description: str  # what it does, then an example
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, argparse.ArgumentParser], int]
    parser_options: dict[str, Any] = field(default_factory=dict)


# --- train
_TRAIN_DESCRIPTION = """\
Train a re-ID model with ReIDTrainer (Accelerate: one CPU, one GPU or many). Every flag
below is a field of ReIDTrainingArguments and goes to the trainer as given; --preset fills
in a recipe (la_transformer, aaformer, pan, hat, prct: the paper's, as its released code ran it
where there is one; tiny: a small model of any architecture for CPU minutes) and explicit
flags win. A leading .yaml or .json argument (e.g. configs/hat.yaml) is a file of flag values
that later flags override. The run writes
<output_dir>/best and <output_dir>/last (safetensors, configs, model card), metrics.jsonl
and a resumable state/ (--resume). For several GPUs:
'accelerate launch -m reid_transformers.cli train ...'.

example:
  reid-transformers train --preset tiny --output_dir runs/tiny
  reid-transformers train --preset la_transformer --dataset market1501 \\
      --data_dir /data/Market-1501-v15.09.15 --output_dir runs/la-market
"""


def _configure_train(parser: argparse.ArgumentParser) -> None:
    # The trainer's own parser reads these; see _run_train.
    parser.add_argument("trainer_args", nargs=argparse.REMAINDER)


def _run_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    argv: list[str] = args.trainer_args
    if not argv:
        parser.error(
            f"no training flags given; try '{parser.prog} --preset tiny' (a small model on the "
            f"synthetic data, minutes on a CPU)"
        )
    # The flags are parsed first with a parser named after this command, for a --help and
    # error lines that say 'reid-transformers train'; parse_arguments then builds the
    # arguments (config file, flags, preset) exactly as for examples/train.py. A leading bare
    # argument is a config file, which only parse_arguments reads.
    flags = argv[1:] if Path(argv[0]).suffix in ARGUMENT_FILE_SUFFIXES else argv
    if flags:
        _TrainerParser(
            ReIDTrainingArguments,
            prog=parser.prog,
            description=_TRAIN_DESCRIPTION,
            formatter_class=_TrainerFormatter,
        ).parse_args(flags)
    training_args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    trainer = ReIDTrainer(training_args)
    trainer.train()
    if trainer.accelerator.is_main_process:
        # best/ and last/ may hold different epochs: print both, labelled.
        print(json.dumps(
            {"last": trainer.last_evaluation, "best": trainer.best_evaluation}, indent=2
        ))
        output = Path(training_args.output_dir)
        print(f"Checkpoints: {output / 'best'}, {output / 'last'}")
    return 0


# --- evaluate
_EVALUATE_DESCRIPTION = """\
Evaluate a checkpoint on a dataset's query / gallery split under the Market-1501 protocol
and print mAP, rank-1/5/10 and mINP (in %). The query and gallery images are embedded with
the checkpoint's model and image processor, ranked by cosine (or Euclidean) distance, and
scored; gallery images of the query's identity from the query's own camera are ignored.
--flip averages every embedding with its mirror image's; --rerank adds a second row with
k-reciprocal re-ranking. --json saves the numbers (the input of 'reid-transformers card').

example:
  reid-transformers evaluate --model runs/la-market/best --dataset market1501 \\
      --data-dir /data/Market-1501-v15.09.15 --flip --rerank --json runs/la-market/eval.json
"""


def _configure_evaluate(parser: argparse.ArgumentParser) -> None:
    _add_model_flag(parser, "checkpoint folder (save_pretrained of model and processor) or Hub id")
    _add_dataset_flag(parser, default="synthetic")
    _flag(parser, "data-dir", metavar="DIR", help="dataset root (for synthetic: where to cache it)")
    _add_dataset_loading_flags(parser)
    _flag(parser, "distance", default="cosine", choices=DISTANCE_METRICS, help="default cosine")
    _flag(parser, "rerank", action="store_true", help="also report k-reciprocal re-ranking")
    _flag(
        parser,
        "json",
        metavar="PATH",
        help="also write the results as JSON to PATH ('-': print them after the table)",
    )
    _add_embedding_flags(parser)
    _add_skip_unreadable_flag(parser, "scored on the others")


def _add_skip_unreadable_flag(parser: argparse.ArgumentParser, what_happens: str) -> None:
    _flag(
        parser,
        "skip-unreadable",
        action="store_true",
        help="leave out images that cannot be read (missing, truncated, 16-bit) instead of "
        f"stopping at the first: each is logged, counted and {what_happens}",
    )


def _run_evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _check_embedding_flags(parser, args)
    checkpoint_source(args.model)  # a wrong --model fails before the dataset is read
    data = _load_dataset(args, progress=not args.no_progress)
    result = evaluate_checkpoint(
        args.model,
        data,
        dataset=args.dataset,
        distance=args.distance,
        rerank=args.rerank,
        **_checkpoint_embedding_options(args),
    )
    print(result.format_table())
    if args.json == "-":
        print(json.dumps(result.to_dict()))
    elif args.json is not None:
        print(f"Wrote {result.save(args.json)}")
    return 0


# --- extract
_EXTRACT_DESCRIPTION = """\
Embed images with a checkpoint and save the embeddings to an .npz file: the arrays
embeddings (N, D) float32, pids, camids (0-based; -1 = unknown), paths, splits (the split
each row came from), model and flip; np.load(path) reads it, no pickles. The images are a
dataset's splits (--dataset, with --split: train, query, gallery or all; train identities
are stored with the dataset's own ids, not the 0..C-1 training labels) or every image under
a folder (--images; identities read from Market-1501-style names such as
0002_c1s1_000451_03.jpg, else -1). An existing output is only replaced with --overwrite;
the file is written to a temporary name and renamed, so it is never left half written.

example:
  reid-transformers extract --model runs/la-market/best --dataset market1501 \\
      --data-dir /data/Market-1501-v15.09.15 --split gallery --flip --output gallery.npz
  reid-transformers extract --model runs/la-market/best --images crops/ --output crops.npz
"""


def _configure_extract(parser: argparse.ArgumentParser) -> None:
    _add_model_flag(parser, "checkpoint folder (save_pretrained of model and processor) or Hub id")
    source = parser.add_mutually_exclusive_group(required=True)
    _add_dataset_flag(source, default=None)
    _flag(
        source,
        "images",
        metavar="DIR",
        help="a folder of images (searched recursively), or a dataset saved with save_to_disk",
    )
    _flag(parser, "data-dir", metavar="DIR", help="with --dataset: the dataset root")
    _flag(parser, "split", choices=(*SPLITS, "all"), help="with --dataset: default all")
    _add_dataset_loading_flags(parser)
    _flag(parser, "output", required=True, metavar="FILE.npz", help="the embeddings file")
    _flag(parser, "overwrite", action="store_true", help="replace an existing --output")
    _add_embedding_flags(parser)
    _add_skip_unreadable_flag(parser, "listed in the file, without a row")


def _run_extract(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _check_embedding_flags(parser, args)
    output = Path(args.output)
    if output.suffix != ".npz":
        parser.error(f"--output must end in .npz, got {output}")
    if output.exists() and not args.overwrite:
        parser.error(f"--output {output} already exists; add --overwrite to replace it")
    if args.images is not None and (args.data_dir is not None or args.split is not None):
        parser.error("--data-dir and --split go with --dataset, not with --images")
    checkpoint_source(args.model)  # a wrong --model fails before the images are read
    splits: dict[str, Dataset]
    if args.images is not None:
        splits = {"images": load_gallery(args.images)}
    else:
        data = _load_dataset(args, progress=not args.no_progress)
        names = SPLITS if args.split in (None, "all") else (args.split,)
        splits = {name: data[name] for name in names}
    embeddings = extract_checkpoint_embeddings(
        args.model, splits, **_checkpoint_embedding_options(args)
    )
    path = embeddings.save(output, overwrite=args.overwrite)
    rows = embeddings.splits.tolist()
    counts = ", ".join(f"{name} {rows.count(name)}" for name in splits)
    print(
        f"Wrote {len(embeddings)} embeddings of dimension {embeddings.embeddings.shape[1]} "
        f"({counts}) to {path}"
    )
    skipped = embeddings.skipped_paths.tolist()
    if skipped:
        listed = ", ".join(skipped[:_MAX_LISTED_SKIPPED])
        more = ", ..." if len(skipped) > _MAX_LISTED_SKIPPED else ""
        print(
            f"Skipped {len(skipped)} unreadable image{'s' if len(skipped) != 1 else ''}: "
            f"{listed}{more}"
        )
    return 0


# --- export
_EXPORT_DESCRIPTION = """\
Export a checkpoint to ONNX for deployment: input pixel_values (B, 3, H, W) float32 with a
dynamic batch, output embeddings (B, D). The preprocessing a consumer needs (input size,
mean/std, rescale factor, resampling, RGB colour order, distance) is stored in the ONNX
metadata and in a JSON file of the same name beside it (model.onnx -> model.json). The graph
is checked with onnx.checker, and onnxruntime's output is compared with PyTorch's (max abs
difference and cosine, printed; --atol / --min-cosine make a mismatch an error, except with
--quantize int8, whose rounding never meets them). Needs the onnx extra:
pip install 'reid-transformers[onnx]'.

example:
  reid-transformers export --model runs/la-market/best --output la-market.onnx
and its int8 version:
  reid-transformers export --model runs/la-market/best --output la-int8.onnx --quantize int8
"""


def _configure_export(parser: argparse.ArgumentParser) -> None:
    _add_model_flag(parser, "checkpoint folder (save_pretrained of model and processor) or Hub id")
    _flag(parser, "output", required=True, metavar="FILE.onnx", help="the ONNX file to write")
    _flag(parser, "overwrite", action="store_true", help="replace an existing output / JSON")
    _flag(parser, "opset", type=int, default=18, help="ONNX opset version (default 18)")
    _flag(parser, "atol", type=float, default=1e-4, help="largest allowed abs difference")
    _flag(parser, "min-cosine", type=float, default=0.99999, help="smallest allowed cosine")
    _flag(parser, "quantize", choices=("int8",), default=None,
          help="write onnxruntime's dynamic int8 quantisation of the graph (default: float32)")


def _run_export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .deployment.export import compare_with_onnxruntime, export_onnx

    output = Path(args.output)
    if output.suffix != ".onnx":
        parser.error(f"--output must end in .onnx, got {output}")
    for path in (output, output.with_suffix(".json")):  # the model and its metadata file
        if path.exists() and not args.overwrite:
            parser.error(f"{path} already exists; add --overwrite to replace it")
    checkpoint_source(args.model)  # a wrong --model fails before anything is imported
    model, processor = load_checkpoint(args.model, device="cpu")
    try:
        result = export_onnx(
            model, output, processor=processor, opset_version=args.opset, quantize=args.quantize
        )
        parity = compare_with_onnxruntime(model, result.path, (1, 7))
    except (ImportError, RuntimeError) as error:  # a missing extra, an untraceable model
        parser.error(str(error).strip().splitlines()[0])
    metadata = result.metadata
    print(
        f"Wrote {result.path} ({metadata['architecture']}, input (B, 3, "
        f"{metadata['input_size'][0]}, {metadata['input_size'][1]}), embeddings (B, "
        f"{metadata['embedding_dim']}); {result.exporter}) and {result.metadata_path}"
    )
    for batch_size, difference in parity.max_abs_diff.items():
        print(
            f"onnxruntime vs PyTorch, batch {batch_size}: max abs difference {difference:.2e}, "
            f"min cosine {parity.min_cosine[batch_size]:.7f}"
        )
    if args.quantize is None and not parity.within(args.atol, args.min_cosine):
        parser.error(
            f"onnxruntime's embeddings differ from PyTorch's beyond --atol {args.atol} / "
            f"--min-cosine {args.min_cosine}"
        )
    return 0


# --- search
_SEARCH_DESCRIPTION = """\
Search a gallery of person crops for one query image and draw the ranked list. The gallery
(a folder of images, searched recursively, or a dataset saved with save_to_disk) is
embedded and put in an exact cosine FAISS index; with --index-dir the index is saved there
and reused by later runs while it still fits (same images, same model and --flip setting).
Prints the top-k as 'rank score pid camid path' (cosine similarity, higher is better;
camid 0-based; -1 = unknown; identities come from Market-1501-style file names such as
0002_c1s1_000451_03.jpg) and writes a PNG: the query, then the matches framed green (same
identity), red (another) or grey (unknown).

example:
  reid-transformers search --model runs/la-market/best --gallery gallery_folder/ \\
      --query person.jpg --top-k 10 --index-dir gallery_index/ --output ranked.png
"""


def _configure_search(parser: argparse.ArgumentParser) -> None:
    _add_model_flag(parser, "checkpoint folder (save_pretrained of model and processor) or Hub id")
    _flag(
        parser,
        "gallery",
        required=True,
        metavar="PATH",
        help="folder of images, or a dataset saved with save_to_disk",
    )
    _flag(parser, "query", required=True, metavar="IMAGE", help="query image file")
    _flag(parser, "top-k", type=int, default=10, metavar="K", help="matches to show (default 10)")
    _flag(
        parser,
        "index-dir",
        metavar="DIR",
        help="save the gallery index here, and reuse it when it still fits",
    )
    _flag(
        parser,
        "output",
        default="ranked.png",
        metavar="FILE.png",
        help="PNG of the ranked list (default ranked.png)",
    )
    _add_embedding_flags(parser)


def _run_search(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _check_embedding_flags(parser, args)
    if not Path(args.gallery).exists():
        parser.error(f"--gallery {args.gallery} does not exist")
    if not Path(args.query).is_file():
        parser.error(f"--query {args.query} is not a file")
    _require_at_least(parser, "--top-k", args.top_k, 1)
    if Path(args.output).suffix.lower() != ".png":
        parser.error(f"--output must end in .png, got {args.output}")
    model, processor = load_checkpoint(args.model, device=args.device)
    gallery = load_gallery(args.gallery)
    prepared = prepare_gallery_index(
        model,
        processor,
        gallery,
        index_dir=args.index_dir,
        batch_size=args.batch_size,
        flip=args.flip,
        num_workers=args.num_workers,
        progress=not args.no_progress,
    )
    print(prepared.describe())
    found = search_gallery(
        model,
        processor,
        prepared.index,
        gallery,
        args.query,
        k=args.top_k,
        flip=args.flip,
        output=args.output,
    )
    print(found.format_table())
    print(f"Wrote {found.picture}")
    return 0


# --- card
_CARD_DESCRIPTION = """\
Write a checkpoint's model card (README.md) from its architecture's template: what the model
is and which weights these are, how to load it, intended and out-of-scope uses, risks and
legal obligations, the data, the recipe, the metrics table and the architecture settings,
every size read from the checkpoint's config. What the trainer saved beside the checkpoint
(card_inputs.json: recipe, data, origin, metrics) is kept unless given here, and the file is
updated with what is; without it, the metrics, dataset, model name and base model that the
previous card's metadata records are kept. --metrics takes the --json file of
'reid-transformers evaluate' (or a plain {"mAP": ..., "rank-1": ...} dictionary with
fractions in [0, 1]); its dataset is the folder layout the images were read in, so the card
names a benchmark only when --dataset (or --dataset-id) names it. --repo-id makes the loading
snippets name the Hub repository. Both files are written to temporary files and renamed into
place.

example:
  reid-transformers card --model runs/la-market/best --metrics runs/la-market/eval.json \\
      --dataset market1501 --repo-id my-org/la-transformer-market1501
"""


def _configure_card(parser: argparse.ArgumentParser) -> None:
    _add_model_flag(parser, "checkpoint folder to write README.md into")
    _flag(parser, "metrics", metavar="FILE.json", help="evaluation results to put in the card")
    _flag(
        parser,
        "dataset",
        metavar="NAME",
        help="name of the data: a benchmark (market1501, dukemtmc, occluded_duke, msmt17, "
        "msmt17_v2, cuhk03_np) or any display name; only a name given here (or saved before) "
        "makes the card name the data",
    )
    _flag(parser, "dataset-id", metavar="ORG/NAME", help="the data's Hub dataset id")
    _flag(parser, "repo-id", metavar="ORG/NAME", help="the Hub repository the card is for")
    _flag(
        parser,
        "model-name",
        metavar="NAME",
        help="title (default: the repository's name, the saved one, or the folder's)",
    )


def _describe_card(update: ModelCardUpdate) -> str:
    verb = "Wrote" if update.written else "Rendered"
    lines = [f"{verb} {update.path} ('{update.model_name}')"]
    if update.dataset is not None:
        data = update.dataset
    elif update.data_layout is not None:
        data = (f"{update.data_layout}-layout data, not named (the card names no benchmark; "
                f"pass --dataset to name it)")
    else:
        data = None
    if update.has_metrics:
        lines.append(f"Metrics on {data} are in the card.")
    else:
        lines.append("No metrics in the card (pass --metrics with the --json of evaluate).")
        if data is not None:
            lines.append(f"Data: {data}.")
    if update.kept:
        source = "saved card inputs" if update.inputs_found else "previous card"
        lines.append(f"Kept from the {source}: {', '.join(update.kept)}.")
    if update.replaced and not update.inputs_found:
        lines.append(
            "The previous card had no card_inputs.json beside it: its training-recipe table, "
            "if it had one, is not in its metadata and was not kept."
        )
    return "\n".join(lines)


def _run_card(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    evaluation = CheckpointEvaluation.load(args.metrics) if args.metrics else None
    update = write_model_card(
        args.model,
        evaluation=evaluation,
        dataset=args.dataset,
        dataset_id=args.dataset_id,
        repo_id=args.repo_id,
        model_name=args.model_name,
    )
    print(_describe_card(update))
    return 0


# --- push
_PUSH_DESCRIPTION = """\
Upload a checkpoint folder (weights, configs and model card) to the Hugging Face Hub in one
commit, creating the repository if needed. The folder is checked first, without any request
(model.safetensors, config.json, preprocessor_config.json and README.md); hidden and pickled
files are never uploaded, and files the repository already holds unchanged are not sent
again. --update-card re-renders the card so that its loading snippets name the repository
(see 'card'), uploads that card, and replaces the local README.md with it only once the
upload succeeded. Log in with 'hf auth login' or set HF_TOKEN rather than passing --token:
command lines are visible to other users of the machine. If the Hub cannot be reached or
refuses, the error says what to do; nothing local is changed.

example:
  reid-transformers push --model runs/la-market/best --repo-id my-org/la-transformer-market1501 \\
      --update-card
"""


def _configure_push(parser: argparse.ArgumentParser) -> None:
    _add_model_flag(parser, "checkpoint folder to upload")
    _flag(parser, "repo-id", required=True, metavar="ORG/NAME", help="the Hub repository")
    _flag(parser, "private", action="store_true", help="create the repository private")
    _flag(parser, "token", help="a Hub write token (default: the stored login or HF_TOKEN)")
    _flag(
        parser,
        "update-card",
        action="store_true",
        help="upload a card re-rendered with the repository id; README.md is replaced by it "
        "only after the upload succeeded",
    )
    _flag(
        parser,
        "commit-message",
        metavar="TEXT",
        help="default: 'Upload <model_type> checkpoint'",
    )


def _run_push(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    folder = Path(args.model)
    update = None
    if args.update_card:
        update = write_model_card(folder, repo_id=args.repo_id, save=False)
    elif folder.is_dir() and not (folder / "README.md").is_file():
        parser.error(
            f"{folder} has no README.md model card; write one with "
            f"'{PROG} card --model {folder}' or add --update-card"
        )
    try:
        url = push_to_hub(
            folder,
            args.repo_id,
            token=args.token,
            private=args.private,
            commit_message=args.commit_message,
            card=update.card if update is not None else None,
        )
    except HubPushError as error:
        if update is None:
            raise
        raise HubPushError(
            f"{error} The re-rendered card was not written either: README.md is the previous "
            f"one."
        ) from error.__cause__
    print(f"Pushed {folder} to {args.repo_id}: {url}")
    if update is not None:
        # Only now: a failed upload must leave the local card as it was.
        save_model_card(update.card, folder)
        print(_describe_card(dataclasses.replace(update, written=True)))
    return 0


_COMMANDS: dict[str, _Command] = {
    command.name: command
    for command in (
        _Command(
            "train",
            "train a model (flags of ReIDTrainingArguments)",
            _TRAIN_DESCRIPTION,
            _configure_train,
            _run_train,
            # Everything after 'train' goes to the trainer's parser untouched: with no
            # option prefix of its own, this parser takes every argument as a positional.
            parser_options={"add_help": False, "prefix_chars": "+"},
        ),
        _Command(
            "evaluate",
            "mAP / CMC / mINP of a checkpoint on a dataset",
            _EVALUATE_DESCRIPTION,
            _configure_evaluate,
            _run_evaluate,
        ),
        _Command(
            "extract",
            "save a checkpoint's embeddings of a dataset or folder (.npz)",
            _EXTRACT_DESCRIPTION,
            _configure_extract,
            _run_extract,
        ),
        _Command(
            "export",
            "export a checkpoint to ONNX (dynamic batch, preprocessing metadata)",
            _EXPORT_DESCRIPTION,
            _configure_export,
            _run_export,
        ),
        _Command(
            "search",
            "search a gallery for a query image, draw the ranked list",
            _SEARCH_DESCRIPTION,
            _configure_search,
            _run_search,
        ),
        _Command(
            "card",
            "write a checkpoint's model card (README.md)",
            _CARD_DESCRIPTION,
            _configure_card,
            _run_card,
        ),
        _Command(
            "push",
            "upload a checkpoint and its card to the Hugging Face Hub",
            _PUSH_DESCRIPTION,
            _configure_push,
            _run_push,
        ),
    )
}

_DESCRIPTION = f"""\
Person re-identification with reid_transformers: train a model, evaluate it under the
Market-1501 protocol, embed and search images with it, and publish it with a model card.
Checkpoints are folders written by save_pretrained (model.safetensors, config.json,
preprocessor_config.json, README.md); the trainer writes them. Multi-word flags take
hyphens or underscores (--data-dir or --data_dir).

a first run, on the synthetic data (minutes on a CPU):
  {PROG} train --preset tiny --output_dir runs/tiny
  {PROG} evaluate --model runs/tiny/best --json runs/tiny/eval.json
  {PROG} card --model runs/tiny/best --metrics runs/tiny/eval.json

'{PROG} COMMAND --help' describes a command, with an example.
"""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The full command-line parser: global flags, then one sub-parser per command."""
    parser = _Parser(prog=prog, description=_DESCRIPTION, formatter_class=_Formatter)
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    for command in _COMMANDS.values():
        sub = commands.add_parser(
            command.name,
            help=command.summary,
            description=command.description,
            formatter_class=_Formatter,
            **command.parser_options,
        )
        command.configure(sub)
        sub.set_defaults(_command=command, _parser=sub)
    return parser


def _execute(
    command: _Command,
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    *,
    show_traceback: bool,
) -> int:
    try:
        if getattr(args, "no_progress", False):
            with transformers_progress_bars_disabled():
                return command.run(args, parser)
        return command.run(args, parser)
    except HubPushError as error:
        if show_traceback:
            raise
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    except _USAGE_ERRORS as error:
        if show_traceback:
            raise
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"{parser.prog}: error: {message} ({_TRACEBACK_HINT})", file=sys.stderr)
        return 2
    except CheckpointUnavailableError as error:
        if show_traceback:
            raise
        print(f"{parser.prog}: error: {error} ({_TRACEBACK_HINT})", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``reid-transformers`` with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Bad flags and ``--help`` / ``--version`` end in ``SystemExit`` (status 2 and 0), as with any
    argparse program; errors met while running return 2 (usage) or 1 (Hub push) after one line
    on stderr.
    """
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    return _execute(args._command, args, args._parser, show_traceback=args.traceback)


def run_command(name: str, argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run one command as a program of its own, e.g. ``run_command("search", prog="search.py")``.

    For scripts that wrap a single command: ``argv`` (default ``sys.argv[1:]``) holds that
    command's flags only, and ``prog`` names the program in help and error lines (default
    ``reid-transformers NAME``). Exit behaviour as for :func:`main`.

    Raises:
        ValueError: ``name`` is not a command.
    """
    if name not in _COMMANDS:
        raise ValueError(f"unknown command {name!r}; expected one of {sorted(_COMMANDS)}")
    command = _COMMANDS[name]
    parser = _Parser(
        prog=prog or f"{PROG} {name}",
        description=command.description,
        formatter_class=_Formatter,
        **command.parser_options,
    )
    command.configure(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    return _execute(command, args, parser, show_traceback=False)


if __name__ == "__main__":
    raise SystemExit(main())
