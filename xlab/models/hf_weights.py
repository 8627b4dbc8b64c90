"""Hugging Face GPT-2 and Llama-family folders <-> XLabModel settings and weights, both ways.

Reading a folder needs no `transformers`: `config.json` is plain JSON and the weights are
safetensors (a single file or shards with an index). Pickled `.bin` weights are read with
`torch.load(weights_only=True)`, which refuses anything but tensors.

The two architectures are two points of XLabModel's space:
- GPT-2: learned positions, pre-LayerNorm, tanh GELU, biases, tied head (`xlab.interop.hf_gpt2` maps the
  names: only GPT-2's Conv1D projections are transposed).
- Llama: rotary positions (rotate-half, the same convention as `blocks.Rotary`), pre-RMSNorm,
  SwiGLU, no biases. Its separate q/k/v projections are stacked into `c_attn`, and gate/up into
  `c_fc` (gate first, as `blocks.MLP` splits it).
- Two Llama variants carry XLab's recipe switches: Qwen3 is Llama with `qk_norm` (an RMS norm of
  the head size on queries and keys before the rotary, as `blocks.CausalSelfAttention`; no MLP
  biases), Arcee is Llama with a plain ReLU² MLP (`activation: relu2`: up, ReLU², down).
Grouped-query attention maps to `n_kv_head`. Anything else (rope scaling, other activations,
head sizes other than width / heads) is refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from xlab.common.errors import XLabError
from xlab.common.export_format import read_safetensors

# Projections whose GPT-2 weights are Conv1D (in, out) and must be transposed.
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# GELU variants of transformers that are the tanh approximation XLabModel uses.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")

SUPPORTED = ("gpt2", "llama", "qwen3", "arcee")
# The rotary architectures: what each expresses of XLabModel's MLP and query/key norm.
LLAMA_FAMILY = {"llama": dict(activation="swiglu", qk_norm=False, hidden_act="silu", name="Llama"),
                "qwen3": dict(activation="swiglu", qk_norm=True, hidden_act="silu", name="Qwen3"),
                "arcee": dict(activation="relu2", qk_norm=False, hidden_act="relu2", name="Arcee")}
# XLabModel's switches that no supported architecture has: off in a model read from any.
NO_XLAB_SWITCHES = dict(logit_softcap=None, value_embeddings=False)
SAVE_HINT = ("on a machine with network access run `AutoModelForCausalLM.from_pretrained(NAME)"
             ".save_pretrained(DIR)` (and the same with AutoTokenizer) and copy DIR here")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


# --- reading a folder ----------------------------------------------------------------------------
def read_hf_config(folder: Path) -> dict[str, Any]:
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append("model.safetensors (or model.safetensors.index.json and its shards, or pytorch_model.bin)")
    if missing:
        raise XLabError(f"Hugging Face folder {folder} is missing {'; '.join(missing)}: {SAVE_HINT}.")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise XLabError(f"{folder / 'config.json'} is not valid JSON ({e}).") from None
    model_type = config.get("model_type")
    if model_type not in SUPPORTED:
        raise XLabError(f"{folder} holds a {model_type!r} model ({', '.join(config.get('architectures') or [])}): "
                        f"supported architectures are GPT-2 (gpt2), Llama (llama), Qwen3 (qwen3) and Arcee (arcee).")
    return config


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        return read_safetensors(folder / "model.safetensors")
    if (folder / "model.safetensors.index.json").is_file():
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        shards = sorted(set(index.get("weight_map", {}).values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise XLabError(f"Hugging Face folder {folder} is missing the weight shards {', '.join(missing)}: {SAVE_HINT}.")
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_safetensors(folder / shard))
        return state
    try:
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  any failure of safe loading means: not plain tensors
        raise XLabError(f"{folder / 'pytorch_model.bin'} cannot be loaded safely (weights_only=True refused it: "
                        f"{str(e).splitlines()[0][:120]}): convert it to safetensors on a trusted machine with "
                        "`AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR)`.") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise XLabError(f"{folder / 'pytorch_model.bin'} is not a state dict of tensors: convert it to safetensors.")
    return state


# --- Hugging Face -> XLab ---------------------------------------------------------------------------
def xlab_settings_from_hf(config: dict[str, Any], source: str) -> dict[str, Any]:
    """XLabModel architecture settings plus `vocab_size` and `max_len` (the folder's positions)."""
    if config["model_type"] == "gpt2":
        return _gpt2_settings(config, source)
    return _llama_settings(config, source)


def _gpt2_settings(c: dict[str, Any], source: str) -> dict[str, Any]:
    problems = []
    if c.get("activation_function", "gelu_new") not in TANH_GELU:
        problems.append(f"activation_function={c['activation_function']!r} (only the tanh GELU)")
    if not c.get("scale_attn_weights", True) or c.get("scale_attn_by_inverse_layer_idx", False):
        problems.append("non-standard attention scaling")
    if c.get("add_cross_attention", False):
        problems.append("cross-attention")
    _refuse(problems, source)
    return dict(vocab_size=c["vocab_size"], max_len=c.get("n_positions", 1024), n_layer=c["n_layer"],
                n_head=c["n_head"], n_embd=c["n_embd"], ffn_dim=c.get("n_inner") or 4 * c["n_embd"],
                positions="learned", rope_base=10000.0, norm="layernorm", norm_position="pre", activation="gelu",
                bias=True, tie_weights=bool(c.get("tie_word_embeddings", True)),
                norm_eps=float(c.get("layer_norm_epsilon", 1e-5)), n_kv_head=None, qk_norm=False, **NO_XLAB_SWITCHES)


def _llama_settings(c: dict[str, Any], source: str) -> dict[str, Any]:
    heads, width = c["num_attention_heads"], c["hidden_size"]
    rope = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or ({k: v for k, v in rope.items() if k != "rope_theta"}
                                        if rope.get("rope_type", "default") != "default" else None)
    variant = LLAMA_FAMILY[c["model_type"]]
    # Qwen3's MLP has no bias setting: it never has biases.
    mlp_bias = c.get("mlp_bias", False) if c["model_type"] != "qwen3" else False
    problems = []
    if c.get("head_dim", width // heads) != width // heads:
        problems.append(f"head_dim={c['head_dim']} other than hidden_size / num_attention_heads")
    if c.get("hidden_act", variant["hidden_act"]) != variant["hidden_act"]:
        problems.append(f"hidden_act={c['hidden_act']!r} (only {variant['hidden_act']}"
                        f"{', i.e. SwiGLU' if variant['activation'] == 'swiglu' else ''})")
    if scaling:
        problems.append(f"rope scaling {scaling}")
    if bool(c.get("attention_bias", False)) != bool(mlp_bias):
        problems.append("biases in attention but not in the MLP (or the reverse)")
    if c.get("use_sliding_window", False):
        problems.append("sliding-window attention")
    _refuse(problems, source)
    return dict(vocab_size=c["vocab_size"], max_len=c.get("max_position_embeddings", 2048), n_layer=c["num_hidden_layers"],
                n_head=heads, n_embd=width, ffn_dim=c["intermediate_size"], positions="rotary",
                rope_base=float(rope.get("rope_theta", c.get("rope_theta", 10000.0))), norm="rmsnorm",
                norm_position="pre", activation=variant["activation"], bias=bool(c.get("attention_bias", False)),
                tie_weights=bool(c.get("tie_word_embeddings", False)), norm_eps=float(c.get("rms_norm_eps", 1e-6)),
                n_kv_head=_kv_heads(c.get("num_key_value_heads"), heads), qk_norm=variant["qk_norm"],
                **NO_XLAB_SWITCHES)


def _kv_heads(kv: int | None, heads: int) -> int | None:
    """XLabModel's n_kv_head: None for one key/value head per query head, as XLab writes it."""
    return None if kv is None or kv == heads else int(kv)


def _refuse(problems: list[str], source: str) -> None:
    if problems:
        raise XLabError(f"{source}: XLabModel cannot express {', '.join(problems)}.")


def xlab_state_from_hf(config: dict[str, Any], state: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """The folder's weights under XLabModel's names, `lm_head.weight` included (tied: the embedding)."""
    if config["model_type"] == "gpt2":
        out = {}
        for name, tensor in state.items():
            if name.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # causal-mask buffers of old transformers versions
            if not name.startswith(("transformer.", "lm_head.")):
                name = "transformer." + name  # the hub's gpt2 stores GPT2Model's names
            out[name] = tensor.t().contiguous() if name.endswith(CONV1D_WEIGHTS) else tensor
    else:
        out = _llama_to_xlab(state, config["num_hidden_layers"], LLAMA_FAMILY[config["model_type"]])
    if tied or "lm_head.weight" not in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


_LLAMA_NORMS = {"input_layernorm": "ln_1", "post_attention_layernorm": "ln_2"}
_QK_NORMS = {"self_attn.q_norm": "attn.q_norm", "self_attn.k_norm": "attn.k_norm"}


def _llama_to_xlab(state: dict[str, torch.Tensor], n_layer: int, variant: dict) -> dict[str, torch.Tensor]:
    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise XLabError(f"the {variant['name']} weights lack {name}: the folder is incomplete or not a "
                            f"{variant['name']}ForCausalLM.")
        return state[name]

    out = {"transformer.wte.weight": take("model.embed_tokens.weight"), "transformer.ln_f.weight": take("model.norm.weight")}
    if "lm_head.weight" in state:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(n_layer):
        hf, xl = f"model.layers.{i}.", f"transformer.h.{i}."
        for kind in ("weight", "bias"):
            if f"{hf}self_attn.q_proj.{kind}" not in state:
                continue
            out[f"{xl}attn.c_attn.{kind}"] = torch.cat([take(f"{hf}self_attn.{p}_proj.{kind}") for p in "qkv"])
            out[f"{xl}attn.c_proj.{kind}"] = take(f"{hf}self_attn.o_proj.{kind}")
            up = take(f"{hf}mlp.up_proj.{kind}")
            out[f"{xl}mlp.c_fc.{kind}"] = (torch.cat([take(f"{hf}mlp.gate_proj.{kind}"), up])
                                          if variant["activation"] == "swiglu" else up)
            out[f"{xl}mlp.c_proj.{kind}"] = take(f"{hf}mlp.down_proj.{kind}")
        norms = _LLAMA_NORMS | (_QK_NORMS if variant["qk_norm"] else {})
        for hf_norm, xl_norm in norms.items():
            out[f"{xl}{xl_norm}.weight"] = take(f"{hf}{hf_norm}.weight")
    return out


# --- XLab -> Hugging Face ---------------------------------------------------------------------------
def hf_kind(hp: dict[str, Any]) -> str:
    """gpt2, llama, qwen3 or arcee: the architecture that expresses these XLabModel settings, or an
    error naming the setting that none can. document_mask exports: on one document (what
    generation reads) transformers computes what XLab does; zero_init is only where training started."""
    for name, off in NO_XLAB_SWITCHES.items():
        if hp.get(name, off) != off:
            raise XLabError(f"{name}={hp[name]!r} cannot be exported: no architecture of transformers that XLab "
                            f"writes has it (train with {name}: {'false' if off is False else 'null'} to export).")
    gpt2 = dict(positions="learned", norm="layernorm", activation="gelu", bias=True)
    llama = dict(positions="rotary", norm="rmsnorm", activation="relu2" if hp.get("activation") == "relu2" else "swiglu")
    if hp.get("norm_position", "pre") != "pre":
        raise XLabError(f"norm_position={hp['norm_position']!r} cannot be exported: GPT-2 and Llama are pre-norm.")
    if hp.get("positions") == "sinusoidal":
        raise XLabError("positions='sinusoidal' cannot be exported: GPT-2 has learned positions, Llama rotary ones.")
    if all(hp.get(k) == v for k, v in gpt2.items()):
        if hp.get("n_kv_head") not in (None, hp.get("n_head")):
            raise XLabError(f"n_kv_head={hp['n_kv_head']} cannot be exported as GPT-2, which has one key/value "
                            "head per query head.")
        if hp.get("qk_norm", False):
            raise XLabError("qk_norm=True cannot be exported as GPT-2, which has no query/key norm (Qwen3 has one: "
                            "use positions rotary, norm rmsnorm, activation swiglu, bias false to export).")
        return "gpt2"
    if all(hp.get(k) == v for k, v in llama.items()):
        return _llama_variant(hp)
    target = gpt2 if hp.get("positions") == "learned" else llama
    name = "GPT-2" if target is gpt2 else "Llama"
    wrong = ", ".join(f"{k}={hp.get(k)!r} (needs {v!r})" for k, v in target.items() if hp.get(k) != v)
    raise XLabError(f"this model cannot be exported to transformers: with positions={hp.get('positions')!r} it "
                    f"would be {name}, which cannot express {wrong}.")


def _llama_variant(hp: dict[str, Any]) -> str:
    qk_norm, relu2 = bool(hp.get("qk_norm", False)), hp.get("activation") == "relu2"
    if qk_norm and relu2:
        raise XLabError("qk_norm=True with activation='relu2' cannot be exported: transformers has Qwen3 for "
                        "qk_norm (with SwiGLU) and Arcee for relu2 (without qk_norm), none with both; train without one.")
    if qk_norm and hp.get("bias"):
        raise XLabError("qk_norm=True with bias=True cannot be exported: Qwen3, the architecture with qk_norm, has no "
                        "MLP biases (train with bias: false to export).")
    return "qwen3" if qk_norm else "arcee" if relu2 else "llama"


def hf_config_from_xlab(hp: dict[str, Any], ffn_dim: int) -> dict[str, Any]:
    kind = hf_kind(hp)
    common = dict(vocab_size=hp["vocab_size"], bos_token_id=hp.get("sos_id"), eos_token_id=hp.get("eos_id"),
                  pad_token_id=hp.get("pad_id"), tie_word_embeddings=bool(hp["tie_weights"]), dtype="float32")
    eps = float(hp.get("norm_eps", 1e-5))
    if kind == "gpt2":
        return dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_positions=hp["max_len"], n_embd=hp["n_embd"],
                    n_layer=hp["n_layer"], n_head=hp["n_head"], n_inner=ffn_dim, activation_function="gelu_new",
                    layer_norm_epsilon=eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    variant = LLAMA_FAMILY[kind]
    extra = dict(use_sliding_window=False) if kind == "qwen3" else dict(mlp_bias=bool(hp.get("bias")))
    return dict(model_type=kind, architectures=[f"{variant['name']}ForCausalLM"], hidden_size=hp["n_embd"],
                intermediate_size=ffn_dim, num_hidden_layers=hp["n_layer"], num_attention_heads=hp["n_head"],
                num_key_value_heads=hp.get("n_kv_head") or hp["n_head"], head_dim=hp["n_embd"] // hp["n_head"],
                hidden_act=variant["hidden_act"], max_position_embeddings=hp["max_len"], rms_norm_eps=eps,
                rope_parameters={"rope_theta": float(hp.get("rope_base", 10000.0)), "rope_type": "default"},
                attention_bias=bool(hp.get("bias")), attention_dropout=0.0, **extra, **common)


def hf_state_from_xlab(kind: str, state: dict[str, torch.Tensor], n_layer: int, tied: bool) -> dict[str, torch.Tensor]:
    """XLabModel weights under the names of GPT2LMHeadModel or a Llama-family model (tied head once)."""
    state = {k: v for k, v in state.items() if not (tied and k == "lm_head.weight")}
    if kind == "gpt2":
        return {k: (v.t() if k.endswith(CONV1D_WEIGHTS) else v).contiguous() for k, v in state.items()}
    out = {"model.embed_tokens.weight": state["transformer.wte.weight"], "model.norm.weight": state["transformer.ln_f.weight"]}
    if not tied:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(n_layer):
        hf, xl = f"model.layers.{i}.", f"transformer.h.{i}."
        for kind_ in ("weight", "bias"):
            if f"{xl}attn.c_attn.{kind_}" not in state:
                continue
            width, kv = _attention_widths(state[f"{xl}attn.c_proj.weight"], state[f"{xl}attn.c_attn.{kind_}"])
            for p, part in zip("qkv", state[f"{xl}attn.c_attn.{kind_}"].split([width, kv, kv])):
                out[f"{hf}self_attn.{p}_proj.{kind_}"] = part
            out[f"{hf}self_attn.o_proj.{kind_}"] = state[f"{xl}attn.c_proj.{kind_}"]
            if LLAMA_FAMILY[kind]["activation"] == "swiglu":
                gate, up = state[f"{xl}mlp.c_fc.{kind_}"].chunk(2)
                out[f"{hf}mlp.gate_proj.{kind_}"], out[f"{hf}mlp.up_proj.{kind_}"] = gate, up
            else:
                out[f"{hf}mlp.up_proj.{kind_}"] = state[f"{xl}mlp.c_fc.{kind_}"]
            out[f"{hf}mlp.down_proj.{kind_}"] = state[f"{xl}mlp.c_proj.{kind_}"]
        for hf_norm, xl_norm in (_LLAMA_NORMS | (_QK_NORMS if LLAMA_FAMILY[kind]["qk_norm"] else {})).items():
            out[f"{hf}{hf_norm}.weight"] = state[f"{xl}{xl_norm}.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def _attention_widths(c_proj: torch.Tensor, c_attn: torch.Tensor) -> tuple[int, int]:
    """(query width, key/value width) of a stacked c_attn: the queries are as wide as the model."""
    width = c_proj.shape[0]
    return width, (c_attn.shape[0] - width) // 2
