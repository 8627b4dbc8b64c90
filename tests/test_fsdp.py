"""FSDP for the big recipe: what a CPU can check. Lightning runs FSDP on CUDA only, so the
sharded training itself and its sharded checkpoints are exercised by bench/gpu_check.py."""

from __future__ import annotations

import lightning as L
import pytest
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from tests.helpers import CONF
from xlab.cli import main
from xlab.errors import XLabError
from xlab.models.blocks import Block
from xlab.models.retro import DecoderLayer
from xlab.strategies import XLabFSDP


def test_the_recipe_takes_the_fsdp_strategy_from_the_command_line(capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "-c", str(CONF / "xlab.yaml"), "--trainer.strategy", "xlab.strategies.XLabFSDP",
              "--trainer.strategy.sharding_strategy", "SHARD_GRAD_OP", "--print_config"])
    assert done.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: xlab.strategies.XLabFSDP" in printed and "sharding_strategy: SHARD_GRAD_OP" in printed
    assert "state_dict_type: sharded" in printed


def test_each_transformer_block_is_a_unit_and_checkpoints_are_sharded():
    strategy = XLabFSDP(activation_checkpointing=True)
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and {Block, DecoderLayer} <= set(policy._module_classes)
    assert strategy._state_dict_type == "sharded" and strategy.kwargs["use_orig_params"]
    assert strategy._activation_checkpointing_kwargs


def test_a_cpu_run_is_refused_in_one_line():
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=XLabFSDP(), logger=False, max_steps=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(XLabError, match="FSDP strategy needs CUDA GPUs.*ddp"):
        trainer.strategy.setup_environment()
