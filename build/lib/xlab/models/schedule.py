"""The learning-rate schedules: linear warmup, then cosine decay to a floor (`WarmupCosine`) or a
constant rate and a linear cooldown to the floor at the end (`Trapezoid`, the speedrun's "warmup,
stable, decay"), and what happens when a finished run is resumed to train longer.

A schedule is a callable object rather than a function because torch's `LambdaLR` saves a
callable object's attributes in its state: the horizon a run was started with travels in every
checkpoint, so a resumed run continues it exactly whatever its own `max_steps` says. A run resumed
with more steps than that horizon is an extension, and `extend_` decides what it gets: the rate it
ended on (`keep`, the default: never a silent jump back up) or a new warmup and decay to the new end
(`rewarm`).
"""

from __future__ import annotations

import math
from typing import Literal

Extension = Literal["keep", "rewarm"]
ScheduleKind = Literal["cosine", "trapezoid"]


class WarmupSchedule:
    """The factor on the peak learning rate at each optimizer step: linear warmup to 1 over
    `warmup_steps`, then `decay(progress)` down to `min_ratio` at `total_steps`, flat after; counted
    from `start` (the step a rewarm began, 0 otherwise)."""

    shape = "decay"

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float, start: int = 0):
        self.warmup_steps, self.total_steps, self.min_ratio, self.start = warmup_steps, total_steps, min_ratio, start

    def __call__(self, step: int) -> float:
        step -= self.start
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        length = max(1, self.total_steps - self.start - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / length)
        return self.min_ratio + (1 - self.min_ratio) * self.decay(progress)

    def decay(self, progress: float) -> float:
        """From 1 at progress 0 to 0 at progress 1 (the fraction of the steps after warmup)."""
        raise NotImplementedError

    def extend_(self, step: int, total_steps: int, how: Extension) -> str:
        """Make the schedule reach to `total_steps` from `step`, past its own horizon; returns the
        one-line notice of what the learning rate does now."""
        ended = self.total_steps
        if how == "rewarm":
            self.start, self.total_steps = step, total_steps
            return (f"xlab: the run goes on from step {step} past its learning-rate schedule ({self.shape} to step "
                    f"{ended}): the rate warms up again over {self.warmup_steps} steps and decays to step {total_steps} "
                    "(model lr_extension: rewarm).")
        return (f"xlab: the run goes on from step {step} past its learning-rate schedule ({self.shape} to step {ended}): "
                f"the rate stays at its final {self.min_ratio:g} x the peak; set model.init_args.lr_extension rewarm to "
                f"warm up again and decay to step {total_steps}.")


class WarmupCosine(WarmupSchedule):
    """Warmup, then half a cosine from the peak down to the floor."""

    shape = "cosine"

    def decay(self, progress: float) -> float:
        return 0.5 * (1 + math.cos(math.pi * progress))


class Trapezoid(WarmupSchedule):
    """Warmup, the peak held, then a straight line down to the floor over the last
    `cooldown_fraction` of the steps after warmup. Holding the peak longer learns faster; the
    cooldown at the end is where the loss drops, so a run can be stopped at any cooldown's end."""

    shape = "trapezoid"

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float, cooldown_fraction: float,
                 start: int = 0):
        super().__init__(warmup_steps, total_steps, min_ratio, start)
        self.cooldown_fraction = cooldown_fraction

    def decay(self, progress: float) -> float:
        cooldown = self.cooldown_fraction
        if cooldown <= 0 or progress < 1 - cooldown:
            return 1.0 if progress < 1 else 0.0
        return (1 - progress) / cooldown


def make_schedule(kind: ScheduleKind, warmup_steps: int, total_steps: int, min_ratio: float,
                  cooldown_fraction: float) -> WarmupSchedule:
    if kind == "trapezoid":
        return Trapezoid(warmup_steps, total_steps, min_ratio, cooldown_fraction)
    return WarmupCosine(warmup_steps, total_steps, min_ratio)
