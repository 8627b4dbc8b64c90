"""xlab/models/hf_weights.py: Hugging Face GPT-2 and Llama-family (Llama, Qwen3, Arcee) settings and weights <-> XLabModel, both
ways. XLab -> HF -> XLab gives back the same settings and the same tensors bit for bit; HF -> XLab
-> HF gives back the folder's own tensors; the XLab model built from a transformers model's weights
gives its logits; sharded safetensors folders read as one state; every setting neither side can
express is refused by name."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from xlab.common.errors import XLabError
from xlab.models import XLabModel
from xlab.models.hf_weights import (hf_config_from_xlab, hf_kind, hf_state_from_xlab, read_hf_config, read_hf_weights,
                                    xlab_settings_from_hf, xlab_state_from_hf)
from xlab.models.pretrained import ARCHITECTURE

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

VOCAB = 50
SHAPES = {
    "gpt2": dict(positions="learned", norm="layernorm", activation="gelu", bias=True, tie_weights=True),
    "gpt2-untied": dict(positions="learned", norm="layernorm", activation="gelu", bias=True, tie_weights=False,
                        ffn_dim=48, norm_eps=1e-6),
    "llama": dict(positions="rotary", norm="rmsnorm", activation="swiglu", bias=False, tie_weights=False,
                  rope_base=500.0, norm_eps=1e-6),
    "llama-gqa": dict(positions="rotary", norm="rmsnorm", activation="swiglu", bias=False, tie_weights=True,
                      n_kv_head=1),
    "llama-bias": dict(positions="rotary", norm="rmsnorm", activation="swiglu", bias=True, tie_weights=False,
                       ffn_dim=40),
    "qwen3": dict(positions="rotary", norm="rmsnorm", activation="swiglu", bias=False, tie_weights=True,
                  qk_norm=True, n_kv_head=2, norm_eps=1e-6),
    "arcee": dict(positions="rotary", norm="rmsnorm", activation="relu2", bias=False, tie_weights=False),
    "arcee-bias": dict(positions="rotary", norm="rmsnorm", activation="relu2", bias=True, tie_weights=True,
                       ffn_dim=40),
}


def xlab_model(shape: str, seed: int = 0) -> XLabModel:
    torch.manual_seed(seed)
    model = XLabModel(vocab_size=VOCAB, max_len=24, n_layer=2, n_head=4, n_embd=32, **SHAPES[shape]).eval()
    with torch.no_grad():  # random biases and norm weights too, so that a swapped one shows
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model


def tokens(batch: int = 2, length: int = 24) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_xlab_to_hf_and_back_is_exact(shape):
    model = xlab_model(shape)
    config, state = model.hf_export()
    assert config["model_type"] == hf_kind(model.hparams) == shape.split("-")[0]
    assert json.loads(json.dumps(config)) == config  # plain JSON, as config.json holds it
    settings = xlab_settings_from_hf(config, "the test's folder")
    ffn = model.transformer.h[0].mlp.c_proj.in_features
    wanted = {name: model.hparams[name] for name in ARCHITECTURE} | dict(vocab_size=VOCAB, max_len=24, ffn_dim=ffn)
    if shape.startswith("gpt2"):
        wanted["rope_base"] = 10000.0  # GPT-2 has no rotary frequencies to carry
    assert settings == wanted
    tied = bool(model.hparams.tie_weights)
    assert ("lm_head.weight" in state) == (not tied)  # a tied head is written once
    back = XLabModel(**settings).eval()
    back.load_state_dict(xlab_state_from_hf(config, state, settings["tie_weights"]), strict=True)
    mine, theirs = model.state_dict(), back.state_dict()
    assert mine.keys() == theirs.keys()
    for name in mine:
        assert torch.equal(mine[name], theirs[name]), name
    assert (back.lm_head.weight is back.transformer.wte.weight) == tied
    with torch.no_grad():
        assert torch.equal(back(tokens()), model(tokens()))


@pytest.mark.parametrize("shape", ["gpt2", "llama", "llama-gqa", "llama-bias", "qwen3", "arcee", "arcee-bias"])
def test_exported_weights_give_transformers_the_same_logits(shape):
    model = xlab_model(shape)
    config, state = model.hf_export()
    hf_config = transformers.AutoConfig.for_model(**config)
    hf = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all(name == "lm_head.weight" for name in missing)  # tied: the embedding
    hf.tie_weights()
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens()).logits, model(tokens()), atol=1e-5, rtol=1e-5)


def hf_models():
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2, initializer_range=0.2)).eval()
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False, initializer_range=0.2,
        rope_theta=1000.0)).eval()
    qwen3 = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=32, tie_word_embeddings=True,
        initializer_range=0.2)).eval()
    arcee = transformers.ArceeForCausalLM(transformers.ArceeConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        head_dim=8, max_position_embeddings=32, tie_word_embeddings=False, initializer_range=0.2,
        bos_token_id=1, eos_token_id=2)).eval()
    with torch.no_grad():  # the query/key norms start at one: make a swapped one show
        for name, param in qwen3.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                param.add_(torch.randn_like(param) * 0.3)
    return {"gpt2": gpt2, "llama": llama, "qwen3": qwen3, "arcee": arcee}


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen3", "arcee"])
def test_hf_to_xlab_gives_its_logits_and_maps_back_to_its_own_tensors(kind):
    hf = hf_models()[kind]
    config = hf.config.to_dict()
    settings = xlab_settings_from_hf(config, "folder")
    hf_state = {k: v for k, v in hf.state_dict().items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    state = xlab_state_from_hf(config, hf_state, settings["tie_weights"])
    model = XLabModel(**settings).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens()), hf(tokens()).logits, atol=1e-5, rtol=1e-5)
    if kind == "gpt2":  # Conv1D projections are stored (in, out): transposed, every other tensor as it is
        assert torch.equal(state["transformer.h.1.attn.c_attn.weight"], hf_state["transformer.h.1.attn.c_attn.weight"].t())
        assert torch.equal(state["transformer.h.1.ln_2.bias"], hf_state["transformer.h.1.ln_2.bias"])
        assert settings["tie_weights"] and state["lm_head.weight"] is state["transformer.wte.weight"]
    elif kind == "qwen3":  # the per-head query/key norms carried as they are
        assert settings["qk_norm"] and settings["activation"] == "swiglu"
        assert torch.equal(state["transformer.h.1.attn.k_norm.weight"], hf_state["model.layers.1.self_attn.k_norm.weight"])
    elif kind == "arcee":  # no gate: up is the whole first projection
        assert settings["activation"] == "relu2" and not settings["qk_norm"]
        assert torch.equal(state["transformer.h.1.mlp.c_fc.weight"], hf_state["model.layers.1.mlp.up_proj.weight"])
    else:  # q, k, v stacked (grouped: two key/value heads of 8), gate before up
        q, k, v = (hf_state[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv")
        assert (q.shape[0], k.shape[0]) == (32, 16) and settings["n_kv_head"] == 2
        assert torch.equal(state["transformer.h.1.attn.c_attn.weight"], torch.cat([q, k, v]))
        gate, up = hf_state["model.layers.1.mlp.gate_proj.weight"], hf_state["model.layers.1.mlp.up_proj.weight"]
        assert torch.equal(state["transformer.h.1.mlp.c_fc.weight"], torch.cat([gate, up]))
        assert settings["rope_base"] == 1000.0 and not settings["tie_weights"]
    back = hf_state_from_xlab(kind, model.state_dict(), settings["n_layer"], settings["tie_weights"])
    expected = {k: v for k, v in hf_state.items() if not (settings["tie_weights"] and k == "lm_head.weight")}
    assert back.keys() == expected.keys()
    for name in expected:
        assert torch.equal(back[name], expected[name]), name


def test_gpt2_weights_stored_under_gpt2models_names_get_the_prefix_and_a_tied_head():
    hf = hf_models()["gpt2"]
    config = hf.config.to_dict()
    bare = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    bare["h.0.attn.bias"] = torch.ones(1, 1, 32, 32)  # an old transformers' causal-mask buffer
    state = xlab_state_from_hf(config, bare, tied=True)
    assert "transformer.h.0.attn.bias" not in state and "h.0.ln_1.weight" not in state
    assert torch.equal(state["transformer.h.0.ln_1.weight"], bare["h.0.ln_1.weight"])
    assert state["lm_head.weight"] is state["transformer.wte.weight"]
    XLabModel(**xlab_settings_from_hf(config, "folder")).load_state_dict(state, strict=True)


def test_a_sharded_safetensors_folder_reads_as_one_state(tmp_path):
    hf = hf_models()["llama"]
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, part in shards.items():
        save_file({name: state[name] for name in part}, tmp_path / shard)
    index = {"metadata": {}, "weight_map": {name: shard for shard, part in shards.items() for name in part}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    assert read_hf_config(tmp_path)["model_type"] == "llama"
    read = read_hf_weights(tmp_path)
    assert read.keys() == state.keys() and all(torch.equal(read[k], state[k]) for k in state)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(XLabError, match=r"missing the weight shards model-00002-of-00002.safetensors: on a machine"):
        read_hf_weights(tmp_path)


def test_a_folder_with_broken_config_json_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    save_file({"x": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(XLabError, match=r"config.json is not valid JSON"):
        read_hf_config(tmp_path)


def test_llama_weights_with_a_missing_tensor_are_refused_by_name():
    hf = hf_models()["llama"]
    state = dict(hf.state_dict())
    del state["model.layers.1.self_attn.o_proj.weight"]
    with pytest.raises(XLabError, match=r"the Llama weights lack model.layers.1.self_attn.o_proj.weight"):
        xlab_state_from_hf(hf.config.to_dict(), state, tied=False)


GPT2 = dict(model_type="gpt2", vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=32)
LLAMA = dict(model_type="llama", vocab_size=VOCAB, num_hidden_layers=1, num_attention_heads=2, hidden_size=32,
             intermediate_size=48)


@pytest.mark.parametrize("config,message", [
    (GPT2 | dict(activation_function="relu"), r"cannot express activation_function='relu' \(only the tanh GELU\)"),
    (GPT2 | dict(scale_attn_by_inverse_layer_idx=True), "cannot express non-standard attention scaling"),
    (GPT2 | dict(scale_attn_weights=False), "cannot express non-standard attention scaling"),
    (GPT2 | dict(add_cross_attention=True), "cannot express cross-attention"),
    (LLAMA | dict(head_dim=8), r"cannot express head_dim=8 other than hidden_size / num_attention_heads"),
    (LLAMA | dict(hidden_act="gelu"), r"cannot express hidden_act='gelu' \(only silu"),
    (LLAMA | dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "cannot express rope scaling"),
    (LLAMA | dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
     r"cannot express rope scaling \{'rope_type': 'yarn', 'factor': 4.0\}"),
    (LLAMA | dict(attention_bias=True), r"cannot express biases in attention but not in the MLP \(or the reverse\)"),
    (LLAMA | dict(model_type="arcee", hidden_act="silu"), r"cannot express hidden_act='silu' \(only relu2\)"),
    (LLAMA | dict(model_type="qwen3", attention_bias=True), r"cannot express biases in attention but not in the MLP"),
    (LLAMA | dict(model_type="qwen3", use_sliding_window=True), r"cannot express sliding-window attention"),
])
def test_hf_settings_xlab_cannot_express_are_refused_by_name(config, message):
    with pytest.raises(XLabError, match=f"^the folder: XLabModel {message}"):
        xlab_settings_from_hf(config, "the folder")


def test_two_problems_are_named_together():
    with pytest.raises(XLabError, match=r"cannot express hidden_act='relu' \(only silu, i.e. SwiGLU\), biases"):
        xlab_settings_from_hf(LLAMA | dict(hidden_act="relu", mlp_bias=True), "f")


XLAB_GPT2 = dict(positions="learned", norm="layernorm", activation="gelu", bias=True, n_head=4, n_kv_head=None)
XLAB_LLAMA = dict(positions="rotary", norm="rmsnorm", activation="swiglu", bias=False, n_head=4)


def test_hf_kind_names_the_architecture_or_the_setting_neither_has():
    assert hf_kind(XLAB_GPT2) == "gpt2" and hf_kind(XLAB_GPT2 | dict(n_kv_head=4)) == "gpt2"
    assert hf_kind(XLAB_LLAMA) == "llama" and hf_kind(XLAB_LLAMA | dict(bias=True, n_kv_head=2)) == "llama"
    assert hf_kind(XLAB_LLAMA | dict(qk_norm=True)) == "qwen3" and hf_kind(XLAB_LLAMA | dict(activation="relu2")) == "arcee"
    refusals = [
        (XLAB_GPT2 | dict(norm_position="post"), r"norm_position='post' cannot be exported: GPT-2 and Llama are pre-norm"),
        (XLAB_GPT2 | dict(positions="sinusoidal"), r"positions='sinusoidal' cannot be exported"),
        (XLAB_GPT2 | dict(n_kv_head=2), r"n_kv_head=2 cannot be exported as GPT-2"),
        (XLAB_GPT2 | dict(norm="rmsnorm", bias=False),
         r"with positions='learned' it would be GPT-2, which cannot express norm='rmsnorm' \(needs 'layernorm'\), "
         r"bias=False \(needs True\)\.$"),
        (XLAB_LLAMA | dict(activation="gelu"),
         r"with positions='rotary' it would be Llama, which cannot express activation='gelu' \(needs 'swiglu'\)\.$"),
        (XLAB_GPT2 | dict(qk_norm=True), r"^qk_norm=True cannot be exported as GPT-2"),
        (XLAB_LLAMA | dict(qk_norm=True, activation="relu2"), r"^qk_norm=True with activation='relu2' cannot be exported"),
        (XLAB_LLAMA | dict(qk_norm=True, bias=True), r"^qk_norm=True with bias=True cannot be exported: Qwen3"),
    ]
    for hp, message in refusals:
        with pytest.raises(XLabError, match=message):
            hf_kind(hp)
    with pytest.raises(XLabError, match="which cannot express norm='rmsnorm'"):
        hf_config_from_xlab(XLAB_GPT2 | dict(norm="rmsnorm", vocab_size=VOCAB, tie_weights=True, max_len=8,
                                             n_layer=1, n_embd=32), 128)
