"""Blockwise fine-tuning (LA-Transformer, section 3.2), for any model of the package.

The trunk's blocks (``model.unfreezable_blocks()``, top first) start frozen except the top
``initially_unfrozen``; every ``unfreeze_every`` epochs one more block is released from the
top and the learning rate is multiplied by ``lr_decay``. Embeddings, final norms and heads
always train. One optimizer holds every parameter from the start: a frozen parameter has
``requires_grad=False``, so it gets no gradient and optimizers skip it (no update, no weight
decay, no momentum), and it starts to move on the step after it is released.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

logger = logging.getLogger(__name__)


@dataclass
class BlockwiseUnfreezing:
    """Schedule of which trunk blocks train.

    Args:
        unfreeze_every: epochs between two releases (code: 2).
        lr_decay: factor applied to every learning rate at each release (code 0.8, paper 0.85).
        initially_unfrozen: blocks that train from the first epoch (code 2, paper 1).
    """

    unfreeze_every: int = 2
    lr_decay: float = 0.8
    initially_unfrozen: int = 1

    def __post_init__(self) -> None:
        if self.unfreeze_every < 1:
            raise ValueError(f"unfreeze_every must be >= 1 epoch, got {self.unfreeze_every}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.initially_unfrozen < 0:
            raise ValueError(f"initially_unfrozen must be >= 0, got {self.initially_unfrozen}")

    def trainable_blocks(self, epoch: int, num_blocks: int) -> int:
        """How many blocks (from the top) train during ``epoch`` (0-based)."""
        released = epoch // self.unfreeze_every
        return min(num_blocks, self.initially_unfrozen + released)

    def lr_factor(self, epoch: int, num_blocks: int) -> float:
        """Learning-rate multiplier during ``epoch``: ``lr_decay`` per release so far."""
        releases = self.trainable_blocks(epoch, num_blocks) - min(
            num_blocks, self.initially_unfrozen
        )
        return self.lr_decay**releases

    def apply(self, model: nn.Module, epoch: int) -> int:
        """Set ``requires_grad`` of the trunk blocks for ``epoch``; returns how many train."""
        blocks = model.unfreezable_blocks()
        trainable = self.trainable_blocks(epoch, len(blocks))
        for i, block in enumerate(blocks):
            block.requires_grad_(i < trainable)
        logger.info(
            "epoch %d: %d of %d trunk blocks train (top %d), lr x %.4g",
            epoch,
            trainable,
            len(blocks),
            trainable,
            self.lr_factor(epoch, len(blocks)),
        )
        return trainable
