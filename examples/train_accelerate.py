# ################################################################################################
# A complete, linear re-ID training script with Accelerate, meant to be read top to bottom.
#
# Every step is written out instead of hidden in `ReIDTrainer`:
#   identity-balanced PK batches -> collate with the image processor -> augmentation of whole
#   batches on the device -> `model(pixel_values=..., labels=...).loss` ->
#   `accelerator.backward` -> optimizer step -> CMC / mAP / mINP with the `ReIDMetric`.
#
# It runs as it is on a CPU (a tiny AAformer, 10 epochs on the synthetic dataset: about five
# minutes on two cores, rank-1 ~0.3) and unchanged on one or several GPUs:
#   python examples/train_accelerate.py
#   accelerate launch examples/train_accelerate.py --mixed_precision bf16
# For the paper recipes, checkpoints and resuming use `reid-transformers train` instead.
# ################################################################################################
"""A linear Accelerate training example for person re-identification; see the banner."""

from __future__ import annotations

import argparse

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from reid_transformers import AAformerConfig, AAformerImageProcessor, AAformerModel
from reid_transformers.data import (
    BatchAugmentation,
    PKSampler,
    load_reid_dataset,
    make_synthetic_reid,
)
from reid_transformers.evaluation import ReIDMetric

# A 4-layer ViT with 8x8 patches: small enough to learn the synthetic identities on a CPU.
# For real data start from ViT-B/16 weights instead (`model.load_pretrained_backbone`).
TINY_VIT = {
    "patch_size": 8,
    "patch_stride": 8,
    "hidden_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 192,
}


class Collator:
    """Turns a list of row numbers of ``split`` into one preprocessed batch.

    The loaders iterate over row numbers rather than rows so that the PK sampler, which
    picks rows by identity, and the plain evaluation loaders can share this one function.
    """

    def __init__(self, split, processor) -> None:
        self.split = split
        self.processor = processor

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = self.split[indices]  # one Arrow read for the whole batch
        pixel_values = self.processor(rows["image"], return_tensors="pt")["pixel_values"]
        return {
            "pixel_values": pixel_values,
            "labels": torch.tensor(rows["pid"], dtype=torch.long),
            "camids": torch.tensor(rows["camid"], dtype=torch.long),
        }


def evaluate_retrieval(model, query_loader, gallery_loader, accelerator) -> dict:
    """CMC / mAP / mINP of the query split against the gallery split."""
    model.eval()
    metric = ReIDMetric()
    for side, loader in (("query", query_loader), ("gallery", gallery_loader)):
        for batch in loader:
            with torch.no_grad():
                embeddings = model(pixel_values=batch["pixel_values"]).embeddings
            # Each process embedded its own shard; gather_for_metrics joins the shards and
            # drops the samples repeated to even out the last batch, which would otherwise
            # be counted twice.
            embeddings, pids, camids = accelerator.gather_for_metrics(
                (embeddings, batch["labels"], batch["camids"])
            )
            metric.add_batch(
                **{
                    f"{side}_embeddings": embeddings,
                    f"{side}_pids": pids,
                    f"{side}_camids": camids,
                }
            )
    # Retrieval ranks every query against the whole gallery, so the metric keeps everything
    # in memory and computes once, here; cosine distance is its default.
    metrics = metric.compute(ranks=(1, 5))
    metrics.pop("cmc")  # the full curve is too long to print
    return metrics


