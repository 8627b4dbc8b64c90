"""FSDP for the big recipe: what a CPU can check. Lightning runs FSDP on CUDA only, so the
sharded training itself and its sharded checkpoints are exercised by bench/gpu_check.py."""

from __future__ import annotations

import lightning as L
import pytest
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

from tests.helpers import CONF
from xlab.cli import main
from xlab.common.errors import XLabError
from xlab.memory import MemoryGPT2
from xlab.models import XLabModel
from xlab.models.blocks import Block
from xlab.retro import RetroModel
from xlab.retro.model import DecoderLayer, EncoderLayer
from xlab.strategies import XLabFSDP


def test_the_recipe_takes_the_fsdp_strategy_from_the_command_line(capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "-c", str(CONF / "xlab.yaml"), "--trainer.strategy", "xlab.strategies.XLabFSDP",
              "--trainer.strategy.sharding_strategy", "SHARD_GRAD_OP", "--print_config"])
    assert done.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: xlab.strategies.XLabFSDP" in printed and "sharding_strategy: SHARD_GRAD_OP" in printed
    assert "state_dict_type: sharded" in printed


@pytest.mark.parametrize("model, blocks", [
    (lambda: XLabModel(vocab_size=32, max_len=8, n_layer=1, n_head=2, n_embd=16), {Block}),
    (lambda: RetroModel(vocab_size=32, max_len=8, n_layer=2, n_head=2, n_embd=16, chunk_size=4, enc_dim=16,
                        enc_depth=1), {DecoderLayer, EncoderLayer}),
    (lambda: MemoryGPT2(vocab_size=32, max_len=8, n_layer=1, n_head=2, n_embd=16, memory_size=8,
                        num_search_results=2), {GPT2Block}),
])
def test_each_transformer_block_the_model_names_is_a_unit(model, blocks):
    strategy = XLabFSDP(activation_checkpointing=True)
    assert isinstance(strategy, FSDPStrategy) and "auto_wrap_policy" not in strategy.kwargs  # the model decides
    strategy.wrap_units(model())
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and set(policy._module_classes) == blocks
    assert set(strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes) == blocks
    assert strategy._state_dict_type == "sharded" and strategy.kwargs["use_orig_params"]


def test_without_activation_checkpointing_nothing_is_recomputed():
    strategy = XLabFSDP()
    strategy.wrap_units(XLabModel(vocab_size=32, max_len=8, n_layer=1, n_head=2, n_embd=16))
    assert strategy.kwargs["auto_wrap_policy"] and not strategy._activation_checkpointing_kwargs


def test_a_cpu_run_is_refused_in_one_line():
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=XLabFSDP(), logger=False, max_steps=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(XLabError, match="FSDP strategy needs CUDA GPUs.*ddp"):
        trainer.strategy.setup_environment()
