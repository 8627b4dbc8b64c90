"""The training progress bar: step of max steps, loss, validation loss and tokens/s, on one line.

Lightning's bar counts batches per epoch and names the epoch against `max_epochs - 1`, which
reads `Epoch 11/-2` when steps decide the run (max_epochs -1), and it lists every logged
metric plus the logger's `v_num`, so the line wraps. XLab runs are sized in optimizer steps, so
the bar counts steps across epochs and shows only what a user reads at a glance.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import BatchesProcessedColumn, CustomBarColumn, CustomTimeColumn
from rich.progress import TextColumn

WINDOW = 20  # batches over which tokens/s is averaged


def short_count(n: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


class StepProgressBar(RichProgressBar):
    """A rich bar over the run's optimizer steps, with loss, val loss and tokens/s."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._recent: deque[tuple[float, int]] = deque(maxlen=WINDOW + 1)
        self._rate: float | None = None

    @property
    def total_train_batches(self) -> int | float:
        total = self.trainer.estimated_stepping_batches  # max_steps, or epochs x batches / accumulation
        return total if math.isfinite(total) else float("inf")

    def _get_train_description(self, current_epoch: int) -> str:
        return "step"

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)  # resets the bar to zero: put the step back
        self._update(self.train_progress_bar_id, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        tokens = batch["input_ids"].numel() * trainer.world_size if isinstance(batch, dict) and "input_ids" in batch else 0
        self._recent.append((time.monotonic(), tokens))
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        self._recent.clear()  # the time spent validating is not training speed

    def tokens_per_second(self) -> float | None:
        """Over the last batches; across a validation pass, the rate measured before it."""
        if len(self._recent) >= 2 and self._recent[-1][0] > self._recent[0][0]:
            # The first entry only marks the start of the window: its tokens were done before it.
            elapsed = self._recent[-1][0] - self._recent[0][0]
            self._rate = sum(n for _, n in list(self._recent)[1:]) / elapsed
        return self._rate

    def get_metrics(self, trainer, pl_module) -> dict[str, str]:
        logged = trainer.progress_bar_metrics
        shown = {}
        for label, key in (("loss", "train/loss_step"), ("val loss", "val/loss")):
            if key in logged:
                shown[label] = f"{float(logged[key]):.3f}"
        rate = self.tokens_per_second()
        if rate is not None:
            shown["tok/s"] = short_count(rate)
        return shown

    def configure_columns(self, trainer) -> list:
        return [TextColumn("[progress.description]{task.description}"),
                CustomBarColumn(bar_width=24, complete_style=self.theme.progress_bar,
                                finished_style=self.theme.progress_bar_finished, pulse_style=self.theme.progress_bar_pulse),
                BatchesProcessedColumn(style=self.theme.batch_progress), CustomTimeColumn(style=self.theme.time)]