def training_function(config: dict, args: argparse.Namespace) -> dict:
    """Train a tiny AAformer on ``args.data_dir`` (or synthetic data); return its metrics."""
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
    set_seed(config["seed"])
    height, width = config["image_size"]

    # Data. Only the main process generates the synthetic images; the others wait and then
    # find the finished dataset (generation renames it into place when complete).
    data_dir = args.data_dir
    if data_dir is None:
        with accelerator.main_process_first():
            data_dir = make_synthetic_reid(image_size=(height, width), progress=False)
    data = load_reid_dataset("market1501", data_dir, progress=False)
    train, query, gallery = data["train"], data["query"], data["gallery"]
    # Training identities are labelled 0..N-1 (a ClassLabel), the classifier's targets.
    num_identities = train.features["pid"].num_classes

    model = AAformerModel(
        AAformerConfig(num_identities=num_identities, image_size=(height, width), **TINY_VIT)
    )
    processor = AAformerImageProcessor(size={"height": height, "width": width})

    # P identities x K images per batch: AAformer's batch-hard triplet loss needs positives
    # and negatives in every batch, which random batches of many identities rarely hold. The
    # sampler gives each process its own batches, so this loader is not passed to prepare()
    # (prepare would shard the batches a second time).
    sampler = PKSampler(
        train["pid"],
        num_identities=config["identities_per_batch"],
        num_instances=config["instances_per_identity"],
        seed=config["seed"],
        num_replicas=accelerator.num_processes,
        rank=accelerator.process_index,
    )
    train_loader = DataLoader(
        range(len(train)), batch_sampler=sampler, collate_fn=Collator(train, processor)
    )
    query_loader, gallery_loader = (
        DataLoader(range(len(split)), batch_size=config["eval_batch_size"],
                   collate_fn=Collator(split, processor))
        for split in (query, gallery)
    )
    # Flip, pad + crop and random erasing run on whole batches on the device, where they
    # are far cheaper than per-image transforms in the loader. A seed per process keeps runs
    # repeatable without every process drawing the same erasing boxes.
    augment = BatchAugmentation(
        padding=config["crop_padding"], seed=config["seed"] + accelerator.process_index
    )

    # BNNeck's BatchNorm bias is frozen by design (Luo et al., 2019), so only parameters that
    # want gradients go to the optimizer.
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config["learning_rate"],
        weight_decay=config["weight_decay"],
    )
    # A short warmup keeps the first, noisy steps from wrecking a freshly initialised ViT.
    # len(train_loader) already counts this process's batches only, so the scheduler is
    # stepped by hand rather than prepared (a prepared one steps once per process).
    total_steps = config["num_epochs"] * len(train_loader)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, num_warmup_steps=len(train_loader), num_training_steps=total_steps
    )
    model, optimizer, query_loader, gallery_loader = accelerator.prepare(
        model, optimizer, query_loader, gallery_loader
    )

    for epoch in range(config["num_epochs"]):
        sampler.set_epoch(epoch)  # a new, identical-on-every-process shuffle
        model.train()
        total_loss, num_batches = 0.0, 0
        for batch in train_loader:
            # The train loader is not prepared, so its batches are moved here.
            pixel_values = augment(batch["pixel_values"].to(accelerator.device))
            labels = batch["labels"].to(accelerator.device)
            # Given labels, the model computes its paper's loss itself (for AAformer:
            # label-smoothed cross-entropy on the [CLS] and part heads plus batch-hard
            # triplet), so every architecture trains with this same line.
            loss = model(pixel_values=pixel_values, labels=labels).loss
            accelerator.backward(loss)  # scales the loss under fp16, syncs gradients in DDP
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            total_loss += loss.item()
            num_batches += 1
        accelerator.print(f"epoch {epoch + 1}: train loss {total_loss / num_batches:.4f}")

    metrics = evaluate_retrieval(model, query_loader, gallery_loader, accelerator)
    accelerator.print(
        "evaluation: " + ", ".join(
            f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
            for name, value in metrics.items()
        )
    )
    accelerator.end_training()
    return metrics


def main() -> None:
    """Parse the command line and train."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data_dir",
        default=None,
        help="a dataset in the Market-1501 layout; default: the synthetic dataset, generated "
        "once into the cache",
    )
    parser.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help="default: what `accelerate config` chose, else no",
    )
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even with a GPU")
    parser.add_argument("--num_epochs", type=int, default=10, help="default: 10")
    parser.add_argument("--seed", type=int, default=42, help="default: 42")
    args = parser.parse_args()
    config = {
        "num_epochs": args.num_epochs,
        "seed": args.seed,
        "image_size": (64, 32),
        "identities_per_batch": 8,
        "instances_per_identity": 4,
        "eval_batch_size": 64,
        "learning_rate": 1e-3,
        "weight_decay": 5e-4,
        "crop_padding": 4,
    }
    training_function(config, args)


if __name__ == "__main__":
    main()
