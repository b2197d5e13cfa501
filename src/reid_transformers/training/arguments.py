"""Training arguments, parsed from the command line or a YAML/JSON file, and recipe presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedConfig

from ..data import available_datasets
from ..data.datasets import CUHK03_SPLITS
from ..hub import CardInputs
from ..modeling_utils import WEIGHT_DECAY_SCOPES
from ..models import ARCHITECTURES
from ..utils import check_choice, check_int, check_positive_number
from .unfreezing import LR_DECAY_SCHEDULES

_CONFIGS = {config.model_type: config for config, _, _ in ARCHITECTURES}

OPTIMIZERS = ("sgd", "adam", "adamw")
MIXED_PRECISION = ("no", "bf16", "fp16")
SAMPLERS = ("pk", "random")



def _option(default: Any, help_text: str) -> Any:
    """A field of :class:`ReIDTrainingArguments`: its default and the help its flag shows (a
    list default is copied for every instance, as ``default_factory`` does)."""
    if isinstance(default, list):
        return field(default_factory=default.copy, metadata={"help": help_text})
    return field(default=default, metadata={"help": help_text})


@dataclass
class ReIDTrainingArguments:
    """Everything a training run needs; every field is a command-line flag of examples/train.py.

    A ``preset`` (see :data:`PRESETS`) fills in a paper's recipe; flags given explicitly win.
    """

    # what to train, on what
    model: str = _option(
        "la_transformer",
        "architecture (model_type, e.g. la_transformer) or a checkpoint folder / Hub id",
    )
    preset: str | None = _option(
        None, "recipe preset: an architecture name (paper recipe) or 'tiny' (CPU minutes)"
    )
    dataset: str = _option(
        "synthetic",
        "synthetic, market1501, dukemtmc, occluded_duke, msmt17, msmt17_v2, cuhk03_np, generic",
    )
    data_dir: str | None = _option(None, "dataset root (not needed for synthetic)")
    dataset_name: str | None = _option(
        None,
        "the data's name for the model card: a benchmark (market1501, dukemtmc, occluded_duke, "
        "msmt17, msmt17_v2, cuhk03_np) or any display name; without it (or --dataset_id) the card "
        "calls the data a custom dataset in the --dataset layout and names no benchmark (--dataset "
        "synthetic names itself)",
    )
    dataset_id: str | None = _option(
        None, "the data's Hub dataset id, for the card's metadata (it names the data)"
    )
    cuhk03_split: str = _option("detected", "cuhk03_np: detected or labeled boxes")
    merge_val: bool = _option(False, "msmt17: add list_val.txt to the train split")
    output_dir: str = _option("outputs/train", "checkpoints and logs")
    pretrained_backbone: str | None = _option(
        None, "ImageNet weights for a new model's backbone (Hub id, folder or timm file)"
    )
    image_size: list[int] | None = _option(
        None, "input height width, e.g. 256 128 (none: the model's)"
    )
    model_overrides: str | None = _option(
        None, "JSON dict of config fields for a new model, e.g. '{\"hidden_size\": 64}'"
    )

    # schedule
    epochs: int = _option(30, "training epochs (ignored with --max_steps)")
    max_steps: int = _option(
        0,
        "stop after this many optimizer steps instead of after --epochs (0: off); step-unit "
        "schedules then span max_steps",
    )
    sampler: str = _option(
        "pk",
        "pk: P identities x K images per batch (needed by triplet losses); random: plain shuffled "
        "batches of --batch_size (LA-Transformer's released code)",
    )
    identities_per_batch: int = _option(8, "P of the P x K batch")
    instances_per_identity: int = _option(4, "K of the P x K batch")
    batch_size: int | None = _option(None, "images per batch with --sampler random (none: P x K)")
    optimizer: str = _option("adam", "sgd, adam or adamw")
    learning_rate: float = _option(3e-4, "base learning rate of the new layers")
    trunk_lr_factor: float = _option(
        1.0, "learning-rate multiplier of the pretrained trunk (e.g. 0.1 for PAN)"
    )
    transformer_lr_factor: float = _option(
        1.0, "learning-rate multiplier of transformer layers on a CNN trunk (0.5 for HAT)"
    )
    weight_decay: float = _option(5e-4, "L2 penalty (Adam, SGD) or decoupled decay (AdamW)")
    weight_decay_scope: str = _option(
        "weights",
        "weights: decay matrices and kernels only; all: every parameter incl. biases, norms and "
        "tokens (the paper presets' reference code)",
    )
    momentum: float = _option(0.9, "SGD momentum")
    scheduler: str = _option("cosine", "cosine, multistep or constant")
    schedule_unit: str = _option("epoch", "epoch or step")
    warmup: int = _option(
        0,
        "linear warm-up from warmup_factor x the rate, counted in warmup_unit; with the epoch unit "
        "the rate changes once per epoch, so a 1-epoch warm-up runs the whole first epoch at "
        "warmup_factor x (use warmup_unit step for a smooth ramp)",
    )
    warmup_unit: str | None = _option(
        None, "epoch or step (none: schedule_unit); fast-reid warms up per step"
    )
    warmup_factor: float = _option(0.01, "learning-rate multiplier at the start of the warm-up")
    milestones: list[int] = _option([], "multistep decay points, in schedule_unit")
    gamma: float = _option(0.1, "multistep decay factor at each milestone")
    gradient_accumulation_steps: int = _option(1, "batches per optimizer step")
    max_grad_norm: float | None = _option(
        None, "clip the gradient norm to this (none: no clipping)"
    )
    mixed_precision: str = _option("no", "no, bf16 or fp16")
    seed: int = _option(0, "seed of the model init, sampling and augmentation")

    # blockwise fine-tuning
    blockwise_unfreezing: bool = _option(
        False, "train trunk blocks top-down, one more every unfreeze_every epochs"
    )
    unfreeze_every: int = _option(2, "epochs between two block releases")
    lr_decay: float = _option(
        0.8, "blockwise: learning-rate factor per decay (see lr_decay_schedule)"
    )
    initially_unfrozen: int = _option(1, "blockwise: trunk blocks that train from the first epoch")
    lr_decay_schedule: str = _option(
        "periodic",
        "periodic: x lr_decay at epoch 0 and every unfreeze_every epochs to the end (LA-"
        "Transformer's code); releases: only when a further block is released",
    )

    # augmentation
    flip_probability: float = _option(0.5, "horizontal flip probability")
    crop_padding: int = _option(
        10, "pad by this many pixels, then crop back at a random offset (0: off)"
    )
    erasing_probability: float = _option(0.0, "random erasing probability")
    random_patch_probability: float = _option(
        0.0, "paste a patch of another batch image (fast-reid)"
    )
    cutout_probability: float = _option(0.0, "zero a --cutout_size square (DeVries and Taylor)")
    cutout_size: int = _option(16, "side of the cutout square, pixels")

    # evaluation and logging
    eval_every: int = _option(1, "epochs between evaluations (0: at the end only)")
    eval_flip: bool = _option(
        False, "evaluate on the average of each image's and its mirror's embedding"
    )
    eval_rerank: bool = _option(False, "evaluate with k-reciprocal re-ranking")
    distance: str = _option("cosine", "cosine or euclidean")
    num_workers: int = _option(0, "image-decoding processes (0: in the main process)")
    batch_size_eval: int = _option(64, "images per batch when embedding query and gallery")
    resume: bool = _option(False, "continue from output_dir/state")
    overwrite_output_dir: bool = _option(
        False,
        "delete the previous run in output_dir (state, best, last, metrics.jsonl, "
        "training_args.json) and start again; without it such a folder is refused",
    )
    max_minutes: float = _option(
        0.0,
        "wall-clock budget: stop after the optimizer step that exceeds this many minutes, then "
        "evaluate and save as at the last epoch (0: off)",
    )
    push_to_hub: bool = _option(
        False, "upload the best checkpoint (weights, configs, card) to --hub_model_id"
    )
    hub_model_id: str | None = _option(None, "namespace/name on the Hub")
    hub_private: bool = _option(False, "create the Hub repository as private")
    hub_token: str | None = _option(None, "Hub token (none: the one saved by `hf auth login`)")
    report_to: list[str] = _option([], "accelerate trackers, e.g. tensorboard wandb")
    progress: bool = _option(True, "show progress bars")

    def __post_init__(self) -> None:
        # Checked here, before any dataset or weights are loaded; with a preset, once it is
        # applied (it may choose the model: apply_preset).
        overrides = parse_model_overrides(self.model_overrides)
        if self.model in _CONFIGS and self.preset is None:
            check_model_overrides(_CONFIGS[self.model], overrides)
        for name, allowed in (
            ("optimizer", OPTIMIZERS),
            ("cuhk03_split", CUHK03_SPLITS),
            ("sampler", SAMPLERS),
            ("weight_decay_scope", WEIGHT_DECAY_SCOPES),
            ("lr_decay_schedule", LR_DECAY_SCHEDULES),
            ("mixed_precision", MIXED_PRECISION),
        ):
            check_choice(name, getattr(self, name), allowed)
        for name in (
            "epochs",
            "identities_per_batch",
            "instances_per_identity",
            "gradient_accumulation_steps",
            "batch_size_eval",
        ):
            check_int(name, getattr(self, name), minimum=1)
        # 0: train for --epochs.
        check_int("max_steps", self.max_steps, minimum=0)
        check_positive_number("learning_rate", self.learning_rate)
        if self.dataset != "synthetic" and self.dataset not in available_datasets():
            raise ValueError(
                f"unknown dataset {self.dataset!r}; expected 'synthetic' or one of "
                f"{available_datasets()}"
            )
        # The card's description of the data, checked before anything is loaded.
        CardInputs(
            dataset_name=self.dataset_name, dataset_id=self.dataset_id, data_layout=self.dataset
        )
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, minimum=2)
            if self.sampler == "pk":
                raise ValueError(
                    "batch_size applies to --sampler random; with --sampler pk the batch is "
                    "--identities_per_batch x --instances_per_identity"
                )
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (namespace/name)")
        if self.image_size is not None:
            if len(self.image_size) != 2 or min(int(v) for v in self.image_size) < 1:
                raise ValueError(
                    f"image_size must be two positive numbers (height width), got "
                    f"{list(self.image_size)}"
                )
            self.image_size = tuple(int(v) for v in self.image_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary of every field."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def parse_model_overrides(text: str | None) -> dict[str, Any]:
    """``--model_overrides`` as a dict (``{}`` for None); ValueError unless a JSON object."""
    if text is None:
        return {}
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"model_overrides must be a JSON object, got {text!r}: {error}") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"model_overrides must be a JSON object, got {text!r}")
    return overrides


def check_model_overrides(
    config_class: type[PreTrainedConfig], overrides: dict[str, Any], *, preset: str | None = None
) -> None:
    """Every key of ``overrides`` must be a field of ``config_class``: a config silently keeps
    unknown keyword arguments, so a misspelt override (``tfc_depth``) or one meant for another
    architecture would otherwise change nothing."""
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        own = sorted(known - {f.name for f in dataclasses.fields(PreTrainedConfig)})
        origin = f" (with --preset {preset})" if preset else ""
        raise ValueError(
            f"model_overrides {unknown}{origin} are not fields of {config_class.__name__}; its "
            f"fields: {own}"
        )


# Paper recipes and a CPU-sized one: the fields that differ from the dataclass defaults, and
# those a paper's recipe hinges on; docs/reproducing.md gives the source of every value.
PRESETS: dict[str, dict[str, Any]] = {
    "la_transformer": {
        # The released training notebook: Adam 3e-4 with L2 5e-4 on every parameter, plain
        # shuffled batches of 32, flip only, 30 epochs; blockwise fine-tuning from the top 2
        # blocks, one more every 2 epochs, lr x 0.8 at epoch 0 and every 2 epochs after.
        "model": "la_transformer",
        "epochs": 30,
        "optimizer": "adam",
        "learning_rate": 3e-4,
        "weight_decay": 5e-4,
        "weight_decay_scope": "all",
        "scheduler": "constant",
        "sampler": "random",
        "batch_size": 32,
        "blockwise_unfreezing": True,
        "unfreeze_every": 2,
        "lr_decay": 0.8,
        "initially_unfrozen": 2,
        "lr_decay_schedule": "periodic",
        "crop_padding": 0,
        "pretrained_backbone": "google/vit-base-patch16-224",
        "distance": "cosine",
    },
    "aaformer": {
        # No released code; the paper's TransReID-style recipe, whose optimizer builder
        # decays every parameter (biases at the same rate).
        "model": "aaformer",
        "epochs": 120,
        "optimizer": "sgd",
        "momentum": 0.9,
        "learning_rate": 8e-3,
        "weight_decay": 1e-4,
        "weight_decay_scope": "all",
        "scheduler": "cosine",
        "warmup": 10,
        "warmup_factor": 0.1,
        "identities_per_batch": 16,
        "instances_per_identity": 4,
        "crop_padding": 10,
        "erasing_probability": 0.5,
        "pretrained_backbone": "google/vit-base-patch16-224",
        "distance": "cosine",
    },
    "pan": {
        # The paper counts iterations: SGD, 0.1 for new layers and 0.01 for the trunk, x0.1 at
        # 5000 and 7500, stop at 10000; P x K = 8 x 4, random erasing (section 4.1). No
        # released code: plain SGD weight decay on every parameter.
        "model": "pan",
        "max_steps": 10000,
        "optimizer": "sgd",
        "momentum": 0.9,
        "learning_rate": 0.1,
        "trunk_lr_factor": 0.1,
        "weight_decay": 5e-4,
        "weight_decay_scope": "all",
        "scheduler": "multistep",
        "schedule_unit": "step",
        "milestones": [5000, 7500],
        "gamma": 0.1,
        "identities_per_batch": 8,
        "instances_per_identity": 4,
        "erasing_probability": 0.5,
        "pretrained_backbone": "microsoft/resnet-50",
        "distance": "cosine",
    },
    "hat": {
        # Adam 4e-4 with L2 5e-4 on every parameter (released code), transformer layers at
        # half the rate, 10 warm-up epochs from 0.01x, x0.4 at epochs 50, 70, 90, 110 and 130
        # of the paper's 150 (the code's YAML runs 170); BoT augmentation.
        "model": "hat",
        "epochs": 150,
        "optimizer": "adam",
        "learning_rate": 4e-4,
        "transformer_lr_factor": 0.5,
        "weight_decay": 5e-4,
        "weight_decay_scope": "all",
        "scheduler": "multistep",
        "warmup": 10,
        "warmup_factor": 0.01,
        "milestones": [50, 70, 90, 110, 130],
        "gamma": 0.4,
        "identities_per_batch": 16,
        "instances_per_identity": 4,
        "crop_padding": 10,
        "erasing_probability": 0.5,
        "pretrained_backbone": "microsoft/resnet-50",
        "distance": "cosine",
    },
    "prct": {
        # fast-reid bag of tricks: Adam 3.5e-4, weight decay on every parameter (norms and
        # biases at the same rate), 2000 warm-up iterations, x0.1 at epochs 40 and 90 of 120;
        # flip, pad-crop, random erasing and random patch.
        "model": "prct",
        "epochs": 120,
        "optimizer": "adam",
        "learning_rate": 3.5e-4,
        "weight_decay": 5e-4,
        "weight_decay_scope": "all",
        "scheduler": "multistep",
        "warmup": 2000,
        "warmup_unit": "step",
        "warmup_factor": 0.1,
        "milestones": [40, 90],
        "gamma": 0.1,
        "identities_per_batch": 16,
        "instances_per_identity": 4,
        "crop_padding": 10,
        "erasing_probability": 0.5,
        "random_patch_probability": 0.5,
        "pretrained_backbone": "microsoft/resnet-50",
        "distance": "cosine",
    },
    "tiny": {
        "epochs": 40,
        "eval_every": 5,
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "weight_decay": 5e-4,
        "scheduler": "cosine",
        # A per-step ramp over about one epoch of the synthetic data (30 batches of 8 x 4).
        "warmup": 30,
        "warmup_unit": "step",
        "identities_per_batch": 8,
        "instances_per_identity": 4,
        "image_size": (64, 32),
        "crop_padding": 4,
        "blockwise_unfreezing": True,
        "unfreeze_every": 2,
        "lr_decay": 0.8,
        "initially_unfrozen": 1,
        # 40 short epochs: decaying only at the 3 releases keeps the rate useful to the end.
        "lr_decay_schedule": "releases",
    },
}


_TINY_VIT = {
    "patch_size": 8,
    "patch_stride": 8,
    "hidden_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 192,
    "drop_path_rate": 0.0,
}
#: A ResNet trunk of 0.3 M parameters (one basic block per stage).
_TINY_RESNET = {
    "layer_type": "basic",
    "depths": [1, 1, 1, 1],
    "hidden_sizes": [16, 32, 64, 128],
    "stem_channels": 16,
}

#: Per-architecture model overrides of a preset, used when ``--model`` names an architecture
#: (a checkpoint keeps its own config); ``--model_overrides`` refines them key by key.
PRESET_MODEL_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "la_transformer": {**_TINY_VIT, "classifier_hidden_size": 64},
        "aaformer": _TINY_VIT,
        "pan": {**_TINY_RESNET, "pam_dim": 32, "embedding_size": 32},
        "hat": {
            **_TINY_RESNET,
            "bottleneck_depth": 1,
            "tfc_depths": [1, 1, 1],
            "tfc_hidden_sizes": [32, 48, 64],
            "tfc_num_heads": 2,
            "tfc_head_dim": 16,
            "tfc_intermediate_size": 64,
        },
        "prct": {
            **_TINY_RESNET,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 128,
            "linformer_k": 4,
        },
    },
}


def apply_preset(args: ReIDTrainingArguments, explicit: set[str]) -> ReIDTrainingArguments:
    """Fill ``args`` from ``PRESETS[args.preset]`` except the fields in ``explicit``; the
    preset's model overrides for the chosen architecture (:data:`PRESET_MODEL_OVERRIDES`) are
    merged under ``args.model_overrides`` (explicit keys win)."""
    if args.preset is None:
        return args
    if args.preset not in PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; known: {sorted(PRESETS)}")
    updates = {k: v for k, v in PRESETS[args.preset].items() if k not in explicit}
    if updates.get("sampler", args.sampler) != "random":
        updates.pop("batch_size", None)  # the preset's shuffled-batch size; P x K decides
    model = updates.get("model", args.model)
    overrides = PRESET_MODEL_OVERRIDES.get(args.preset, {}).get(model)
    if overrides is not None:
        # Explicit overrides refine the preset's, key by key.
        explicit_overrides = parse_model_overrides(args.model_overrides)
        updates["model_overrides"] = json.dumps({**overrides, **explicit_overrides})
    args = dataclasses.replace(args, **updates)
    if args.model in _CONFIGS:
        check_model_overrides(
            _CONFIGS[args.model], parse_model_overrides(args.model_overrides), preset=args.preset
        )
    return args


ARGUMENT_FILE_SUFFIXES = (".json", ".yaml", ".yml")


def read_argument_file(path: str | Path) -> dict[str, Any]:
    """The field values of a ``.yaml`` / ``.json`` argument file (e.g. ``configs/hat.yaml``),
    checked against the fields of :class:`ReIDTrainingArguments`."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        values = json.loads(text)
    else:
        import yaml

        values = yaml.safe_load(text)
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values")
    unknown = set(values) - {f.name for f in dataclasses.fields(ReIDTrainingArguments)}
    if unknown:
        raise ValueError(f"{path}: unknown arguments {sorted(unknown)}")
    return values


def parse_arguments(argv: list[str] | None = None) -> ReIDTrainingArguments:
    """Parse ``[FILE.yaml|FILE.json] [--flag value ...]``, then apply the preset.

    The file's values (a recipe such as ``configs/hat.yaml``) replace the defaults, flags
    replace the file's values, and a preset fills only what neither names.
    """
    from transformers import HfArgumentParser

    argv = list(argv or [])
    file_values: dict[str, Any] = {}
    if argv and Path(argv[0]).suffix in ARGUMENT_FILE_SUFFIXES:
        file_values = read_argument_file(argv.pop(0))
    parser = HfArgumentParser(ReIDTrainingArguments)
    parser.set_defaults(**file_values)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    # Flags may be spelled with hyphens (--learning-rate), as the parser accepts.
    given = [a.replace("-", "_") if a.startswith("--") else a for a in argv]
    explicit = set(file_values) | {
        f.name
        for f in dataclasses.fields(ReIDTrainingArguments)
        if any(a == f"__{f.name}" or a.startswith(f"__{f.name}=") for a in given)
    }
    return apply_preset(args, explicit)
