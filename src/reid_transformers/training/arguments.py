"""Training arguments, parsed from the command line or a YAML/JSON file, and recipe presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPTIMIZERS = ("sgd", "adam", "adamw")
MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class ReIDTrainingArguments:
    """Everything a training run needs; every field is a command-line flag of examples/train.py.

    A ``preset`` (see :data:`PRESETS`) fills in a paper's recipe; flags given explicitly win.
    """

    # what to train, on what
    model: str = field(
        default="la_transformer",
        metadata={
            "help": "architecture (model_type, e.g. la_transformer) or a checkpoint folder / Hub id"
        },
    )
    preset: str | None = field(
        default=None,
        metadata={
            "help": "recipe preset: an architecture name (paper recipe) or 'tiny' (CPU minutes)"
        },
    )
    dataset: str = field(
        default="synthetic",
        metadata={
            "help": "synthetic, market1501, dukemtmc, occluded_duke, msmt17, msmt17_v2, cuhk03_np, "
            "generic"
        },
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "dataset root (not needed for synthetic)"}
    )
    output_dir: str = field(default="outputs/train", metadata={"help": "checkpoints and logs"})
    pretrained_backbone: str | None = field(
        default=None,
        metadata={
            "help": "ImageNet weights for a new model's backbone (Hub id, folder or timm file)"
        },
    )
    image_size: list[int] | None = field(
        default=None, metadata={"help": "input height width, e.g. 256 128 (default: the model's)"}
    )
    model_overrides: str | None = field(
        default=None,
        metadata={
            "help": "JSON dict of config fields for a new model, e.g. '{\"hidden_size\": 64}'"
        },
    )

    # schedule
    epochs: int = 30
    identities_per_batch: int = field(default=8, metadata={"help": "P of the P x K batch"})
    instances_per_identity: int = field(default=4, metadata={"help": "K of the P x K batch"})
    optimizer: str = field(default="adam", metadata={"help": "sgd, adam or adamw"})
    learning_rate: float = 3e-4
    trunk_lr_factor: float = field(
        default=1.0,
        metadata={"help": "learning-rate multiplier of the pretrained trunk (e.g. 0.1 for PAN)"},
    )
    transformer_lr_factor: float = field(
        default=1.0,
        metadata={
            "help": "learning-rate multiplier of transformer layers on a CNN trunk (0.5 for HAT)"
        },
    )
    weight_decay: float = 5e-4
    momentum: float = 0.9
    scheduler: str = field(default="cosine", metadata={"help": "cosine, multistep or constant"})
    schedule_unit: str = field(default="epoch", metadata={"help": "epoch or step"})
    warmup: int = field(
        default=0, metadata={"help": "warm-up length in warmup_unit (default: schedule_unit)"}
    )
    warmup_unit: str | None = field(
        default=None, metadata={"help": "epoch or step (default: schedule_unit)"}
    )
    warmup_factor: float = 0.01
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = None
    mixed_precision: str = field(default="no", metadata={"help": "no, bf16 or fp16"})
    seed: int = 0

    # blockwise fine-tuning
    blockwise_unfreezing: bool = False
    unfreeze_every: int = 2
    lr_decay: float = 0.8
    initially_unfrozen: int = 1

    # augmentation
    flip_probability: float = 0.5
    crop_padding: int = 10
    erasing_probability: float = 0.0
    random_patch_probability: float = field(
        default=0.0, metadata={"help": "paste a patch of another batch image (fast-reid)"}
    )

    # evaluation and logging
    eval_every: int = field(
        default=1, metadata={"help": "epochs between evaluations (0: at the end only)"}
    )
    eval_flip: bool = False
    eval_rerank: bool = False
    distance: str = "cosine"
    num_workers: int = 0
    batch_size_eval: int = 64
    resume: bool = field(default=False, metadata={"help": "continue from output_dir/state"})
    push_to_hub: bool = field(
        default=False,
        metadata={"help": "upload the best checkpoint (weights, configs, card) to --hub_model_id"},
    )
    hub_model_id: str | None = field(default=None, metadata={"help": "namespace/name on the Hub"})
    hub_private: bool = False
    hub_token: str | None = field(
        default=None, metadata={"help": "Hub token (default: the one saved by `hf auth login`)"}
    )
    report_to: list[str] = field(
        default_factory=list, metadata={"help": "accelerate trackers, e.g. tensorboard wandb"}
    )
    progress: bool = True

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}"
            )
        for name in (
            "epochs",
            "identities_per_batch",
            "instances_per_identity",
            "gradient_accumulation_steps",
            "batch_size_eval",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
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


# Paper recipes (ARCHITECTURES.md) and a CPU-sized one. Only fields that differ from the
# dataclass defaults are listed.
PRESETS: dict[str, dict[str, Any]] = {
    "la_transformer": {
        "model": "la_transformer",
        "epochs": 30,
        "optimizer": "adam",
        "learning_rate": 3e-4,
        "weight_decay": 5e-4,
        "scheduler": "constant",
        "identities_per_batch": 8,
        "instances_per_identity": 4,
        "blockwise_unfreezing": True,
        "unfreeze_every": 2,
        "lr_decay": 0.8,
        "initially_unfrozen": 2,
        "crop_padding": 0,
        "pretrained_backbone": "google/vit-base-patch16-224",
        "distance": "cosine",
    },
    "aaformer": {
        "model": "aaformer",
        "epochs": 120,
        "optimizer": "sgd",
        "momentum": 0.9,
        "learning_rate": 8e-3,
        "weight_decay": 1e-4,
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
        # The paper counts iterations: x0.1 at 5000 and 7500, stop at 10000 (about 25
        # Market-1501 epochs of 8 x 4 batches).
        "model": "pan",
        "epochs": 25,
        "optimizer": "sgd",
        "momentum": 0.9,
        "learning_rate": 0.1,
        "trunk_lr_factor": 0.1,
        "weight_decay": 5e-4,
        "scheduler": "multistep",
        "schedule_unit": "step",
        "milestones": [5000, 7500],
        "gamma": 0.1,
        "identities_per_batch": 8,
        "instances_per_identity": 4,
        "pretrained_backbone": "microsoft/resnet-50",
        "distance": "cosine",
    },
    "hat": {
        # Adam 4e-4, transformer layers at half the rate, 10 warm-up epochs from 0.01x, then
        # x0.4 at epochs 50, 70, 90 and 110; BoT augmentation.
        "model": "hat",
        "epochs": 120,
        "optimizer": "adam",
        "learning_rate": 4e-4,
        "transformer_lr_factor": 0.5,
        "weight_decay": 5e-4,
        "scheduler": "multistep",
        "warmup": 10,
        "warmup_factor": 0.01,
        "milestones": [50, 70, 90, 110],
        "gamma": 0.4,
        "identities_per_batch": 16,
        "instances_per_identity": 4,
        "crop_padding": 10,
        "erasing_probability": 0.5,
        "pretrained_backbone": "microsoft/resnet-50",
        "distance": "cosine",
    },
    "prct": {
        # fast-reid bag of tricks: Adam 3.5e-4, 2000 warm-up iterations, x0.1 at epochs 40
        # and 90 of 120; flip, pad-crop, random erasing and random patch.
        "model": "prct",
        "epochs": 120,
        "optimizer": "adam",
        "learning_rate": 3.5e-4,
        "weight_decay": 5e-4,
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
        "warmup": 1,
        "identities_per_batch": 8,
        "instances_per_identity": 4,
        "image_size": (64, 32),
        "crop_padding": 4,
        "blockwise_unfreezing": True,
        "unfreeze_every": 2,
        "lr_decay": 0.8,
        "initially_unfrozen": 1,
        "model_overrides": json.dumps(
            {
                "patch_size": 8,
                "patch_stride": 8,
                "hidden_size": 96,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
                "intermediate_size": 192,
                "classifier_hidden_size": 64,
                "drop_path_rate": 0.0,
            }
        ),
    },
}


def apply_preset(args: ReIDTrainingArguments, explicit: set[str]) -> ReIDTrainingArguments:
    """Fill ``args`` from ``PRESETS[args.preset]`` except the fields in ``explicit``."""
    if args.preset is None:
        return args
    if args.preset not in PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; known: {sorted(PRESETS)}")
    updates = {k: v for k, v in PRESETS[args.preset].items() if k not in explicit}
    return dataclasses.replace(args, **updates)


def parse_arguments(argv: list[str] | None = None) -> ReIDTrainingArguments:
    """Parse flags, or a single ``.yaml``/``.json`` file of field values, then the preset."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(ReIDTrainingArguments)
    if argv and len(argv) == 1 and Path(argv[0]).suffix in (".json", ".yaml", ".yml"):
        path = Path(argv[0])
        if path.suffix == ".json":
            values = json.loads(path.read_text())
        else:
            import yaml

            values = yaml.safe_load(path.read_text())
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of argument names to values")
        unknown = set(values) - {f.name for f in dataclasses.fields(ReIDTrainingArguments)}
        if unknown:
            raise ValueError(f"{path}: unknown arguments {sorted(unknown)}")
        args = ReIDTrainingArguments(**values)
        explicit = set(values)
    else:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
        given = argv or []
        explicit = {
            f.name
            for f in dataclasses.fields(ReIDTrainingArguments)
            if any(a == f"--{f.name}" or a.startswith(f"--{f.name}=") for a in given)
        }
    return apply_preset(args, explicit)
