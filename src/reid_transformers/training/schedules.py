"""Learning-rate schedules: linear warm-up, then cosine or multi-step decay."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..utils import check_choice, check_in_range

SCHEDULES = ("cosine", "multistep", "constant")
UNITS = ("epoch", "step")


@dataclass
class WarmupSchedule:
    """Multiplier of the base learning rate as a function of the optimizer step.

    Times (``warmup``, ``milestones``, ``total``) are counted in ``unit``: ``"epoch"`` changes
    the rate once per epoch (as most re-ID papers describe), ``"step"`` every iteration.

    Args:
        name: ``"cosine"`` (from 1 down to ``min_factor`` at ``total``), ``"multistep"``
            (times ``gamma`` at each milestone) or ``"constant"``.
        total: length of training in ``unit``.
        warmup: linear warm-up length in ``unit``, from ``warmup_factor`` to 1.
        warmup_factor: multiplier at the first step.
        milestones: multistep decay points in ``unit``.
        gamma: multistep decay factor.
        min_factor: the cosine's final multiplier.
        unit: ``"epoch"`` or ``"step"``.
        warmup_unit: the unit of ``warmup`` when it differs from ``unit`` (fast-reid warms
            up for 2000 iterations, then decays at epochs 40 and 90); ``None`` = ``unit``.
    """

    name: str = "cosine"
    total: int = 1
    warmup: int = 0
    warmup_factor: float = 0.01
    milestones: Sequence[int] = field(default_factory=tuple)
    gamma: float = 0.1
    min_factor: float = 0.0
    unit: str = "epoch"
    warmup_unit: str | None = None

    def __post_init__(self) -> None:
        if self.warmup_unit is None:
            self.warmup_unit = self.unit
        check_choice("warmup_unit", self.warmup_unit, UNITS)
        check_choice("schedule", self.name, SCHEDULES)
        check_choice("unit", self.unit, UNITS)
        if self.total < 1 or self.warmup < 0 or (
            self.warmup_unit == self.unit and self.warmup > self.total
        ):
            raise ValueError(
                f"need total >= 1 and 0 <= warmup <= total, got total={self.total}, "
                f"warmup={self.warmup}"
            )
        check_in_range("warmup_factor", self.warmup_factor, 0, 1, low_inclusive=False)
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing, got {list(self.milestones)}")

    def factor(self, epoch: int, step: int) -> float:
        """Multiplier during ``epoch`` (0-based) at optimizer ``step`` (0-based, counted over
        the whole run); the unit decides which of the two counts."""
        t = epoch if self.unit == "epoch" else step
        warmup_t = epoch if self.warmup_unit == "epoch" else step
        if warmup_t < self.warmup:
            return self.warmup_factor + (1 - self.warmup_factor) * warmup_t / self.warmup
        if self.name == "cosine":
            # The cosine starts where the warm-up ends when both count the same unit.
            start = self.warmup if self.warmup_unit == self.unit else 0
            span = max(self.total - start, 1)
            progress = min((t - start) / span, 1.0)
            cosine = 0.5 * (1 + math.cos(math.pi * progress))
            return self.min_factor + (1 - self.min_factor) * cosine
        if self.name == "multistep":
            return self.gamma ** sum(t >= m for m in self.milestones)
        return 1.0
