"""Progressive substitution schedule: per-layer staggered λ ramps, KD-weight ramp, learning rate.

Stage A (steps 0 … stage_a − 1) fades each layer group from dense (λ = 0) to PHM (λ = 1) inside
the first `fade_fraction` of stage A (paper: 70 %); groups are staggered: group g of G starts at
g/G·(F − w) and ends w steps later, where F = fade_fraction·stage_a and w = ramp_width·F. With
ramp_width = 1 every group ramps together; small ramp_width hands the layers over one by one.
Stage B (the remaining steps) runs PHM-only (dense weights dropped). Every quantity is a pure
function of the step, so a resumed run reproduces the schedule exactly.

    >>> s = LambdaSchedule(stage_a_steps=100, num_groups=2, fade_fraction=0.5, ramp_width=0.5)
    >>> [round(s.lam(g, 0), 3) for g in range(2)], [s.lam(g, 25) for g in range(2)], s.lam(1, 50)
    ([0.0, 0.0], [1.0, 0.0], 1.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["LambdaSchedule", "linear_ramp", "lr_factor"]

ORDERS = ("bottom_up", "top_down", "together")


def linear_ramp(step: float, start: float, end: float) -> float:
    """0 before `start`, 1 from `end` on, linear in between (a step when end <= start).

    >>> linear_ramp(5, 0, 10), linear_ramp(-1, 0, 10), linear_ramp(10, 0, 10), linear_ramp(3, 3, 3)
    (0.5, 0.0, 1.0, 1.0)
    """
    if step >= end:
        return 1.0
    if step < start:
        return 0.0
    return (step - start) / (end - start)


@dataclass(frozen=True)
class LambdaSchedule:
    """λ_g(t) for G layer groups over stage A; `abrupt` gives λ = 1 from step 0 (ablation)."""

    stage_a_steps: int
    num_groups: int
    fade_fraction: float = 0.7
    ramp_width: float = 0.5
    order: str = "bottom_up"      # which groups hand over first
    abrupt: bool = False

    def __post_init__(self):
        if self.stage_a_steps < 0 or self.num_groups < 1:
            raise ValueError(f"need stage_a_steps >= 0 and num_groups >= 1, got {self.stage_a_steps}, {self.num_groups}")
        if not 0.0 <= self.fade_fraction <= 1.0:
            raise ValueError(f"fade_fraction must be in [0, 1], got {self.fade_fraction}")
        if not 0.0 < self.ramp_width <= 1.0:
            raise ValueError(f"ramp_width must be in (0, 1], got {self.ramp_width}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")

    def window(self, group: int) -> tuple[float, float]:
        """(start, end) step of group `group`'s ramp."""
        fade = self.fade_fraction * self.stage_a_steps
        if self.order == "together" or self.num_groups == 1:
            return 0.0, fade
        width = self.ramp_width * fade
        rank = group if self.order == "bottom_up" else self.num_groups - 1 - group
        start = rank / (self.num_groups - 1) * (fade - width)
        return start, start + width

    def lam(self, group: int, step: int) -> float:
        if self.abrupt or step >= self.stage_a_steps:
            return 1.0
        return linear_ramp(step, *self.window(group))


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10 % (multiplies the base learning rates).

    >>> lr_factor(0, 100, 10), lr_factor(10, 100, 10), round(lr_factor(100, 100, 10), 3)
    (0.1, 1.0, 0.1)
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))
