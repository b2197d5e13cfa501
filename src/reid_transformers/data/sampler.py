"""Batch samplers for training: identity-balanced (P identities x K images) for metric
learning, and plain shuffled batches for classification-only recipes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..utils import check_int


class _EpochShuffleSampler(Sampler[list[int]]):
    """What both samplers share: each epoch's shuffle is drawn from ``(seed, epoch)``, the
    same on every rank, and ranks take every ``num_replicas``-th batch starting at ``rank``.

    ``num_replicas`` / ``rank`` default to ``torch.distributed``'s when it is initialised,
    else to one process of rank 0.
    """

    def __init__(self, seed: int, num_replicas: int | None, rank: int | None) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.num_replicas, self.rank = num_replicas, rank
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch`` (same on every rank)."""
        self.epoch = epoch


class PKSampler(_EpochShuffleSampler):
    """Batch sampler: every batch holds ``P`` identities with ``K`` images each.

    Triplet losses with hard mining need several images of each identity in a batch; this
    is the sampler every re-ID recipe uses for that. One epoch visits every identity's
    images once in groups of ``K`` (a remainder smaller than ``K`` is left for a later
    epoch's shuffle); an identity with fewer than ``K`` images contributes all of them plus
    repeats drawn at random, the only case where an image is sampled twice in a group.
    Groups are then dealt into batches of ``P`` distinct identities.

    Distributed: every rank builds the same epoch from ``seed + epoch`` and takes every
    ``num_replicas``-th batch starting at ``rank``, so ranks see disjoint batches and the
    same number of them. Call :meth:`set_epoch` before each epoch for a new shuffle.

    Args:
        pids: identity label of every dataset index (any integers).
        num_identities: ``P``, identities per batch.
        num_instances: ``K``, images per identity per batch.
        seed: base seed of the shuffle.
        num_replicas: world size; default from ``torch.distributed`` when initialised, else 1.
        rank: this process's rank; default likewise.
    """

    def __init__(
        self,
        pids: Sequence[int] | np.ndarray | torch.Tensor,
        num_identities: int,
        num_instances: int,
        *,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        labels = np.asarray(pids.cpu() if isinstance(pids, torch.Tensor) else pids)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"pids must be a non-empty 1-D sequence, got shape {labels.shape}")
        check_int("num_identities", num_identities, minimum=1)
        check_int("num_instances", num_instances, minimum=1)
        super().__init__(seed, num_replicas, rank)
        identities, inverse = np.unique(labels, return_inverse=True)
        if len(identities) < num_identities:
            raise ValueError(
                f"num_identities={num_identities} per batch but the dataset has only "
                f"{len(identities)} identities"
            )
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse))[:-1]
        self.index_groups = np.split(order, bounds)  # dataset indices of each identity
        self.num_identities = num_identities
        self.num_instances = num_instances
        self._cached: tuple[int, list[list[int]]] | None = None

    def _epoch_batches(self) -> list[list[int]]:
        if self._cached is None or self._cached[0] != self.epoch:
            self._cached = (self.epoch, self._build_epoch())
        return self._cached[1]

    def _build_epoch(self) -> list[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        k = self.num_instances
        chunks: list[list[np.ndarray]] = []
        for indices in self.index_groups:
            indices = rng.permutation(indices)
            if len(indices) < k:
                extra = rng.choice(indices, size=k - len(indices), replace=True)
                indices = np.concatenate([indices, extra])
            num_chunks = len(indices) // k
            chunks.append([indices[i * k : (i + 1) * k] for i in range(num_chunks)])

        batches: list[list[int]] = []
        remaining = np.array([len(c) for c in chunks])
        while (remaining > 0).sum() >= self.num_identities:
            # Identities with more groups left are drawn more often, so long-tailed
            # identities do not all end up crowded into the last batches.
            available = np.flatnonzero(remaining)
            weights = remaining[available] / remaining[available].sum()
            chosen = rng.choice(available, size=self.num_identities, replace=False, p=weights)
            batch = []
            for identity in chosen:
                remaining[identity] -= 1
                batch.extend(chunks[identity][remaining[identity]].tolist())
            batches.append(batch)
        usable = len(batches) - len(batches) % self.num_replicas
        return batches[:usable]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._epoch_batches()[self.rank :: self.num_replicas]

    def __len__(self) -> int:
        """Batches this rank yields in the current epoch."""
        return len(self._epoch_batches()) // self.num_replicas


class RandomBatchSampler(_EpochShuffleSampler):
    """Batch sampler: the dataset shuffled anew every epoch and cut into batches of
    ``batch_size`` (``DataLoader(shuffle=True)``), with no regard to identities.

    This is how classification-only recipes such as LA-Transformer's released code train;
    losses that mine positives inside a batch (triplet) need :class:`PKSampler` instead. The
    last, smaller batch is kept, except a batch of a single image (BatchNorm cannot train on
    it). Distributed: every rank builds the same epoch from ``seed + epoch`` and takes every
    ``num_replicas``-th batch starting at ``rank`` (the batch count is cut to a multiple of
    ``num_replicas`` so every rank runs the same number of steps).

    Args:
        dataset_size: number of dataset indices.
        batch_size: images per batch.
        seed: base seed of the shuffle.
        num_replicas, rank: as for :class:`PKSampler`.
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        *,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        check_int("dataset_size", dataset_size, minimum=1)
        check_int("batch_size", batch_size, minimum=1)
        super().__init__(seed, num_replicas, rank)
        self.dataset_size = dataset_size
        self.batch_size = batch_size

    def _num_batches(self) -> int:
        full, rest = divmod(self.dataset_size, self.batch_size)
        batches = full + (rest > 1)
        return batches - batches % self.num_replicas

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.dataset_size)
        for batch in range(self.rank, self._num_batches(), self.num_replicas):
            yield order[batch * self.batch_size : (batch + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        """Batches this rank yields in an epoch."""
        return self._num_batches() // self.num_replicas
