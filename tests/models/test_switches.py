"""XLabModel's recipe switches (qk_norm, relu2, logit_softcap, value_embeddings, zero_init) against a
forward pass written out with plain tensor operations, cached decoding against full recomputation
with every switch on (document masking included), and checkpoints from before the switches."""

from __future__ import annotations

import itertools
import math

import lightning
import pytest
import torch
import torch.nn.functional as F

from xlab.common.errors import XLabError
from xlab.models import XLabModel
from xlab.models.hf_weights import hf_kind

VOCAB, SOS = 40, 2
ALL_ON = dict(qk_norm=True, activation="relu2", logit_softcap=4.0, zero_init=True, value_embeddings=True,
              document_mask=True)


def model_with(seed: int = 0, **settings) -> XLabModel:
    """A tiny model whose weights are all random (gains and zero-initialised projections included),
    so that no switch can hide behind a weight that happens to be 1 or 0."""
    torch.manual_seed(seed)
    model = XLabModel(**{**dict(vocab_size=VOCAB, max_len=24, n_layer=2, n_head=2, n_embd=16, sos_id=SOS,
                                positions="rotary", norm="rmsnorm", bias=False), **settings}).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return model


def rotate(x, positions, base=10000.0):
    """Rotate-half rotary, written out: pairs (i, i + hs/2) turn by position * base^(-2i/hs)."""
    hs = x.shape[-1]
    angle = positions[:, None, :, None].float() * base ** (-torch.arange(0, hs, 2).float() / hs)  # (B, 1, T, hs/2)
    a, b = x[..., : hs // 2], x[..., hs // 2:]
    return torch.cat([a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()], dim=-1)


def rms(x, weight, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def reference_logits(model: XLabModel, ids):
    """The pre-norm rotary decoder with the switches, one operation at a time."""
    hp, t = model.hparams, model.transformer
    B, T = ids.shape
    nh, hs, eps = hp.n_head, hp.n_embd // hp.n_head, hp.norm_eps
    positions = torch.arange(T).expand(B, T)
    x = t.wte.weight[ids]
    for layer, block in enumerate(t.h):
        h = rms(x, block.ln_1.weight, eps)
        q, k, v = (h @ block.attn.c_attn.weight.T).split(hp.n_embd, dim=-1)
        if hp.value_embeddings:
            v = v + t.vte[layer].weight[ids]
        q, k, v = (z.reshape(B, T, nh, hs).transpose(1, 2) for z in (q, k, v))
        if hp.qk_norm:
            q, k = rms(q, block.attn.q_norm.weight, eps), rms(k, block.attn.k_norm.weight, eps)
        q, k = rotate(q, positions), rotate(k, positions)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hs)
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, hp.n_embd)
        x = x + y @ block.attn.c_proj.weight.T
        h = rms(x, block.ln_2.weight, eps) @ block.mlp.c_fc.weight.T
        if hp.activation == "relu2":
            h = torch.where(h > 0, h * h, 0.0)
        else:
            gate, value = h.chunk(2, dim=-1)
            h = gate * torch.sigmoid(gate) * value
        x = x + h @ block.mlp.c_proj.weight.T
    logits = rms(x, t.ln_f.weight, eps) @ model.lm_head.weight.T
    cap = hp.logit_softcap
    return logits if cap is None else cap * torch.tanh(logits / cap)


@pytest.mark.parametrize("qk_norm, activation, cap, values",
                         itertools.product([False, True], ["swiglu", "relu2"], [None, 3.0], [False, True]))
def test_each_switch_matches_the_written_out_forward(qk_norm, activation, cap, values):
    model = model_with(qk_norm=qk_norm, activation=activation, logit_softcap=cap, value_embeddings=values)
    ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference_logits(model, ids), rtol=1e-5, atol=1e-5)
        if cap is not None:
            assert model(ids).abs().max() < cap


def test_zero_init_starts_every_block_as_the_identity():
    torch.manual_seed(0)
    model = XLabModel(vocab_size=VOCAB, max_len=24, n_layer=2, n_head=2, n_embd=16, zero_init=True).eval()
    for block in model.transformer.h:
        assert not block.attn.c_proj.weight.any() and not block.mlp.c_proj.weight.any()
    ids = torch.randint(0, VOCAB, (1, 10))
    t = model.transformer
    with torch.no_grad():
        plain = model.lm_head(t.ln_f(t.wte(ids) + t.wpe(torch.arange(10))))
        torch.testing.assert_close(model(ids), plain, rtol=0, atol=0)


