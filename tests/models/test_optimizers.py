"""The optimizer settings: every trainable parameter in exactly one group for every model class, Muon
only on hidden matrices, the rates each role asks for, and a Muon run that resumes exactly."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import transformers
from torch import nn
from torch.utils.data import DataLoader

from xlab.captions.model import CaptionModel
from xlab.common.errors import XLabError
from xlab.memory.model import MemoryGPT2
from xlab.models import XLabModel
from xlab.models.lm import LanguageModel
from xlab.models.optimizers import MuonWithAdamW, build_optimizer
from xlab.retro.model import RetroModel

SMALL = dict(vocab_size=50, max_len=16, n_layer=2, n_head=2, n_embd=32)


def gpt2_folder_(folder) -> str:
    config = transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return str(folder)


def retro_decoder_(path) -> str:
    """A .ckpt of an XLabModel of RetroModel's decoder kind, to RETRO-fit."""
    decoder = XLabModel(**SMALL, positions="rotary", norm="rmsnorm", bias=False)
    torch.save({"state_dict": decoder.state_dict(), "hyper_parameters": dict(decoder.hparams)}, path)
    return str(path)


def models(tmp_path, **optimizer) -> dict[str, LanguageModel]:
    torch.manual_seed(0)
    return {
        "xlab tied": XLabModel(**SMALL, **optimizer),
        "xlab untied": XLabModel(**SMALL, tie_weights=False, positions="learned", **optimizer),
        "memory": MemoryGPT2(**SMALL, memory_size=64, memory_device="cpu", **optimizer),
        "retro": RetroModel(**SMALL, chunk_size=4, enc_dim=16, enc_depth=1, **optimizer),
        "caption": CaptionModel(**{**SMALL, "max_len": 40}, image_size=16, prefix_grid=2, conv_channels=8, **optimizer),
        "from hf": XLabModel(**SMALL, init_from=gpt2_folder_(tmp_path / "gpt2"), **optimizer),
        "retro fitted": RetroModel(**SMALL, chunk_size=4, enc_dim=16, enc_depth=1, **optimizer,
                                   init_from=retro_decoder_(tmp_path / "decoder.ckpt")),  # a frozen decoder
    }


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_groups_hold_every_trainable_parameter_exactly_once(tmp_path, optimizer):
    for name, model in models(tmp_path, optimizer=optimizer).items():
        groups = model.parameter_groups(0.1)
        grouped = [id(p) for group in groups for p in group["params"]]
        trainable = [id(p) for p in model.parameters() if p.requires_grad]
        assert sorted(grouped) == sorted(trainable), name
        embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        head = id(model.output_head().weight)
        for group in groups:
            if group["optimizer"] == "muon":
                assert all(p.dim() == 2 and id(p) not in embeddings and id(p) != head for p in group["params"]), name
        assert any(g["optimizer"] == "muon" for g in groups) == (optimizer == "muon"), name
        build_optimizer(groups, (0.9, 0.95), 0.95, fused=False)  # torch accepts the groups as they are


def test_adamw_keeps_the_two_groups_of_before():
    model = XLabModel(**SMALL)
    decay, no_decay = model.parameter_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    embeddings = (model.transformer.wte.weight, model.transformer.wpe.weight)
    assert [id(p) for p in decay["params"]] == [id(p) for p in model.parameters()
                                                 if p.dim() >= 2 and all(p is not e for e in embeddings)]


def test_each_role_gets_its_own_rate():
    model = XLabModel(**SMALL, tie_weights=False, optimizer="muon", learning_rate=1e-3, muon_lr=0.02,
                      embedding_lr=0.3, head_lr=0.004)
    rate = {id(p): group["lr"] for group in model.parameter_groups(0.1) for p in group["params"]}
    assert rate[id(model.transformer.wte.weight)] == 0.3
    assert rate[id(model.lm_head.weight)] == 0.004
    assert rate[id(model.transformer.h[0].attn.c_attn.weight)] == 0.02
    assert rate[id(model.transformer.h[0].ln_1.weight)] == 1e-3


def test_memory_maps_keep_their_scaled_rate_on_adamw_under_muon():
    model = MemoryGPT2(**SMALL, memory_size=64, memory_device="cpu", optimizer="muon", memory_lr_scale=0.1)
    maps = {id(p) for p in model.access.cache_maps()}
    for group in model.parameter_groups(0.1):
        if any(id(p) in maps for p in group["params"]):
            assert group["optimizer"] == "adamw" and group["lr"] == pytest.approx(model.hparams.learning_rate * 0.1)
            assert all(id(p) in maps for p in group["params"])


class Bigram(LanguageModel):
    """An embedding and a tied head: no hidden matrix for Muon."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.wte = nn.Embedding(self.hparams.vocab_size, 8)
        self.lm_head = nn.Linear(8, self.hparams.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, input_ids):
        return self.lm_head(self.wte(input_ids))


def test_bad_optimizer_settings_are_one_line_refusals():
    with pytest.raises(XLabError, match="optimizer=muon .* no trainable 2-D hidden weights"):
        Bigram(vocab_size=20, optimizer="muon").parameter_groups(0.1)
    with pytest.raises(XLabError, match="head_lr"):
        XLabModel(**SMALL, head_lr=0.01).parameter_groups(0.1)
    with pytest.raises(XLabError, match="cooldown_fraction"):
        XLabModel(**SMALL, cooldown_fraction=1.5)


def batches():
    """One batch an epoch: a resumed run sees what the uninterrupted one saw (epochs end at every step)."""
    tokens = torch.randint(0, 50, (4, 17), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": t[:-1], "labels": t[1:], "num_bytes": torch.tensor(16)} for t in tokens]


def fit(model, tmp_path, steps: int, ckpt_path=None) -> L.Trainer:
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, enable_checkpointing=False,
                        gradient_clip_val=1.0)
    trainer.fit(model, DataLoader(batches(), batch_size=4), ckpt_path=ckpt_path)
    return trainer


def test_a_muon_run_with_a_trapezoid_resumes_exactly(tmp_path):
    settings = dict(**SMALL, optimizer="muon", lr_schedule="trapezoid", warmup_steps=1, lr_decay_steps=5,
                    learning_rate=0.01)
    torch.manual_seed(0)
    whole = XLabModel(**settings)
    trainer = fit(whole, tmp_path / "whole", 5)
    assert isinstance(trainer.optimizers[0], MuonWithAdamW)
    torch.manual_seed(0)
    first = XLabModel(**settings)
    fit(first, tmp_path / "first", 3).save_checkpoint(tmp_path / "three.ckpt")
    torch.manual_seed(1)  # the checkpoint decides the weights, not this seed
    fit(second := XLabModel(**settings), tmp_path / "second", 5, ckpt_path=tmp_path / "three.ckpt")
    for a, b in zip(whole.parameters(), second.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_adamw_is_fused_on_a_cpu_in_full_precision():
    """The fused kernels, measured faster on a CPU (lm.py); a bf16-mixed run keeps foreach kernels,
    which tests/test_precision.py trains with gradient clipping."""
    model = XLabModel(vocab_size=48, max_len=16, n_layer=1, n_head=2, n_embd=32, lr_decay_steps=10)
    assert model.configure_optimizers()["optimizer"].defaults["fused"] is True
