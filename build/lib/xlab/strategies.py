"""Fully sharded data parallel (FSDP) for models that do not fit one GPU, set up for XLab's models.

DDP keeps a whole copy of the weights, gradients and AdamW state on every GPU (16 bytes a
parameter in fp32 before activations: ~2 GB at 124M parameters, ~110 GB at 7B). FSDP shards all
three across the GPUs and gathers one transformer block's weights at a time for its forward and
backward, so the per-GPU memory falls with the number of GPUs. `XLabFSDP` is Lightning's
FSDPStrategy with what XLab decides for it: every transformer block is its own FSDP unit (the
model names its blocks: `LanguageModel.fsdp_units`); the original parameters stay visible, so the optimizer's decay / no-decay groups work
unchanged; checkpoints are sharded by default (each rank writes its own shard into a folder, in
parallel, with no rank holding the whole model). Typed primitive arguments only, so a YAML
recipe can select it:

    trainer:
      strategy:
        class_path: xlab.strategies.XLabFSDP
        init_args:
          sharding_strategy: FULL_SHARD    # FULL_SHARD | SHARD_GRAD_OP | HYBRID_SHARD | NO_SHARD
          state_dict_type: sharded         # sharded | full

Lightning runs FSDP on CUDA GPUs only; on any other device this strategy stops with a one-line
error naming DDP as the strategy to use there.
"""

from __future__ import annotations

from typing import Literal

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from xlab.common.errors import XLabError


class XLabFSDP(FSDPStrategy):
    """FSDPStrategy wrapping each transformer block, with sharded checkpoints by default.

    Args:
        sharding_strategy: FULL_SHARD shards weights, gradients and optimizer state (least memory);
            SHARD_GRAD_OP keeps the weights whole between forward and backward (fewer gathers);
            HYBRID_SHARD shards within a node and replicates across nodes; NO_SHARD is DDP.
        state_dict_type: sharded writes a checkpoint folder of per-rank shards; full gathers a
            single-file checkpoint on rank 0 (needs the whole model in one process's memory).
        activation_checkpointing: Recompute each block's activations in backward instead of
            keeping them (about a third more compute, far less activation memory).
        cpu_offload: Keep the sharded parameters in host memory between uses (slow; for models
            that do not fit even sharded).
    """

    def __init__(self, sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"] = "FULL_SHARD",
                 state_dict_type: Literal["sharded", "full"] = "sharded", activation_checkpointing: bool = False,
                 cpu_offload: bool = False):
        super().__init__(sharding_strategy=sharding_strategy, state_dict_type=state_dict_type, cpu_offload=cpu_offload)
        self.checkpoint_blocks = activation_checkpointing

    def wrap_units(self, model: nn.Module) -> None:
        """Wrap (and with activation checkpointing, recompute) each block `model` names; a model
        that names none is one unit."""
        units = set(model.fsdp_units()) if hasattr(model, "fsdp_units") else set()
        if units:
            self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(units)
            if self.checkpoint_blocks:
                self._activation_checkpointing_kwargs = {"auto_wrap_policy": ModuleWrapPolicy(units)}

    def _setup_model(self, model: nn.Module) -> nn.Module:
        # The units are the model's to name, and the model exists only now.
        self.wrap_units(self.lightning_module)
        return super()._setup_model(model)

    def setup_environment(self) -> None:
        # Lightning refuses `strategy="fsdp"` off CUDA, but not a subclass: without this check a
        # CPU run would fail later, deep inside torch.distributed.
        if self.root_device.type != "cuda":
            raise XLabError(f"the FSDP strategy needs CUDA GPUs, this run is on {self.root_device.type}: "
                            "use --trainer.strategy ddp (or no strategy) here.")
        super().setup_environment()
