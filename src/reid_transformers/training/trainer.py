"""Accelerate-based trainer for every re-ID model of the package.

One process or many (``accelerate launch``): identity-balanced P x K batches from
:class:`~reid_transformers.data.PKSampler` or plain shuffled ones from
:class:`~reid_transformers.data.RandomBatchSampler` (each rank its own disjoint batches), batched
augmentation on the device, the model's own loss, warm-up + cosine / multi-step learning
rate, optional blockwise unfreezing, periodic evaluation under the Market-1501 protocol,
``save_pretrained`` checkpoints (best and last, with a model card), resumable state.

Nothing is lost: an ``output_dir`` that holds a run is refused unless the run is resumed or
``overwrite_output_dir`` deletes it; ``state/``, ``best/`` and ``last/`` are built in a staging
folder and swapped in whole (leftovers of a killed swap are recovered at start); the state is
safetensors and JSON, never a pickle.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
import time
from pathlib import Path
from time import monotonic
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from datasets import DatasetDict
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoImageProcessor, AutoModel

from ..data import (
    BatchAugmentation,
    PKSampler,
    RandomBatchSampler,
    load_reid_dataset,
    make_synthetic_reid,
)
from ..evaluation import ReIDMetric
from ..hub import CardInputs, CheckpointOrigin, default_model_name, push_to_hub, save_card
from ..models import ARCHITECTURES
from ..retrieval.extraction import extract_embeddings
from ..utils import (
    fsync_directory,
    recover_directory,
    replace_directory,
    staging_directory,
    transformers_progress_bars_disabled,
    write_atomically,
)
from .arguments import ReIDTrainingArguments, check_model_overrides, parse_model_overrides
from .schedules import WarmupSchedule
from .state import (
    STATE_DIR,
    TrainerState,
    load_model_and_optimizer,
    load_random_states,
    load_trainer_state,
    save_model_and_optimizer,
    save_random_states,
    save_trainer_state,
)
from .unfreezing import BlockwiseUnfreezing

logger = logging.getLogger(__name__)

_PROCESSORS = {config.model_type: processor for config, _, processor in ARCHITECTURES}
_CONFIGS = {config.model_type: config for config, _, _ in ARCHITECTURES}

#: Folders and files of ``output_dir`` that belong to a run (the tracker folder is where
#: ``--report_to tensorboard`` logs).
METRICS_FILE = "metrics.jsonl"
ARGUMENTS_FILE = "training_args.json"
TRACKER_PROJECT = "reid_transformers"
RUN_ENTRIES = ("best", "last", STATE_DIR, METRICS_FILE, ARGUMENTS_FILE, TRACKER_PROJECT)
#: Arguments a resumed run may change without changing what it computes.
_RESUME_ONLY_ARGUMENTS = {
    "resume", "overwrite_output_dir", "max_minutes", "progress", "num_workers", "report_to",
    "push_to_hub", "hub_model_id", "hub_private",
}


def load_training_data(
    args: ReIDTrainingArguments, *, verify_images: str = "header"
) -> DatasetDict:
    """The dataset named by ``args`` (the synthetic one is generated, hence always readable,
    or reused; the name was checked with the arguments). ``verify_images`` as for
    ``load_reid_dataset`` ("none" leaves unreadable files to the embedding step)."""
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
        verify_images=verify_images,
        progress=args.progress,
    )


def build_model_and_processor(args: ReIDTrainingArguments, num_identities: int):
    """A new model of architecture ``args.model``, or a checkpoint fine-tuned with new heads."""
    overrides = parse_model_overrides(args.model_overrides)
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if args.model in _PROCESSORS:
        check_model_overrides(_CONFIGS[args.model], overrides)
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
    check_model_overrides(type(AutoConfig.from_pretrained(args.model)), overrides)
    config = AutoConfig.from_pretrained(args.model, num_identities=num_identities, **overrides)
    model = AutoModel.from_pretrained(args.model, config=config, ignore_mismatched_sizes=True)
    resize = {} if image_size is None else {
        "size": {"height": image_size[0], "width": image_size[1]}
    }
    processor = AutoImageProcessor.from_pretrained(args.model, **resize)
    return model, processor


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

    After :meth:`train`, :attr:`last_evaluation` and :attr:`best_evaluation` say which epoch
    ``last/`` and ``best/`` come from and how they scored.

    Args:
        args: the run's settings.
        model, processor, data: optional pre-built pieces (otherwise built from ``args``).

    Raises:
        FileExistsError: ``args.output_dir`` holds a run and neither ``resume`` nor
            ``overwrite_output_dir`` is set (checked before anything is loaded).
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
        self._check_output_dir()
        if args.max_minutes < 0:
            raise ValueError(f"max_minutes must be >= 0 (0: no time limit), got {args.max_minutes}")
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
        #: Epochs the run lasts: --epochs, or an estimate of what --max_steps needs (for the
        #: progress bars and epoch-unit schedules: the loop runs until the step budget is
        #: spent, however long later PK epochs are).
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
        self.metrics_log = self.output_dir / METRICS_FILE
        #: Whether ``args.model`` names a checkpoint (evaluated before the first epoch).
        self.starts_from_checkpoint = args.model not in _PROCESSORS
        #: Names of the parameters the DistributedDataParallel wrapper all-reduces.
        self._ddp_trainable = self._trainable_parameter_names()
        self._started = 0.0  # monotonic() when train() began: the --max_minutes clock
        self._stopped = False  # a step or time budget ran out

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
        evaluation's metrics (see also :attr:`last_evaluation` and :attr:`best_evaluation`).

        A run that fine-tunes a checkpoint (``args.model`` is a folder or Hub id) evaluates it
        first, logs that as epoch 0 and keeps it in ``best/`` unless an epoch beats it.
        """
        args = self.args
        self._started = monotonic()
        self._stopped = False
        self._prepare_output_dir()
        if args.report_to:
            self.accelerator.init_trackers(TRACKER_PROJECT, config=self._public_arguments())
        if args.resume:
            self._load_state()
            logger.info(
                "resumed after epoch %d (step %d)", self.state.epoch, self.state.global_step
            )
        else:
            if self.starts_from_checkpoint:
                self._evaluate_and_keep(epoch=0)
            # From here on --resume always finds a complete state.
            self._save_state()

        epochs = itertools.count(self.state.epoch) if args.max_steps else range(
            self.state.epoch, self.num_epochs
        )
        for epoch in epochs:
            if self._step_budget_spent():  # resumed after the run ended at --max_steps
                break
            self._train_epoch(epoch)
            self.state.epoch = epoch + 1
            last = self._stopped or (not args.max_steps and epoch + 1 == self.num_epochs)
            if last or (args.eval_every and (epoch + 1) % args.eval_every == 0):
                self._evaluate_and_keep(epoch + 1)
            self._save_state()
            if last:
                break
        if self.state.last_evaluation is None:
            # Resumed with fewer --epochs than the state has, none of them evaluated.
            self._evaluate_and_keep(self.state.epoch)
        metrics = self.state.last_evaluation["metrics"]
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

    @property
    def last_evaluation(self) -> dict[str, Any] | None:
        """``{"epoch", "step", "metrics"}`` of the latest evaluation (``last/``'s numbers)."""
        return self.state.last_evaluation

    @property
    def best_evaluation(self) -> dict[str, Any] | None:
        """``{"epoch", "step", "metrics"}`` of the evaluation that chose ``best/`` (highest
        mAP; epoch 0 is the fine-tuned checkpoint itself)."""
        return self.state.best_evaluation

    def _evaluate_and_keep(self, epoch: int) -> None:
        """Evaluate, log, and save ``best/`` if the mAP beats every earlier evaluation."""
        metrics = self.evaluate()
        self._log({"epoch": epoch, "step": self.state.global_step, **metrics})
        record = {"epoch": epoch, "step": self.state.global_step, "metrics": metrics}
        self.state.last_evaluation = record
        if metrics["mAP"] > self.state.best_map:
            self.state.best_map = metrics["mAP"]
            self.state.best_evaluation = record
            self.save_checkpoint(self.output_dir / "best", metrics)

    def _train_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        model = self.unwrapped_model
        if self.unfreezing is not None:
            trainable = self.unfreezing.apply(model, epoch)
            self._log({"epoch": epoch + 1, "trainable_blocks": trainable})
        model.freeze_bnneck_biases()
        self._wrap_trainable_parameters()
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
                # Only after a full optimizer step: stopping inside an accumulation would
                # drop the gradients gathered so far.
                self._stopped = self._step_budget_spent() or self._out_of_time()
            running += loss.item()
            seen += 1
            bar.set_postfix(loss=f"{running / seen:.3f}", lr=f"{lr:.2e}")
            if self._stopped:
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

    def _out_of_time(self) -> bool:
        """Whether ``--max_minutes`` have passed since :meth:`train` began. Every rank takes
        the decision of the slowest clock, so all stop after the same step."""
        if not self.args.max_minutes:
            return False
        spent = monotonic() - self._started >= 60.0 * self.args.max_minutes
        if self.accelerator.num_processes > 1:
            flag = torch.tensor([float(spent)], device=self.accelerator.device)
            spent = bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)
        if spent:
            logger.info(
                "--max_minutes %g reached after step %d: evaluating and saving",
                self.args.max_minutes,
                self.state.global_step,
            )
        return spent

    def _trainable_parameter_names(self) -> frozenset[str] | None:
        """The parameters that require a gradient, if the model is wrapped for DDP."""
        if not isinstance(self.model, DistributedDataParallel):
            return None
        return frozenset(n for n, p in self.model.module.named_parameters() if p.requires_grad)

    def _wrap_trainable_parameters(self) -> None:
        """Wrap the model for DDP again when the set of trainable parameters changed.

        DistributedDataParallel all-reduces the parameters that required a gradient when it
        wrapped the model and expects a gradient for each of them at every step: a block
        frozen later raises "parameters that were not used in producing loss" at the second
        step, and a block frozen at wrap time and released later would train on every rank's
        own gradients, so the ranks' weights drift apart. A new wrapper over the current set
        leaves frozen blocks out (no error, no traffic) and all-reduces a released block from
        its first step (it also broadcasts rank 0's weights and buffers).
        """
        trainable = self._trainable_parameter_names()
        if trainable is None or trainable == self._ddp_trainable:
            return
        old = self.model
        # Its reducer's hooks sit on the parameters and would fire in the next backward.
        old._remove_autograd_hooks()
        handler = self.accelerator.ddp_handler
        self.model = DistributedDataParallel(
            old.module,
            device_ids=old.device_ids,
            output_device=old.output_device,
            **(handler.to_kwargs() if handler is not None else {}),
        )
        if handler is not None:
            handler.register_comm_hook(self.model)
        self._ddp_trainable = trainable
        logger.info("DDP wrapper rebuilt over %d trainable parameter tensors", len(trainable))

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

    # ------------------------------------------------------------------ the run's folder
    def _previous_run(self) -> list[str]:
        """Names in ``output_dir`` that belong to a run, leftovers of interrupted writes
        (``.best.staging``, ``.state.old-*``, ...) included."""
        if not self.output_dir.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.output_dir.iterdir()
            if entry.name in RUN_ENTRIES
            or any(entry.name.startswith(f".{name}.") for name in RUN_ENTRIES)
        )

    def _check_output_dir(self) -> None:
        if self.args.resume and self.args.overwrite_output_dir:
            raise ValueError(
                "--resume and --overwrite_output_dir contradict each other: --resume continues "
                f"the run in {self.output_dir}, --overwrite_output_dir deletes it"
            )
        if self.args.resume or self.args.overwrite_output_dir:
            return
        found = self._previous_run()
        if found:
            raise FileExistsError(
                f"{self.output_dir} already holds a training run ({', '.join(found)}); pass "
                "--resume to continue it, choose another --output_dir, or pass "
                "--overwrite_output_dir to delete it and start again"
            )

    def _prepare_output_dir(self) -> None:
        """Delete the previous run (``--overwrite_output_dir``), recover what a killed swap
        left, and save the run's arguments; on the main process, while the others wait."""
        # Every rank has checked output_dir in __init__ before anything is written to it.
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            if self.args.overwrite_output_dir:
                found = self._previous_run()
                if found:
                    logger.warning(
                        "--overwrite_output_dir: deleting the previous run in %s: %s",
                        self.output_dir,
                        ", ".join(found),
                    )
                for name in found:
                    path = self.output_dir / name
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
            for name in ("best", "last", STATE_DIR):
                recover_directory(self.output_dir / name)
            self._save_arguments()
        self.accelerator.wait_for_everyone()

    def _public_arguments(self) -> dict[str, Any]:
        """The arguments without the Hub token: a secret has no place in a run folder or a
        tracker's dashboard."""
        values = self.args.to_dict()
        values.pop("hub_token")
        return values

    def _save_arguments(self) -> None:
        """``training_args.json``: the resolved arguments that started the run (no Hub
        token), readable by ``parse_arguments`` and ``examples/train.py FILE``. A resumed
        run keeps the file and warns about arguments it changes."""
        values = self._public_arguments()
        path = self.output_dir / ARGUMENTS_FILE
        if self.args.resume and path.is_file():
            saved = json.loads(path.read_text())
            changed = sorted(
                name
                for name in values.keys() - _RESUME_ONLY_ARGUMENTS
                if saved.get(name) != values[name]
            )
            if changed:
                logger.warning(
                    "resuming with arguments that differ from the run's (%s): %s",
                    path,
                    ", ".join(f"{n}={saved.get(n)!r} -> {values[n]!r}" for n in changed),
                )
            return
        text = json.dumps(values, indent=2, sort_keys=True) + "\n"
        write_atomically(path, lambda f: f.write(text.encode("utf-8")))

    def _truncate_log(self) -> None:
        """Drop the lines logged after the resumed epoch: the run repeats those events, and
        ``metrics.jsonl`` keeps one line per event."""
        if not self.metrics_log.is_file():
            return
        lines = self.metrics_log.read_text().splitlines()
        kept = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # cut short by the kill
                    continue
                raise ValueError(
                    f"{self.metrics_log} line {number} is not JSON: {line[:80]!r}"
                ) from None
            if record["epoch"] <= self.state.epoch:
                kept.append(line)
        if len(kept) < len(lines):
            logger.info(
                "%s: dropping %d lines logged after epoch %d, which the resumed run repeats",
                self.metrics_log,
                len(lines) - len(kept),
                self.state.epoch,
            )
            text = "".join(line + "\n" for line in kept)
            write_atomically(self.metrics_log, lambda f: f.write(text.encode("utf-8")))

    # ------------------------------------------------------------------ resumable state
    def _save_state(self) -> None:
        """Write ``state/`` (the files are listed in :mod:`.state`) to ``.state.staging`` and
        swap it in whole, so the previous state stays until the new one is complete; every
        rank writes its random states, the main process the rest, ``trainer_state.json``
        last."""
        target = self.output_dir / STATE_DIR
        staging = target.with_name(f".{STATE_DIR}.staging")
        if self.accelerator.is_main_process:
            staging_directory(target)
        self.accelerator.wait_for_everyone()
        save_random_states(staging, self.accelerator.process_index, self.augment)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            save_model_and_optimizer(staging, self.unwrapped_model, self.optimizer)
            scaler = self.accelerator.scaler
            save_trainer_state(
                staging,
                {
                    **self.state.state_dict(),
                    "accumulation_step": self.accelerator.step,
                    "num_processes": self.accelerator.num_processes,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                },
            )
            fsync_directory(staging)
            replace_directory(staging, target)
        self.accelerator.wait_for_everyone()

    def _load_state(self) -> None:
        """Restore what :meth:`_save_state` wrote (after leftovers were recovered)."""
        directory = self.output_dir / STATE_DIR
        if not directory.is_dir():
            others = self._previous_run()
            raise FileNotFoundError(
                f"--resume given but {directory} holds no saved state; "
                + (
                    f"the run in {self.output_dir} ({', '.join(others)}) stopped before its "
                    "first state was saved: start it again with --overwrite_output_dir"
                    if others
                    else "train without --resume to start a run"
                )
            )
        saved = load_trainer_state(directory)
        self.state.load_state_dict(saved)
        load_model_and_optimizer(directory, self.unwrapped_model, self.optimizer)
        self.accelerator.step = int(saved["accumulation_step"])
        if saved["scaler"] is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(saved["scaler"])
        self._load_random_states(directory, saved["num_processes"])
        if self.accelerator.is_main_process:
            self._truncate_log()
        self.accelerator.wait_for_everyone()

    def _load_random_states(self, directory: Path, saved_processes: int) -> None:
        """This rank's saved random states; a rank the saved run did not have keeps its fresh
        seeds."""
        rank = self.accelerator.process_index
        if saved_processes != self.accelerator.num_processes:
            logger.warning(
                "%s was saved by %d processes, resumed with %d: training continues, but "
                "batches and augmentations differ from an uninterrupted run",
                directory,
                saved_processes,
                self.accelerator.num_processes,
            )
        if rank < saved_processes:
            load_random_states(directory, rank, self.augment)

    # ------------------------------------------------------------------ saving
    def save_checkpoint(self, directory: Path, metrics: dict[str, Any]) -> Path | None:
        """``save_pretrained`` weights, config, preprocessor config and model card, written to
        a staging folder and swapped in (``replace_directory``), so a crash never leaves a
        half-written checkpoint nor a moment without one."""
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return None
        directory = Path(directory)
        staging = staging_directory(directory)
        model = self.unwrapped_model
        with transformers_progress_bars_disabled():
            model.save_pretrained(staging, safe_serialization=True)
        self.processor.save_pretrained(staging)
        save_card(
            staging,
            model.config,
            self.card_inputs(directory.name, metrics),
            repo_id=self.args.hub_model_id,
        )
        replace_directory(staging, directory)
        return directory

    def card_inputs(self, kind: str, metrics: dict[str, Any]) -> CardInputs:
        """What the card of the ``kind`` (``"best"`` / ``"last"``) checkpoint says beyond its
        config: recipe, data, evaluation, starting weights and which epoch it is; saved
        beside the checkpoint (``card_inputs.json``) so later re-renders keep it."""
        args = self.args
        if self.starts_from_checkpoint:
            base_model, initialisation = args.model, "checkpoint"
        elif args.pretrained_backbone:
            base_model, initialisation = args.pretrained_backbone, "backbone"
        else:
            base_model, initialisation = None, "random"
        epoch = self.state.best_evaluation["epoch"] if kind == "best" else self.state.epoch
        return CardInputs(
            model_name=default_model_name(
                self.output_dir / kind, self.unwrapped_model.config.model_type,
                args.dataset_name or args.dataset_id or args.dataset,
            ),
            dataset_name=args.dataset_name,
            dataset_id=args.dataset_id,
            data_layout=args.dataset,
            metrics=None if args.eval_rerank else metrics,
            reranked_metrics=metrics if args.eval_rerank else None,
            evaluation={"distance": args.distance, "flip": args.eval_flip},
            training=self._recipe(),
            base_model=base_model,
            initialisation=initialisation,
            # best/ is chosen on the query / gallery splits, i.e. the test split.
            checkpoint=CheckpointOrigin(
                kind=kind,
                epoch=epoch,
                num_epochs=max(self.num_epochs, epoch),
                selected_on="test" if kind == "best" else None,
            ),
        )

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

