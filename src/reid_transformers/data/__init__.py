"""Data: benchmark loaders, the synthetic dataset, PK sampling, batched augmentation."""

from .augmentation import (
    BatchAugmentation,
    pad_random_crop,
    random_cutout,
    random_erasing,
    random_horizontal_flip,
    random_patch,
)
from .datasets import SPLITS, available_datasets, describe_dataset, load_reid_dataset
from .sampler import PKSampler, RandomBatchSampler
from .synthetic import (
    SYNTHETIC_FORMAT_VERSION,
    SYNTHETIC_MANIFEST_NAME,
    make_synthetic_reid,
    synthetic_dataset_info,
)

__all__ = [
    "SPLITS",
    "SYNTHETIC_FORMAT_VERSION",
    "SYNTHETIC_MANIFEST_NAME",
    "BatchAugmentation",
    "PKSampler",
    "RandomBatchSampler",
    "available_datasets",
    "describe_dataset",
    "load_reid_dataset",
    "make_synthetic_reid",
    "pad_random_crop",
    "random_cutout",
    "random_erasing",
    "random_patch",
    "random_horizontal_flip",
    "synthetic_dataset_info",
]
