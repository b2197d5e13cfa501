"""Accelerate-based trainer for every re-ID model of the package.

One process or many (``accelerate launch``): identity-balanced P x K batches from
:class:`~reid_transformers.data.PKSampler` or plain shuffled ones from
:class:`~reid_transformers.data.RandomBatchSampler` (each rank its own disjoint batches), batched
augmentation on the device, the model's own loss, warm-up + cosine / multi-step learning
rate, optional blockwise unfreezing, periodic evaluation under the Market-1501 protocol,
``save_pretrained`` checkpoints (best and last, with a model card), resumable state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from datasets import DatasetDict
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoImageProcessor, AutoModel, PreTrainedConfig

from ..data import (
    BatchAugmentation,
    PKSampler,
    RandomBatchSampler,
    available_datasets,
    load_reid_dataset,
    make_synthetic_reid,
)
from ..evaluation import ReIDMetric
from ..hub import push_to_hub, render_model_card, save_model_card
from ..models import ARCHITECTURES
from ..retrieval.extraction import extract_embeddings
from ..utils import replace_directory
from .arguments import ReIDTrainingArguments
from .schedules import WarmupSchedule
from .unfreezing import BlockwiseUnfreezing

logger = logging.getLogger(__name__)

_PROCESSORS = {config.model_type: processor for config, _, processor in ARCHITECTURES}
_CONFIGS = {config.model_type: config for config, _, _ in ARCHITECTURES}


@dataclass
class TrainerState:
    """What a resumed run needs beyond model, optimizer and RNG states."""

    epoch: int = 0  # epochs completed
    global_step: int = 0
    best_map: float = -1.0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "global_step": self.global_step, "best_map": self.best_map}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best_map = float(state["best_map"])


def load_training_data(args: ReIDTrainingArguments) -> DatasetDict:
    """The dataset named by ``args`` (the synthetic one is generated or reused)."""
    if args.dataset != "synthetic" and args.dataset not in available_datasets():
        raise ValueError(
            f"unknown dataset {args.dataset!r}; expected 'synthetic' or one of "
            f"{available_datasets()}"
        )
    if args.dataset == "synthetic":
        root = make_synthetic_reid(args.data_dir, progress=args.progress)
        return load_reid_dataset("market1501", root, progress=args.progress)
    if args.data_dir is None:
        raise ValueError(f"--data_dir is required for dataset {args.dataset!r}")
    return load_reid_dataset(
        args.dataset,
        args.data_dir,
        merge_val=args.merge_val,
        cuhk03_split=args.cuhk03_split,
        progress=args.progress,
    )


def build_model_and_processor(args: ReIDTrainingArguments, num_identities: int):
    """A new model of architecture ``args.model``, or a checkpoint fine-tuned with new heads."""
    overrides = json.loads(args.model_overrides) if args.model_overrides else {}
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if args.model in _PROCESSORS:
        _check_overrides(_CONFIGS[args.model], overrides)
        config = AutoConfig.for_model(args.model, num_identities=num_identities, **overrides)
        model = AutoModel.from_config(config)
        if args.pretrained_backbone:
            report = model.load_pretrained_backbone(args.pretrained_backbone)
            logger.info("backbone weights from %s: %s", args.pretrained_backbone, report)
        height, width = config.image_size
        processor = _PROCESSORS[args.model](size={"height": height, "width": width})
        return model, processor
    # A checkpoint (folder or Hub id): keep the trunk, re-create heads for our identities.
    # Its grid-dependent parameters (position tables, PRCT's sequence projections) keep the
    # size they were trained at and are resized on the fly for other inputs; changing the
    # config's image_size instead would make from_pretrained re-initialise them (their shapes
    # no longer match), so --image_size only changes the preprocessing.
    image_size = overrides.pop("image_size", None)
    _check_overrides(type(AutoConfig.from_pretrained(args.model)), overrides)
    config = AutoConfig.from_pretrained(args.model, num_identities=num_identities, **overrides)
    model = AutoModel.from_pretrained(args.model, config=config, ignore_mismatched_sizes=True)
    resize = {} if image_size is None else {
        "size": {"height": image_size[0], "width": image_size[1]}
    }
    processor = AutoImageProcessor.from_pretrained(args.model, **resize)
    return model, processor


def _check_overrides(config_class: type, overrides: dict[str, Any]) -> None:
    """A config silently keeps unknown keyword arguments as attributes; a misspelt override
    (``tfc_depth``) or one meant for another architecture must fail instead."""
    known = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        own = sorted(known - {field.name for field in dataclasses.fields(PreTrainedConfig)})
        raise ValueError(
            f"model_overrides {unknown} are not fields of {config_class.__name__}; its fields: "
            f"{own}"
        )


class _TrainCollator:
    """Decodes a batch of rows and preprocesses it (runs in DataLoader workers)."""

    def __init__(self, dataset, processor) -> None:
        self.dataset = dataset
        self.processor = processor

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = self.dataset[indices]
        pixels = self.processor(rows["image"], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "labels": torch.tensor(rows["pid"], dtype=torch.long)}


class ReIDTrainer:
    """Train, evaluate and save a re-ID model; see the module docstring.

    Args:
        args: the run's settings.
        model, processor, data: optional pre-built pieces (otherwise built from ``args``).
    """

    def __init__(
        self,
        args: ReIDTrainingArguments,
        model=None,
        processor=None,
        data: DatasetDict | None = None,
    ) -> None:
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=args.mixed_precision,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            log_with=args.report_to or None,
            project_dir=str(self.output_dir),
        )
        set_seed(args.seed)
        self.data = data if data is not None else load_training_data(args)
        num_identities = self.data["train"].features["pid"].num_classes
        if model is None:
            model, processor = build_model_and_processor(args, num_identities)
        elif processor is None:
            raise ValueError("pass the model's image processor together with the model")
        self.processor = processor
        model.freeze_bnneck_biases()  # requires_grad is not restored by from_pretrained

        self.sampler = self._make_sampler(model)
        # Not prepared by accelerate: the sampler already gives every rank its own batches.
        self.train_loader = torch.utils.data.DataLoader(
            range(len(self.data["train"])),
            batch_sampler=self.sampler,
            collate_fn=_TrainCollator(self.data["train"], processor),
            num_workers=args.num_workers,
        )
        self.augment = BatchAugmentation(
            flip_p=args.flip_probability,
            padding=args.crop_padding,
            erasing_p=args.erasing_probability,
            patch_p=args.random_patch_probability,
            cutout_p=args.cutout_probability,
            cutout_size=args.cutout_size,
            seed=args.seed + self.accelerator.process_index,
        )
        self.unfreezing = (
            BlockwiseUnfreezing(
                args.unfreeze_every,
                args.lr_decay,
                args.initially_unfrozen,
                args.lr_decay_schedule,
            )
            if args.blockwise_unfreezing
            else None
        )
        optimizer = self._make_optimizer(model)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        # PK epochs vary slightly in length; only step budgets and step-unit schedules need
        # this estimate.
        steps_per_epoch = max(1, math.ceil(len(self.sampler) / args.gradient_accumulation_steps))
        #: Epochs the run lasts: --epochs, or as many as --max_steps needs (the loop stops
        #: at the step budget, so a short PK epoch cannot end it early).
        self.num_epochs = (
            args.epochs if not args.max_steps else math.ceil(args.max_steps / steps_per_epoch)
        )
        total_steps = args.max_steps or self.num_epochs * steps_per_epoch
        self.schedule = WarmupSchedule(
            name=args.scheduler,
            total=self.num_epochs if args.schedule_unit == "epoch" else total_steps,
            warmup=args.warmup,
            warmup_factor=args.warmup_factor,
            milestones=tuple(args.milestones),
            gamma=args.gamma,
            unit=args.schedule_unit,
            warmup_unit=args.warmup_unit,
        )
        self.state = TrainerState()
        self.accelerator.register_for_checkpointing(self.state, self.augment)
        self.metrics_log = self.output_dir / "metrics.jsonl"

    # ------------------------------------------------------------------ building blocks
    def _make_sampler(self, model) -> PKSampler | RandomBatchSampler:
        args = self.args
        ranks = {
            "num_replicas": self.accelerator.num_processes,
            "rank": self.accelerator.process_index,
        }
        if args.sampler == "random":
            if model.requires_identity_balanced_batches:
                raise ValueError(
                    f"--sampler random cannot train {type(model).__name__}: its loss mines "
                    "positives inside a batch (triplet), which needs several images per "
                    "identity; use --sampler pk"
                )
            batch_size = args.batch_size or args.identities_per_batch * args.instances_per_identity
            sampler = RandomBatchSampler(len(self.data["train"]), batch_size, seed=args.seed,
                                         **ranks)
            wanted = f"{batch_size} images"
        else:
            sampler = PKSampler(
                self.data["train"]["pid"],
                args.identities_per_batch,
                args.instances_per_identity,
                seed=args.seed,
                **ranks,
            )
            wanted = (
                f"{args.identities_per_batch} identities x {args.instances_per_identity} images"
            )
        if len(sampler) == 0:
            raise ValueError(
                f"the train split ({len(self.data['train'])} images) yields no batch of "
                f"{wanted} per process ({self.accelerator.num_processes} processes): use "
                "smaller batches"
            )
        return sampler

    def _make_optimizer(self, model) -> torch.optim.Optimizer:
        args = self.args
        groups = model.optimizer_parameter_groups(
            args.learning_rate,
            args.weight_decay,
            args.trunk_lr_factor,
            args.transformer_lr_factor,
            args.weight_decay_scope,
        )
        if args.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=args.learning_rate, momentum=args.momentum)
        if args.optimizer == "adam":
            # Adam's weight_decay is the L2 penalty the re-ID recipes use; AdamW decouples it.
            return torch.optim.Adam(groups, lr=args.learning_rate)
        return torch.optim.AdamW(groups, lr=args.learning_rate)

    @property
    def unwrapped_model(self):
        return self.accelerator.unwrap_model(self.model)

    def _set_learning_rate(self, epoch: int) -> float:
        factor = self.schedule.factor(epoch, self.state.global_step)
        if self.unfreezing is not None:
            num_blocks = len(self.unwrapped_model.unfreezable_blocks())
            factor *= self.unfreezing.lr_factor(epoch, num_blocks)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor
        return self.base_lrs[-1] * factor

    def _log(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with self.metrics_log.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        numeric = {k: v for k, v in record.items() if isinstance(v, (int, float))}
        if self.args.report_to:
            self.accelerator.log(numeric, step=self.state.global_step)

    # ------------------------------------------------------------------ training
    def train(self) -> dict[str, Any]:
        """Run all epochs (continuing a saved run with ``args.resume``); returns the last
        evaluation's metrics."""
        args = self.args
        if args.report_to:
            self.accelerator.init_trackers("reid_transformers", config=args.to_dict())
        state_dir = self.output_dir / "state"
        if args.resume:
            if not state_dir.is_dir():
                raise FileNotFoundError(f"--resume given but {state_dir} holds no saved state")
            self.accelerator.load_state(str(state_dir))
            logger.info(
                "resumed after epoch %d (step %d)", self.state.epoch, self.state.global_step
            )

        metrics: dict[str, Any] = {}
        for epoch in range(self.state.epoch, self.num_epochs):
            self._train_epoch(epoch)
            self.state.epoch = epoch + 1
            last = epoch + 1 == self.num_epochs or self._step_budget_spent()
            if last or (args.eval_every and (epoch + 1) % args.eval_every == 0):
                metrics = self.evaluate()
                self._log({"epoch": epoch + 1, "step": self.state.global_step, **metrics})
                if metrics["mAP"] > self.state.best_map:
                    self.state.best_map = metrics["mAP"]
                    self.save_checkpoint(self.output_dir / "best", metrics)
            self.accelerator.save_state(str(state_dir))
            if last:
                break
        if not metrics:  # resumed after the last epoch
            metrics = self.evaluate()
        self.save_checkpoint(self.output_dir / "last", metrics)
        self.accelerator.end_training()
        if args.push_to_hub and self.accelerator.is_main_process:
            best = self.output_dir / "best"
            url = push_to_hub(
                best if best.is_dir() else self.output_dir / "last",
                args.hub_model_id,
                token=args.hub_token,
                private=args.hub_private,
                commit_message=f"reid_transformers: {self.state.epoch} epochs "
                f"({self.state.global_step} steps) on {args.dataset}",
            )
            logger.info("pushed to %s", url)
        return metrics

    def _train_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        model = self.unwrapped_model
        if self.unfreezing is not None:
            trainable = self.unfreezing.apply(model, epoch)
            if self.accelerator.is_main_process:
                self._log({"epoch": epoch, "trainable_blocks": trainable})
        model.freeze_bnneck_biases()
        self.model.train()
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {epoch + 1}/{self.num_epochs}",
            unit="batch",
            disable=not (self.args.progress and self.accelerator.is_main_process),
        )
        running, seen, started = 0.0, 0, time.perf_counter()
        for batch in bar:
            pixels = self.augment(batch["pixel_values"].to(self.accelerator.device))
            labels = batch["labels"].to(self.accelerator.device)
            with self.accelerator.accumulate(self.model):
                lr = self._set_learning_rate(epoch)
                loss = self.model(pixel_values=pixels, labels=labels).loss
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients and self.args.max_grad_norm:
                    self.accelerator.clip_grad_norm_(
                        self.model.parameters(), self.args.max_grad_norm
                    )
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            if self.accelerator.sync_gradients:
                self.state.global_step += 1
            running += loss.item()
            seen += 1
            bar.set_postfix(loss=f"{running / seen:.3f}", lr=f"{lr:.2e}")
            if self._step_budget_spent():
                break
        self._log(
            {
                "epoch": epoch + 1,
                "step": self.state.global_step,
                "train_loss": running / max(seen, 1),
                "learning_rate": lr if seen else None,
                "seconds": time.perf_counter() - started,
            }
        )

    def _step_budget_spent(self) -> bool:
        """Whether ``--max_steps`` optimizer steps have run."""
        return bool(self.args.max_steps) and self.state.global_step >= self.args.max_steps

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, Any]:
        """mAP / CMC / mINP on the query and gallery splits (every rank embeds its share)."""
        embed = {
            split: extract_embeddings(
                self.model,
                self.data[split],
                self.processor,
                batch_size=self.args.batch_size_eval,
                flip=self.args.eval_flip,
                num_workers=self.args.num_workers,
                accelerator=self.accelerator,
                progress=self.args.progress,
            )
            for split in ("query", "gallery")
        }
        metrics: dict[str, Any] = {}
        if self.accelerator.is_main_process:
            metrics = ReIDMetric().compute(
                distance=self.args.distance,
                rerank=self.args.eval_rerank,
                query_embeddings=embed["query"],
                query_pids=self.data["query"]["pid"],
                query_camids=self.data["query"]["camid"],
                gallery_embeddings=embed["gallery"],
                gallery_pids=self.data["gallery"]["pid"],
                gallery_camids=self.data["gallery"]["camid"],
            )
            metrics.pop("cmc")
        # Every rank takes the same best-checkpoint decisions, so it needs the same numbers.
        return broadcast_object_list([metrics])[0]

    # ------------------------------------------------------------------ saving
    def save_checkpoint(self, directory: Path, metrics: dict[str, Any]) -> Path | None:
        """``save_pretrained`` weights, config, preprocessor config and model card, written to
        a staging folder and swapped in, so a crash never leaves a half-written checkpoint."""
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return None
        directory = Path(directory)
        staging = directory.with_name(f".{directory.name}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        model = self.unwrapped_model
        model.save_pretrained(staging, safe_serialization=True)
        self.processor.save_pretrained(staging)
        card = render_model_card(
            model.config,
            model_name=directory.name
            if directory.name not in ("best", "last")
            else f"{model.config.model_type}-{self.args.dataset}",
            dataset_name=self.args.dataset,
            metrics=None if self.args.eval_rerank else metrics,
            reranked_metrics=metrics if self.args.eval_rerank else None,
            evaluation={"distance": self.args.distance, "flip": self.args.eval_flip},
            training=self._recipe(),
            base_model=self.args.pretrained_backbone,
            repo_id=self.args.hub_model_id,
        )
        save_model_card(card, staging)
        replace_directory(staging, directory)
        return directory

    def _recipe(self) -> dict[str, Any]:
        args = self.args
        recipe = {
            "epochs": self.num_epochs,
            "optimizer": args.optimizer,
            "learning_rate": args.learning_rate,
            "weight_decay": args.weight_decay,
            "weight_decay_scope": args.weight_decay_scope,
            "scheduler": args.scheduler,
            "warmup": (
                f"{args.warmup} {args.warmup_unit or args.schedule_unit}"
                + ("s" if args.warmup != 1 else "")
                if args.warmup
                else 0
            ),
            "batch": (
                f"{args.identities_per_batch} identities x "
                f"{args.instances_per_identity} images"
                if args.sampler == "pk"
                else f"{self.sampler.batch_size} images, shuffled"
            ),
            "input_size": list(self.unwrapped_model.config.image_size),
            "augmentation": {
                "flip": args.flip_probability,
                "crop_padding": args.crop_padding,
                "random_erasing": args.erasing_probability,
                "random_patch": args.random_patch_probability,
                "cutout": args.cutout_probability,
            },
            "mixed_precision": args.mixed_precision,
        }
        if args.max_steps:
            recipe["max_steps"] = args.max_steps
        for name in ("trunk_lr_factor", "transformer_lr_factor"):
            if getattr(args, name) != 1.0:
                recipe[name] = getattr(args, name)
        if self.unfreezing is not None:
            recipe["blockwise_unfreezing"] = {
                "unfreeze_every": args.unfreeze_every,
                "lr_decay": args.lr_decay,
                "initially_unfrozen": args.initially_unfrozen,
                "lr_decay_schedule": args.lr_decay_schedule,
            }
        return recipe
