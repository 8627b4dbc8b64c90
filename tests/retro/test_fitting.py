"""RETRO-fitting: a RetroModel's decoder started from a trained plain decoder (`init_from`), frozen,
starting with exactly the decoder's logits; only the retrieval parts train."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from tests.helpers import retro_data, xlab_data
from xlab.common.errors import XLabError
from xlab.interop.export import export_checkpoint_
from xlab.models import XLabModel
from xlab.retro import RetroModel

SHAPE = dict(max_len=16, n_layer=3, n_head=2, n_embd=32)
RETRIEVAL = dict(chunk_size=4, enc_dim=16, enc_depth=1, dec_cross_attn_layers=[1, 2])
DECODER_KIND = dict(positions="rotary", norm="rmsnorm", bias=False)


def trainer(steps: int) -> L.Trainer:
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, limit_val_batches=1, num_sanity_val_steps=0,
                     enable_model_summary=False)


@pytest.fixture(scope="module")
def decoder(corpus_dir, tmp_path_factory):
    """(checkpoint, model) of a plain XLabModel decoder trained two steps on the test corpus."""
    root = tmp_path_factory.mktemp("decoder")
    data = xlab_data(corpus_dir, root)
    torch.manual_seed(0)
    model = XLabModel(vocab_size=400, **SHAPE, **DECODER_KIND)
    run = trainer(2)
    run.fit(model, data)
    run.save_checkpoint(root / "decoder.ckpt")
    return root / "decoder.ckpt", model.eval()


def decoder_and_retrieval(model: RetroModel) -> tuple[dict, dict]:
    """Copies of the decoder's weights and of the retrieval parts', by name."""
    mine = {id(p) for p in model.retrieval_parameters()}
    parts = ({}, {})
    for name, param in model.named_parameters():
        parts[id(param) in mine][name] = param.detach().clone()
    return parts


def test_fitted_model_starts_as_its_decoder_and_trains_only_retrieval(decoder, corpus_dir, tmp_path):
    ckpt, plain = decoder
    data = retro_data(corpus_dir, tmp_path)
    model = RetroModel(vocab_size=data.vocab_size, **SHAPE, **RETRIEVAL, cca_zero_init=True, init_from=str(ckpt),
                       warmup_steps=0)
    batch = next(iter(data.train_dataloader()))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch["input_ids"], batch["retrieved"]), plain(batch["input_ids"]))
    assert model.hparams.init_from is None and model.hparams.freeze_decoder
    assert model.hparams.norm_eps == plain.hparams.norm_eps
    groups = model.parameter_groups(0.1)
    grouped = sorted(id(p) for group in groups for p in group["params"])
    assert grouped == sorted(id(p) for p in model.retrieval_parameters())  # exactly the trainable parts
    assert grouped == sorted(id(p) for p in model.parameters() if p.requires_grad)

    frozen, retrieval = decoder_and_retrieval(model)
    trainer(3).fit(model.train(), data)
    after_frozen, after_retrieval = decoder_and_retrieval(model)
    assert all(torch.equal(frozen[name], after_frozen[name]) for name in frozen)
    assert [name for name in retrieval if torch.equal(retrieval[name], after_retrieval[name])] == []


def test_an_export_starts_the_same_decoder(decoder, tmp_path):
    ckpt, plain = decoder
    folder = export_checkpoint_(ckpt, tmp_path / "export")
    model = RetroModel(vocab_size=400, **SHAPE, **RETRIEVAL, cca_zero_init=True, init_from=str(folder)).eval()
    ids, retrieved = torch.randint(4, 400, (2, 16)), torch.randint(4, 400, (2, 4, 2, 8))
    with torch.no_grad():
        assert torch.equal(model(ids, retrieved), plain(ids))


def test_a_retro_checkpoint_gives_its_decoder_only(corpus_dir, tmp_path):
    data = retro_data(corpus_dir, tmp_path, retrieval="off")
    torch.manual_seed(0)
    source = RetroModel(vocab_size=data.vocab_size, **SHAPE, **RETRIEVAL)
    run = trainer(2)
    run.fit(source, data)
    run.save_checkpoint(tmp_path / "plain.ckpt")
    torch.manual_seed(1)  # other retrieval weights: only the decoder comes over
    model = RetroModel(vocab_size=data.vocab_size, **SHAPE, **{**RETRIEVAL, "dec_cross_attn_layers": [2]},
                       init_from=str(tmp_path / "plain.ckpt")).eval()
    ids = torch.randint(4, 400, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(ids), source.eval()(ids))
    assert not torch.equal(model.enc_in.weight, source.enc_in.weight)


def test_a_fitted_checkpoint_reloads_frozen_without_its_source(decoder, corpus_dir, tmp_path):
    ckpt, _ = decoder
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(ckpt.read_bytes())
    data = retro_data(corpus_dir, tmp_path)
    model = RetroModel(vocab_size=data.vocab_size, **SHAPE, **RETRIEVAL, init_from=str(copy))
    run = trainer(1)
    run.fit(model, data)
    run.save_checkpoint(tmp_path / "fitted.ckpt")
    copy.unlink()
    loaded = RetroModel.load_from_checkpoint(tmp_path / "fitted.ckpt").eval()
    assert sorted(id(p) for p in loaded.parameters() if p.requires_grad) == sorted(
        id(p) for p in loaded.retrieval_parameters())
    ids, retrieved = torch.randint(4, 400, (2, 16)), torch.randint(4, 400, (2, 4, 2, 8))
    with torch.no_grad():
        assert torch.equal(loaded(ids, retrieved), model.eval()(ids, retrieved))


def test_a_checkpoint_from_before_fitting_loads_as_it_was(corpus_dir, tmp_path):
    data = retro_data(corpus_dir, tmp_path)
    torch.manual_seed(0)
    model = RetroModel(vocab_size=data.vocab_size, **SHAPE, **RETRIEVAL)
    run = trainer(1)
    run.fit(model, data)
    run.save_checkpoint(tmp_path / "retro.ckpt")
    saved = torch.load(tmp_path / "retro.ckpt", weights_only=True)
    for name in ("init_from", "freeze_decoder", "norm_eps"):  # what a checkpoint of before lacks
        del saved["hyper_parameters"][name]
    torch.save(saved, tmp_path / "old.ckpt")
    loaded = RetroModel.load_from_checkpoint(tmp_path / "old.ckpt").eval()
    assert all(p.requires_grad for p in loaded.parameters()) and loaded.ln_f.eps is None
    ids, retrieved = torch.randint(4, 400, (2, 16)), torch.randint(4, 400, (2, 4, 2, 8))
    with torch.no_grad():
        assert torch.equal(loaded(ids, retrieved), model.eval()(ids, retrieved))


def test_a_decoder_that_does_not_fit_is_one_line_error(decoder, tmp_path):
    ckpt, _ = decoder

    def fails(match, **settings):
        with pytest.raises(XLabError, match=match) as error:
            RetroModel(**({"vocab_size": 400, **SHAPE, **RETRIEVAL} | settings))
        assert "\n" not in str(error.value)

    fails(r"model n_embd=64 but the decoder in init_from .* has n_embd=32: set model n_embd 32",
          n_embd=64, init_from=str(ckpt))
    fails(r"model vocab_size=500 .* has vocab_size=400: use the data settings", vocab_size=500, init_from=str(ckpt))
    fails(r"model norm_eps=0.001 .* remove norm_eps", norm_eps=1e-3, init_from=str(ckpt))
    fails(r"init_from .*missing.ckpt does not exist", init_from=str(tmp_path / "missing.ckpt"))
    torch.manual_seed(0)
    learned = XLabModel(vocab_size=400, **SHAPE)  # GPT-2's kind: learned positions, LayerNorm, biases
    torch.save({"state_dict": learned.state_dict(), "hyper_parameters": dict(learned.hparams)}, tmp_path / "gpt2.ckpt")
    fails(r"has positions='learned', a RetroModel's decoder has positions='rotary': train the decoder with model "
          r"positions rotary", init_from=str(tmp_path / "gpt2.ckpt"))
    torch.save({"state_dict": {}, "xlab_model_class": "xlab.memory.model.MemoryGPT2"}, tmp_path / "memory.ckpt")
    fails(r"holds a xlab.memory.model.MemoryGPT2: a RetroModel's decoder starts from an XLabModel or a RetroModel",
          init_from=str(tmp_path / "memory.ckpt"))
