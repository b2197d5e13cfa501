"""Blockwise fine-tuning (LA-Transformer, section 3.2), for any model of the package.

The trunk's blocks (``model.unfreezable_blocks()``, top first) start frozen except the top
``initially_unfrozen``; every ``unfreeze_every`` epochs one more block is released from the
top. Embeddings, final norms and heads always train. The learning rate decays by ``lr_decay``
on one of two schedules (``lr_decay_schedule``):

- ``"periodic"`` (default; the released LA-Transformer code, and Algorithm 1 of the paper at
  i = 0): x ``lr_decay`` at epoch 0 and then every ``unfreeze_every`` epochs for the whole
  run, also after every block trains, so epoch ``e`` runs at
  ``lr_decay ** (e // unfreeze_every + 1)`` (15 decays in 30 epochs at every 2).
- ``"releases"``: x ``lr_decay`` only when a further block is released (none at epoch 0,
  none once every block trains).

One optimizer holds every parameter from the start: a frozen parameter has
``requires_grad=False``, so it gets no gradient and optimizers skip it (no update, no weight
decay, no momentum), and it starts to move on the step after it is released. Under
DistributedDataParallel the trainer wraps the model again whenever :meth:`apply` changes the
set of trainable parameters, so frozen blocks stay out of the all-reduce and released ones
are averaged over every rank.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from ..utils import check_choice, check_in_range, check_int

LR_DECAY_SCHEDULES = ("periodic", "releases")

logger = logging.getLogger(__name__)


@dataclass
class BlockwiseUnfreezing:
    """Schedule of which trunk blocks train.

    Args:
        unfreeze_every: epochs between two releases (code: 2).
        lr_decay: factor applied to every learning rate at each decay (see
            ``lr_decay_schedule``; code 0.8, paper 0.85).
        initially_unfrozen: blocks that train from the first epoch (code 2, paper 1).
        lr_decay_schedule: ``"periodic"`` (code) or ``"releases"``; see the module docstring.
    """

    unfreeze_every: int = 2
    lr_decay: float = 0.8
    initially_unfrozen: int = 1
    lr_decay_schedule: str = "periodic"

    def __post_init__(self) -> None:
        check_int("unfreeze_every", self.unfreeze_every, minimum=1)
        check_in_range("lr_decay", self.lr_decay, 0, 1, low_inclusive=False)
        check_int("initially_unfrozen", self.initially_unfrozen, minimum=0)
        check_choice("lr_decay_schedule", self.lr_decay_schedule, LR_DECAY_SCHEDULES)

    def trainable_blocks(self, epoch: int, num_blocks: int) -> int:
        """How many blocks (from the top) train during ``epoch`` (0-based)."""
        released = epoch // self.unfreeze_every
        return min(num_blocks, self.initially_unfrozen + released)

    def lr_factor(self, epoch: int, num_blocks: int) -> float:
        """Learning-rate multiplier during ``epoch`` (0-based)."""
        if self.lr_decay_schedule == "periodic":
            return self.lr_decay ** (epoch // self.unfreeze_every + 1)
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
            epoch + 1,  # counted from 1, as in the progress bar and metrics.jsonl
            trainable,
            len(blocks),
            trainable,
            self.lr_factor(epoch, len(blocks)),
        )
        return trainable
