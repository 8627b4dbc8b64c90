"""What every XLab language model shares: the step, the metrics, the optimizer recipe, predict.

The base takes the settings every model shares (special ids, context length, the optimizer and
its schedule, compile) and saves every constructor argument of the subclass with them. A subclass
declares only its own arguments, forwards the rest with `**kwargs` (jsonargparse follows them
into this signature, so `--help` and `--print_config` list both), builds its network after
`super().__init__(**kwargs)` and implements `forward(input_ids, ...) -> logits`. Batches are
dicts from the data module's datasets.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import FSDPStrategy
from torch import Tensor, nn
from torchmetrics import MeanMetric

from xlab.common.checkpoint import (MODEL_CLASS_RECORD, STATE_SUMMARY_RECORD, VALIDATION_RECORD, check_saved_class,
                                     read_checkpoint)
from xlab.common.errors import XLabError
from xlab.common.tokenizer import IGNORE_INDEX
from xlab.models.loss import token_stats
from xlab.models.metrics import LanguageModelMetrics
from xlab.models.optimizers import OptimizerKind, build_optimizer, parameter_groups
from xlab.models.schedule import Extension, ScheduleKind, WarmupSchedule, make_schedule

STAGES = ("train", "val", "test")


class LanguageModel(L.LightningModule):
    """Base class: next-token loss, corpus-level metrics per split, AdamW or Muon with a warmup schedule.

    Args:
        vocab_size: Tokens in the vocabulary (linked from the data module).
        sos_id, eos_id, pad_id: Special token ids (linked from the data module).
        max_len: Context length in tokens (linked into the data module's block size).
        learning_rate, weight_decay, betas: AdamW; no decay on norms, biases and embeddings.
        optimizer: adamw (every parameter) or muon (torch.optim.Muon for the hidden 2-D weights,
            AdamW for embeddings, the output head, norms, biases and scalars; see `optimizers.py`).
        muon_lr, muon_momentum: Muon's peak rate (None: learning_rate; its steps are scaled to
            AdamW's size) and momentum (Nesterov).
        embedding_lr, head_lr: Peak rates of the token (and position) embeddings and of an untied
            output head (None: learning_rate).
        warmup_steps, min_lr_ratio, lr_decay_steps: Linear warmup, then down to min_lr_ratio *
            the peak at lr_decay_steps (default: the run's total steps). The checkpoint keeps that
            horizon: a resumed run continues it exactly.
        lr_schedule: cosine (decay from the end of warmup) or trapezoid (the peak held, then a
            linear cooldown over the last cooldown_fraction of the steps after warmup).
        cooldown_fraction: The trapezoid's cooldown, as a fraction of the steps after warmup.
        lr_extension: A run resumed with more steps than its schedule reaches: keep the rate it
            ended on (keep), or warm up again and decay to the new end (rewarm); either is announced.
        compile: Run the model's network and its loss through torch.compile (see `compile_target`).
        tf32: Let fp32 matmuls and convolutions use TensorFloat-32 on GPUs that have it (Ampere
            and later: several times the fp32 speed at ~3 significant digits); no effect on a CPU.
        added_tokens: Ids the data module added to a pretrained tokenizer (its special tokens;
            linked from the data module). A model started from pretrained weights grows its
            embedding by exactly this many rows; any other vocabulary mismatch is an error.
    """

    def __init__(
        self,
        vocab_size: int = 4096,
        sos_id: int = 2,
        eos_id: int = 3,
        pad_id: int = 0,
        max_len: int = 256,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        lr_decay_steps: int | None = None,
        lr_extension: Extension = "keep",
        compile: bool = False,
        added_tokens: int = 0,
        tf32: bool = True,
        optimizer: OptimizerKind = "adamw",
        muon_lr: float | None = None,
        muon_momentum: float = 0.95,
        embedding_lr: float | None = None,
        head_lr: float | None = None,
        lr_schedule: ScheduleKind = "cosine",
        cooldown_fraction: float = 0.2,
    ):
        super().__init__()
        # Collects the arguments of every __init__ in the chain, the subclass's included.
        self.save_hyperparameters()
        if max_len < 1:
            raise XLabError(f"model max_len={max_len} must be positive.")
        if not 0 <= cooldown_fraction <= 1:
            raise XLabError(f"model cooldown_fraction={cooldown_fraction} must be between 0 and 1.")
        # Keys carry a suffix: a ModuleDict key "train" would shadow nn.Module.train().
        self.metrics = nn.ModuleDict({f"{stage}_metrics": LanguageModelMetrics() for stage in STAGES})
        # Accuracy on answer tokens, for data that marks them (the recall task's `answer_mask`).
        self.answers = nn.ModuleDict({f"{stage}_answers": MeanMetric() for stage in STAGES})
        self._token_stats = token_stats  # compiled in setup() when `compile` is on
        self._shown_loss: Tensor | None = None  # the progress bar's host copy of the step loss

    def compile_target(self) -> nn.Module:
        """The module whose forward `compile: true` compiles; models that keep some calls eager
        (MemoryGPT2's faiss searches) return the part that can be traced."""
        return self

    def setup(self, stage: str) -> None:
        # Lightning sets the data module up first: what it offers the model is ready.
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        for kind, resource in getattr(datamodule, "model_resources", dict)().items():
            self.use_resource(kind, resource)
        target = self.compile_target()
        # Compiling the bound forward keeps parameter names (no `_orig_mod.` prefix) in checkpoints.
        if self.hparams.compile and not hasattr(target.forward, "_torchdynamo_orig_callable"):
            target.forward = torch.compile(target.forward)
            self._token_stats = torch.compile(token_stats)
        if self.hparams.get("tf32", True) and self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    # --- steps ------------------------------------------------------------------------------
    def batch_logits(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits for a batch; models that read more than the tokens (neighbours, ...) override this."""
        return self(batch["input_ids"])

    def loss_and_stats(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self.batch_logits(batch)
        labels = batch["labels"]
        nll, valid, hits = self._token_stats(logits, labels)
        tokens = valid.sum()
        stats = {"nll_sum": nll, "tokens": tokens, "correct": hits.sum(), "num_bytes": batch["num_bytes"].sum()}
        if "answer_mask" in batch:
            answers = batch["answer_mask"].bool() & valid
            stats["answers"], stats["answers_correct"] = answers.sum(), (hits & answers).sum()
        return nll / tokens.clamp(min=1), stats

    def _common_step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        loss, stats = self.loss_and_stats(batch)
        answers, correct = stats.pop("answers", None), stats.pop("answers_correct", None)
        self.metrics[f"{stage}_metrics"].update(**stats)
        size = batch["input_ids"].shape[0]
        if answers is not None:
            metric = self.answers[f"{stage}_answers"]
            metric.update(correct.float() / answers.clamp(min=1), weight=answers.float())
            self.log(f"{stage}/answer_accuracy", metric, on_step=False, on_epoch=True, batch_size=size)
        if stage == "train":
            self.log("train/loss_step", self._host_loss(loss), prog_bar=True, batch_size=size)
        return loss

    def _host_loss(self, loss: Tensor) -> Tensor:
        """The step loss as a host tensor, copied from the device only on the steps the logger
        writes: the progress bar turns what it shows into a number on every step, and a device
        tensor there would make the host wait for the device on every step. Between those steps
        the bar shows the last copy."""
        if self._shown_loss is None or self._logs_this_step():
            self._shown_loss = loss.detach().to("cpu", torch.float32)
        return self._shown_loss

    def _logs_this_step(self) -> bool:
        """Whether the logger writes this training step (always, outside a Trainer)."""
        connector = getattr(self._trainer, "_logger_connector", None)
        return connector is None or connector.should_update_logs

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._common_step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._common_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._common_step(batch, "test")

    def _log_epoch(self, stage: str) -> None:
        metrics = self.metrics[f"{stage}_metrics"]
        values = metrics.compute()  # synced across ranks by torchmetrics
        self.log_dict({f"{stage}/{name}": value for name, value in values.items()},
                      prog_bar=stage != "train", sync_dist=False, rank_zero_only=False)
        metrics.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._log_epoch("val")
        self.metrics["val_metrics"].reset()

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Per-window sums for the predict split; a writer callback joins them per document."""
        logits = self.batch_logits(batch)
        labels = batch["labels"]
        nll = F.cross_entropy(logits.transpose(1, 2).float(), labels, ignore_index=IGNORE_INDEX, reduction="none")
        return {"doc_index": batch["doc_index"].cpu(), "nll_sum": nll.sum(1).cpu(),
                "tokens": (labels != IGNORE_INDEX).sum(1).cpu(), "num_bytes": batch["num_bytes"].cpu()}

    # --- checkpoints and the state beyond the weights -----------------------------------------
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's loader, after checking the checkpoint holds this kind of model.

        Without the check, an XLabModel asked to load a MemoryGPT2 checkpoint fails deep inside
        `__init__` or `load_state_dict` with a message about keyword arguments or tensor shapes.
        """
        check_saved_class(read_checkpoint(checkpoint_path), cls)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # LightningCLI puts the class path in the hparams; a model built in Python would leave
        # loaders guessing its kind. The summary lets `manage.py inspect` report the state
        # without building the model.
        checkpoint[MODEL_CLASS_RECORD] = f"{type(self).__module__}.{type(self).__name__}"
        checkpoint[STATE_SUMMARY_RECORD] = self.state_summary()
        trainer = self._trainer
        if trainer is not None:
            checkpoint[VALIDATION_RECORD] = {name: float(value) for name, value in trainer.callback_metrics.items()
                                             if name.startswith("val/") and value.numel() == 1}

    def state_summary(self) -> dict[str, int]:
        """Counts that describe the model's state beyond its weights (e.g. memory entries);
        shown by `manage.py inspect` and `infer.py`. A plain network has none."""
        return {}

    def clear_state(self) -> None:
        """Empty the state beyond the weights (what an export with `--empty-memory` leaves out)."""

    def set_generation_writes(self, enabled: bool) -> None:
        """Whether sampling may change the model's state; models that have such state override."""
        raise XLabError(f"{type(self).__name__} has no state that sampling can write")

    def prepare_sampling(self) -> None:
        """Open what decoding needs beyond the weights before the first token (RetroModel: the
        retrieval database recorded in its checkpoint, unless one is set); `xlab.inference`
        calls it. Nothing by default."""

    def use_resource(self, kind: str, resource: Any) -> None:
        """Take something the data module offers for training and evaluation (`DataModule.
        model_resources`: RetroModel takes its retrieval database, CaptionModel the tokenizer and
        the training references SCST scores against). Models ignore what they do not use."""

    # --- what the scripts ask the model -------------------------------------------------------
    def fsdp_units(self) -> set[type[nn.Module]]:
        """The module classes FSDP shards one at a time: the model's transformer blocks."""
        return set()

    def hf_export(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """(a `transformers` config as a dict, naming its model_type; the weights under that model's
        names) for `manage.py export-hf`, or an XLabError saying why there is none."""
        raise XLabError(f"a {type(self).__name__} cannot be exported to transformers: it has no transformers "
                        "equivalent.")

    # --- optimisation -----------------------------------------------------------------------
    def output_head(self) -> nn.Module | None:
        """The layer that maps the last hidden state to the vocabulary (its own learning rate when
        untied; never Muon's); `lm_head` in XLab's models."""
        return getattr(self, "lm_head", None)

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """Every trainable parameter once, in groups with their optimizer, rate and decay
        (`optimizers.parameter_groups`); models with parameters that need other rates override."""
        return parameter_groups(self, self.output_head(), self.hparams, weight_decay)

    def configure_optimizers(self):
        hp = self.hparams
        sharded = self._trainer is not None and isinstance(self._trainer.strategy, FSDPStrategy)
        if hp.get("optimizer", "adamw") == "muon" and sharded:
            raise XLabError("model optimizer=muon cannot run under FSDP, whose sharded parameters are not the 2-D "
                            "matrices Muon needs: use optimizer adamw, or strategy ddp.")
        # Fused AdamW exists for CPUs too: one kernel per parameter instead of a chain of foreach ops.
        # On a 2-core CPU it took the step of a 5.2M-parameter model from ~100 to ~35 ms. Lightning
        # refuses gradient clipping with a fused optimizer under mixed precision (which unscales
        # gradients itself): a CPU run in bf16-mixed keeps the foreach kernels.
        mixed = self._trainer is not None and isinstance(self._trainer.precision_plugin, MixedPrecision)
        fused = self.device.type == "cuda" or (self.device.type == "cpu" and not mixed)
        optimizer = build_optimizer(self.parameter_groups(hp.weight_decay), tuple(hp.betas),
                                    hp.get("muon_momentum", 0.95), fused)
        schedule = make_schedule(hp.get("lr_schedule", "cosine"), hp.warmup_steps, self._schedule_horizon(),
                                 hp.min_lr_ratio, hp.get("cooldown_fraction", 0.2))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _schedule_horizon(self) -> int:
        """The step the schedule decays to: lr_decay_steps, else the run's last step."""
        return int(self.hparams.lr_decay_steps or self.trainer.estimated_stepping_batches)

    def on_train_start(self) -> None:
        # A resumed run has its schedule back from the checkpoint now; training beyond it extends it.
        schedulers = self.lr_schedulers()
        scheduler = schedulers[0] if isinstance(schedulers, list) else schedulers
        schedule = getattr(scheduler, "lr_lambdas", [None])[0]
        planned = self._schedule_horizon()
        if self.global_step == 0 or not isinstance(schedule, WarmupSchedule) or planned <= schedule.total_steps:
            return
        notice = schedule.extend_(self.global_step, planned, self.hparams.get("lr_extension", "keep"))
        for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * schedule(scheduler.last_epoch)
        if self.trainer.is_global_zero:
            print(notice, flush=True)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        params = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            for m in self.modules():
                if isinstance(m, nn.Embedding):
                    params.pop(id(m.weight), None)
        return sum(p.numel() for p in params.values())
