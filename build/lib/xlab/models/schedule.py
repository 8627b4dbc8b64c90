"""The learning-rate schedule: linear warmup, then cosine decay to a floor, and what happens when a
finished run is resumed to train longer.

The schedule is a callable object rather than a function because torch's `LambdaLR` saves a
callable object's attributes in its state: the horizon a run was started with travels in every
checkpoint, so a resumed run continues it exactly whatever its own `max_steps` says. A run resumed
with more steps than that horizon is an extension, and `extend_` decides what it gets: the rate it
ended on (`keep`, the default: never a silent jump back up) or a new warmup and cosine to the new end
(`rewarm`).
"""

from __future__ import annotations

import math
from typing import Literal

Extension = Literal["keep", "rewarm"]


class WarmupCosine:
    """The factor on the peak learning rate at each optimizer step: linear warmup to 1 over
    `warmup_steps`, cosine down to `min_ratio` at `total_steps`, flat after; counted from `start`
    (the step a rewarm began, 0 otherwise)."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float, start: int = 0):
        self.warmup_steps, self.total_steps, self.min_ratio, self.start = warmup_steps, total_steps, min_ratio, start

    def __call__(self, step: int) -> float:
        step -= self.start
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.start - self.warmup_steps))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def extend_(self, step: int, total_steps: int, how: Extension) -> str:
        """Make the schedule reach to `total_steps` from `step`, past its own horizon; returns the
        one-line notice of what the learning rate does now."""
        ended = self.total_steps
        if how == "rewarm":
            self.start, self.total_steps = step, total_steps
            return (f"xlab: the run goes on from step {step} past its learning-rate schedule (cosine to step {ended}): "
                    f"the rate warms up again over {self.warmup_steps} steps and decays to step {total_steps} "
                    "(model lr_extension: rewarm).")
        return (f"xlab: the run goes on from step {step} past its learning-rate schedule (cosine to step {ended}): the "
                f"rate stays at its final {self.min_ratio:g} x the peak; set model.init_args.lr_extension rewarm to warm "
                f"up again and decay to step {total_steps}.")
