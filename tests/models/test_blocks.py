"""The shared transformer blocks: the KV cache, rotary and sinusoidal positions, default position
ids, norms, attention masks, attention and MLP against the obvious computation, GPT-2's init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xlab.models import XLabModel
from xlab.models.blocks import (MLP, CausalSelfAttention, KVCache, Rotary, attention_mask, init_gpt2_weights, make_norm,
                                position_ids, sinusoidal_table)
from xlab.retro import RetroModel


def test_kv_cache_writes_after_what_it_holds_and_refuses_overflow():
    cache = KVCache(n_layer=2, batch_size=3, n_head=2, max_len=5, head_dim=4)
    k1, v1 = torch.randn(3, 2, 3, 4), torch.randn(3, 2, 3, 4)
    k, v = cache.update(1, k1, v1)
    assert torch.equal(k, k1) and torch.equal(v, v1)
    cache.advance(3)
    k2, v2 = torch.randn(3, 2, 2, 4), torch.randn(3, 2, 2, 4)
    k, v = cache.update(1, k2, v2)
    assert torch.equal(k, torch.cat([k1, k2], 2)) and torch.equal(v, torch.cat([v1, v2], 2))
    cache.advance(2)
    with pytest.raises(ValueError, match="holds 5 positions"):
        cache.update(0, k2[:, :, :1], v2[:, :, :1])
    cache.reorder(torch.tensor([2, 2, 0]))
    assert torch.equal(cache.k[1, :, :, :3], k1[[2, 2, 0]]) and cache.batch_size == 3
    cache.reset()
    assert cache.length == 0 and cache.max_len == 5


def test_rotary_scores_depend_on_relative_position_only():
    rotary = Rotary(head_dim=8, max_len=32)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m: int, n: int) -> float:
        return float((rotary(q, torch.tensor([[m]])) * rotary(k, torch.tensor([[n]]))).sum())

    assert score(7, 3) == pytest.approx(score(20, 16), abs=1e-5)
    assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-3)
    torch.testing.assert_close(rotary(q, torch.tensor([[0]])), q)  # position 0 is no rotation
    torch.testing.assert_close(rotary(q, torch.tensor([[9]])).norm(), q.norm())  # a rotation keeps lengths
    assert "cos" not in rotary.state_dict()  # derived from settings, not saved


def test_sinusoidal_table_is_the_transformer_s():
    table = sinusoidal_table(50, 6)
    for pos in (0, 1, 37):
        for i in range(3):
            angle = pos / 10000 ** (2 * i / 6)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)
    assert sinusoidal_table(4, 5).shape == (4, 5)  # an odd width drops the last cosine


def test_position_ids_continue_the_cache_and_refuse_overflow():
    ids = torch.zeros(2, 3, dtype=torch.long)
    assert position_ids(ids, 4, 8).tolist() == [[4, 5, 6], [4, 5, 6]]
    given = torch.tensor([[0, 0, 1], [0, 1, 2]])
    assert position_ids(ids, 0, 8, given) is given
    with pytest.raises(ValueError, match="9 tokens exceeds the model's max_len=8"):
        position_ids(ids, 6, 8)


def test_norms():
    x = torch.randn(4, 16) * 3 + 1
    rms = make_norm("rmsnorm", 16, bias=True)
    torch.testing.assert_close(rms(x).pow(2).mean(-1), torch.ones(4), atol=1e-3, rtol=0)
    layer = make_norm("layernorm", 16, bias=False)
    assert layer.bias is None
    torch.testing.assert_close(layer(x).mean(-1), torch.zeros(4), atol=1e-5, rtol=0)


def test_attention_mask_hides_the_future_and_the_pads():
    assert attention_mask(5, 0, None, torch.device("cpu")) is None  # plain causal: SDPA's own
    assert attention_mask(1, 4, None, torch.device("cpu")) is None  # one new token sees everything
    padding = torch.tensor([[False, False, True, True, True]])
    mask = attention_mask(2, 3, padding, torch.device("cpu"))[0, 0]  # queries at positions 3 and 4
    assert mask.tolist() == [[False, False, True, True, False], [False, False, True, True, True]]
    all_pads = attention_mask(2, 0, torch.tensor([[False, True]]), torch.device("cpu"))[0, 0]
    assert all_pads.tolist() == [[True, False], [False, True]]  # a lone pad sees itself, never NaN


@pytest.mark.parametrize("rotary", [None, Rotary(8, 16)])
def test_attention_is_causal_softmax_attention(rotary):
    torch.manual_seed(0)
    attn = CausalSelfAttention(n_embd=16, n_head=2, dropout=0.0, bias=True, rotary=rotary).eval()
    x = torch.randn(2, 6, 16)
    positions = torch.arange(6).expand(2, 6)
    q, k, v = attn.c_attn(x).split(16, dim=2)
    q, k, v = (t.view(2, 6, 2, 8).transpose(1, 2) for t in (q, k, v))
    if rotary is not None:
        q, k = rotary(q, positions), rotary(k, positions)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    scores = scores.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    expected = attn.c_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 6, 16))
    torch.testing.assert_close(attn(x, positions, None, None, 0), expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="divisible"):
        CausalSelfAttention(n_embd=10, n_head=4, dropout=0.0, bias=True)


def test_mlp_activations():
    torch.manual_seed(0)
    x = torch.randn(3, 8)
    swiglu = MLP(8, 12, "swiglu", 0.0, bias=False)
    assert swiglu.c_fc.out_features == 24  # gate and value in one matmul
    gate, value = swiglu.c_fc(x).chunk(2, dim=-1)
    torch.testing.assert_close(swiglu(x), swiglu.c_proj(F.silu(gate) * value))
    gelu = MLP(8, 12, "gelu", 0.0, bias=True)
    torch.testing.assert_close(gelu(x), gelu.c_proj(F.gelu(gelu.c_fc(x), approximate="tanh")))


def old_rule(model: nn.Module, n_layer: int) -> None:
    """The initialisation XLabModel had inlined, written out again: the new helper must match it."""

    def init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    model.apply(init)
    for name, param in model.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))


@pytest.mark.parametrize("build", [
    lambda: XLabModel(vocab_size=50, max_len=16, n_layer=3, n_head=2, n_embd=16, tie_weights=False),
    lambda: XLabModel(vocab_size=50, max_len=16, n_layer=2, n_head=2, n_embd=16, activation="swiglu", bias=False),
    lambda: RetroModel(vocab_size=50, max_len=16, n_layer=3, n_head=2, n_embd=16, chunk_size=4, enc_dim=8),
])
def test_gpt2_init_is_the_old_rule_exactly(build):
    model, reference = build(), build()
    n_layer = model.hparams.n_layer
    torch.manual_seed(3)
    init_gpt2_weights(model, n_layer)
    torch.manual_seed(3)
    old_rule(reference, n_layer)
    mine, old = model.state_dict(), reference.state_dict()
    assert mine.keys() == old.keys()
    for key in mine:
        assert torch.equal(mine[key], old[key]), key


def test_gpt2_init_scales():
    torch.manual_seed(0)
    model = XLabModel(vocab_size=500, max_len=64, n_layer=8, n_head=4, n_embd=64)
    projection = model.transformer.h[0].attn.c_proj
    assert projection.weight.std().item() == pytest.approx(0.02 / 4, rel=0.1)
    assert model.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert not projection.bias.any() and not model.transformer.h[3].mlp.c_fc.bias.any()
