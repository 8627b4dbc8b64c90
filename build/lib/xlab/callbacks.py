"""Callbacks the CLI always installs: step-exact last checkpoints, the random state that makes a
resume exact, scores by generation, a run summary, predictions."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint

from xlab.common.files import written_aside_


class XLabCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose `last.ckpt` is always the final step of training, and resumes exactly.

    Lightning writes `last` only when a checkpoint is triggered (and once at train end if none
    was): steps after the last validation would be lost on resume. And a checkpoint written at
    train end records the epoch as finished even when `max_steps` stopped it half way, so a run
    resumed from it to train longer would start the next epoch's order instead of the rest of
    this one. So when `max_steps` ends training, `last` is written right after the final batch,
    where Lightning's own mid-epoch checkpoints are taken, and again after a validation at that
    step, so that it holds that validation's metrics.
    """

    # Set while training runs (this class keeps ModelCheckpoint's constructor, which the CLI reads).
    _loader_after_step: Any = None
    _failing = False
    _ended_by_steps: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # Where the train loader stood after this step: an exception in the next one resumes here.
        self._loader_after_step = trainer.fit_loop.state_dict().get("state_dict", {}).get("combined_loader")
        ends = 0 < trainer.max_steps <= trainer.global_step
        if ends and self.save_last and self._last_global_step_saved != trainer.global_step:
            saved = self._last_global_step_saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            # A validation at this step is still to run: it must not take this save for its own.
            self._last_global_step_saved, self._ended_by_steps = saved, trainer.global_step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        # The final step's validation: `last` gets its metrics, unless a new best already saved it.
        final = self._ended_by_steps == trainer.global_step and not trainer.sanity_checking
        if final and self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._failing = True
        try:
            super().on_exception(trainer, pl_module, exception)
        finally:
            self._failing = False

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # The loader has already handed out the batch of the step that failed; resuming from its
        # position would skip that batch, so the checkpoint keeps where it stood after the last step.
        loops = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        if self._failing and self._loader_after_step is not None and loops:
            loops["combined_loader"] = self._loader_after_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        done = {self._last_global_step_saved, self._ended_by_steps}
        if self.save_last and trainer.global_step not in done:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)


