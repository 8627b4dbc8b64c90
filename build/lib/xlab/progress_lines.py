"""Plain progress lines for logs: what the progress bar shows, one line every `log_every_n_steps`.

A cluster job's log is not a terminal, and a run with `--trainer.enable_progress_bar false` shows
no bar: without these lines it would print nothing until it ends. Each line says the step of the
run's steps, the loss, the learning rate, tokens per second and the time left; each validation
adds a line of its metrics. The loss is the host copy the model takes on logging steps, so a line
makes no step wait for a GPU.

    xlab: step 120/300  loss 4.231  lr 1.80e-03  2,239 tok/s  1:23 left
    xlab: step 150/300  val/loss 4.040  val/perplexity 56.8  val/bpb 1.52
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

import lightning as L

SHOWN_VALIDATION = ("val/loss", "val/perplexity", "val/bpb", "val/accuracy")


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class ProgressLines(L.Callback):
    """Prints a progress line every `log_every_n_steps` optimizer steps and after each validation,
    on rank 0."""

    def __init__(self, out: TextIO | None = None):
        super().__init__()
        self.out = out
        self._since: tuple[float, int, int] | None = None  # (time, step, tokens) at the last line
        self._tokens = 0

    def _print(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._since = (time.monotonic(), trainer.global_step, 0)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if isinstance(batch, dict) and "input_ids" in batch:
            self._tokens += batch["input_ids"].numel() * trainer.world_size
        step = trainer.global_step
        every = max(1, trainer.log_every_n_steps)
        if not trainer.is_global_zero or self._since is None or step == self._since[1] or step % every:
            return
        now = time.monotonic()
        began, from_step, from_tokens = self._since
        rate = (self._tokens - from_tokens) / max(now - began, 1e-9)
        total = trainer.estimated_stepping_batches
        parts = [f"step {step}/{total}" if math.isfinite(total) else f"step {step}"]
        loss = trainer.progress_bar_metrics.get("train/loss_step")
        if loss is not None:
            parts.append(f"loss {float(loss):.3f}")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.2e}")
        parts.append(f"{rate:,.0f} tok/s")
        if math.isfinite(total) and step > from_step:
            parts.append(f"{clock((total - step) * (now - began) / (step - from_step))} left")
        self._print("xlab: " + "  ".join(parts))
        self._since = (now, step, self._tokens)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = [f"{name} {float(metrics[name]):.4g}" for name in SHOWN_VALIDATION if name in metrics]
        shown += [f"{name} {float(value):.4g}" for name, value in metrics.items()
                  if name.startswith("val/") and name not in SHOWN_VALIDATION and not name.endswith("_se")]
        if shown:
            self._print(f"xlab: step {trainer.global_step}  " + "  ".join(shown))
        # Validation time is not training speed: the next line measures from here.
        if self._since is not None:
            self._since = (time.monotonic(), trainer.global_step, self._tokens)