def test_a_cap_of_zero_is_a_one_line_refusal():
    with pytest.raises(XLabError, match="logit_softcap=0"):
        XLabModel(vocab_size=VOCAB, max_len=24, n_embd=16, n_head=2, logit_softcap=0.0)


def documents_sequence() -> torch.Tensor:
    """Rows of packed documents (sos text eos ...), the first begun before the window."""
    generator = torch.Generator().manual_seed(3)
    rows = []
    for cuts in ((5, 12), (2, 9, 17)):
        row = torch.randint(4, VOCAB, (22,), generator=generator)
        for cut in cuts:
            row[cut - 1], row[cut] = 3, SOS  # eos, then the next document's sos
        rows.append(row)
    return torch.stack(rows)


@pytest.mark.parametrize("positions", ["learned", "rotary", "sinusoidal"])
def test_document_masking_computes_each_document_as_if_alone(positions):
    model = model_with(positions=positions, document_mask=True)
    plain = model_with(positions=positions)  # the same weights (same seed), no mask
    ids = documents_sequence()
    with torch.no_grad():
        packed = model(ids)
        for row in range(len(ids)):
            starts = [0, *(ids[row] == SOS).nonzero().flatten().tolist(), ids.shape[1]]
            for begin, end in zip(starts[:-1], starts[1:]):
                alone = plain(ids[row:row + 1, begin:end])
                torch.testing.assert_close(packed[row:row + 1, begin:end], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_cached_decoding_equals_full_recomputation_with_every_switch_on(positions):
    model = model_with(positions=positions, **ALL_ON)
    ids = documents_sequence()
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(len(ids))
        steps = [model(ids[:, :7], cache=cache)] + [model(ids[:, i:i + 1], cache=cache) for i in range(7, 22)]
        torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
        # A cache reset when the window slides starts over as a full pass over the new window does.
        cache.reset()
        torch.testing.assert_close(model(ids[:, 4:], cache=cache), model(ids[:, 4:]), rtol=1e-5, atol=1e-5)
        # Beam search keeps rows in its own order: a reordered cache goes on as its rows would.
        cache = model.new_cache(len(ids))
        model(ids[:, :15], cache=cache)
        cache.reorder(torch.tensor([1, 0]))
        step = model(ids.flip(0)[:, 15:16], cache=cache)
        torch.testing.assert_close(step, full.flip(0)[:, 15:16], rtol=1e-5, atol=1e-5)


def test_beam_search_runs_with_every_switch_on():
    from xlab import inference

    model = model_with(**ALL_ON)
    prompt = torch.tensor([SOS, 5, 6, 7])
    beams = inference.sample(model, prompt, output_length=30, num_beams=3, num_samples=2)  # slides past max_len
    assert len(beams) == 2 and all(len(b) > 0 for b in beams)


def test_switches_transformers_lacks_are_refused_by_export_hf_by_name():
    for setting, value in (("logit_softcap", 30.0), ("value_embeddings", True)):
        hp = {**model_with().hparams, setting: value}
        with pytest.raises(XLabError, match=f"^{setting}="):
            hf_kind(hp)
    with pytest.raises(XLabError, match="^qk_norm=True with activation='relu2' cannot be exported"):
        hf_kind({**model_with().hparams, "qk_norm": True, "activation": "relu2"})
    assert hf_kind({**model_with().hparams, "qk_norm": True, "activation": "swiglu"}) == "qwen3"
    assert hf_kind({**model_with().hparams, "qk_norm": False, "activation": "relu2"}) == "arcee"
    assert hf_kind({**model_with().hparams, "activation": "swiglu", "zero_init": True, "document_mask": True,
                    "qk_norm": False}) == "llama"


NEW_SETTINGS = ("qk_norm", "logit_softcap", "zero_init", "value_embeddings", "document_mask", "optimizer", "muon_lr", "muon_momentum",
                "embedding_lr", "head_lr", "lr_schedule", "cooldown_fraction")


def test_a_checkpoint_from_before_the_switches_loads_with_identical_outputs(tmp_path):
    model = model_with(positions="learned", norm="layernorm", activation="gelu", bias=True)
    old = {name: value for name, value in model.hparams.items() if name not in NEW_SETTINGS}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": old,
                "pytorch-lightning_version": lightning.__version__}, path)
    loaded = XLabModel.load_from_checkpoint(path).eval()
    ids = documents_sequence()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
    assert [len(g["params"]) for g in loaded.parameter_groups(0.1)] == [len(g["params"]) for g in
                                                                       model.parameter_groups(0.1)]