class RandomState(L.Callback):
    """Carries the random generators' state in every checkpoint and puts it back on resume.

    Without it a resumed run draws other random numbers than the uninterrupted one (dropout,
    MemoryGPT2's sampled store decisions), so its losses part ways a step after the resume even
    when it sees the same batches. The state goes back just before the first training batch, not
    when the checkpoint is read: what the trainer does in between (sanity validation, building
    loaders) is not what the uninterrupted run did at that point. Stored as tensors and numbers,
    so a checkpoint still loads with weights_only=True.
    """

    def __init__(self):
        self._pending: dict[str, Any] | None = None
        self._after_step: dict[str, Any] | None = None  # as the last finished step left it
        self._failed = False

    def state_dict(self) -> dict[str, Any]:
        # The checkpoint Lightning writes on an exception resumes at the step that failed: its draws
        # are those that step started from, not what it drew before it failed.
        if self._failed and self._after_step is not None:
            return self._after_step
        return self._capture()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self._after_step = self._capture()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._failed = True  # checkpoint callbacks run after this one and save on the exception

    def _capture(self) -> dict[str, Any]:
        version, mt, gauss = random.getstate()
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {"torch": torch.get_rng_state(),
                 "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
                 "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                           "has_gauss": has_gauss, "gauss": cached}}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = state

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        torch.set_rng_state(state["torch"])
        python = state["python"]
        random.setstate((python["version"], tuple(python["mt"].tolist()), python["gauss"]))
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


class GenerationMetrics(L.Callback):
    """Scores the model by generating, at the end of each validation and test, with the evaluator
    its data module gives (`DataModule.generation_evaluator`: dialogue's Hits@1 and F1, captions'
    COCO metrics), and logs them as {stage}/{name}. Data without one costs nothing.

    The CLI installs it in every run, so `validate` and `test` from a checkpoint report what
    training reported; a Trainer built in Python adds it to its callbacks."""

    def __init__(self):
        self._evaluator = None

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        offer = getattr(datamodule, "generation_evaluator", None)
        self._evaluator = offer(pl_module) if offer is not None and not trainer.sanity_checking else None

    def _update(self, pl_module: L.LightningModule, batch: Any) -> None:
        if self._evaluator is not None:
            self._evaluator.update(pl_module, batch)

    def _finish(self, pl_module: L.LightningModule, stage: str) -> None:
        evaluator, self._evaluator = self._evaluator, None
        if evaluator is None:
            return
        for name, value in evaluator.compute(pl_module, stage).items():
            pl_module.log(f"{stage}/{name}", value, prog_bar=stage == "val", sync_dist=False, rank_zero_only=False)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(pl_module, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(pl_module, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(pl_module, "test")


class RunSummary(L.Callback):
    """Says where a run's checkpoints and TensorBoard logs are, and how it compares to a baseline."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        # The CLI's own checkpoint callback, not a periodic one a recipe lists first.
        checkpoint = next((c for c in trainer.checkpoint_callbacks if isinstance(c, XLabCheckpoint)),
                          trainer.checkpoint_callback)
        if checkpoint is not None and checkpoint.dirpath:
            best = Path(checkpoint.best_model_path).name if checkpoint.best_model_path else "-"
            last = checkpoint.last_model_path or "-"
            print(f"xlab: checkpoints in {checkpoint.dirpath} (best {best}, last {Path(last).name})")
        if trainer.logger is not None and trainer.logger.log_dir:
            print(f"xlab: TensorBoard logs in {trainer.logger.log_dir} (tensorboard --logdir {Path(trainer.logger.log_dir).parent})")
        val_loss = trainer.callback_metrics.get("val/loss")
        unigram = _unigram_loss(trainer)
        if val_loss is not None:
            baseline = f" (unigram baseline {unigram:.3f})" if unigram is not None else ""
            print(f"xlab: val/loss {float(val_loss):.3f}{baseline}, val/perplexity {math.exp(float(val_loss)):.1f}")


def _unigram_loss(trainer: L.Trainer) -> float | None:
    datamodule = trainer.datamodule
    try:
        return datamodule.meta.get("unigram_loss") if datamodule is not None else None
    except (AttributeError, OSError):
        return None


class DocumentScoreWriter(BasePredictionWriter):
    """Writes the predict split's per-document log-likelihood as JSON lines.

    Windows of one document may be scored on different ranks, so sums are kept per document in
    fixed-size tensors and added up across ranks before rank 0 writes the file.
    """

    def __init__(self, output_path: str | None = None):
        super().__init__(write_interval="batch")
        self.output_path = output_path
        self.sums: torch.Tensor | None = None

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ids = trainer.datamodule.document_ids("predict")
        self.sums = torch.zeros(len(self.ids), 3, dtype=torch.float64)  # nll, tokens, bytes

    def write_on_batch_end(self, trainer, pl_module, prediction: dict[str, Any], batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        values = torch.stack([prediction["nll_sum"].double(), prediction["tokens"].double(),
                              prediction["num_bytes"].double()], dim=1)
        self.sums.index_add_(0, prediction["doc_index"], values)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sums = self.sums.to(pl_module.device)
        if trainer.world_size > 1:
            sums = pl_module.all_gather(sums).sum(0)
        if not trainer.is_global_zero:
            return
        path = Path(self.output_path or Path(trainer.log_dir or ".") / "predictions.jsonl")
        with written_aside_(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
            for doc_id, (nll, tokens, num_bytes) in zip(self.ids, sums.cpu().tolist()):
                loss = nll / max(tokens, 1)
                out.write(json.dumps({"document": doc_id, "tokens": int(tokens), "nll": round(nll, 4),
                                      "loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50)), 3),
                                      "bpb": round(nll / math.log(2) / max(num_bytes, 1), 4)}) + "\n")
        print(f"xlab: per-document scores of {len(self.ids)} predict documents in {path}")
