"""Mapping between `transformers` GPT-2 and XLabModel, plus a tokenizer adapter for imported models.

XLabModel configured as GPT-2 (learned positions, pre-LayerNorm, tanh GELU, biases, tied head) has
the same parameter names as `GPT2LMHeadModel`; only the layout of the four projection matrices
differs: GPT-2's Conv1D stores (in, out), our nn.Linear stores (out, in).

Imported GPT-2 models (`xlab.interop.import_hf`) keep their own byte-level BPE tokenizer: an export stores
the Hugging Face tokenizer files and `xlab.common.pretrained_tokenizer.PretrainedTokenizer`
gives them the interface of our sentencepiece `Tokenizer`, so sampling and `infer.py` work the same on both. Retokenising GPT-2 with sentencepiece
would silently change what every id means, so it is not offered.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from xlab.common.errors import XLabError
from xlab.common.export_format import HF_TOKENIZER_DIR, is_export
from xlab.models import XLabModel
from xlab.models.hf_weights import CONV1D_WEIGHTS, TANH_GELU

# Files of a Hugging Face tokenizer worth carrying into an export (all JSON or plain text).
HF_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                      "special_tokens_map.json", "added_tokens.json")


def xlab_hparams_from_gpt2(config: Any) -> dict[str, Any]:
    """XLabModel init args equivalent to a `GPT2Config`; refuses settings XLabModel cannot express."""
    _check_supported(config)
    eos = config.eos_token_id if config.eos_token_id is not None else config.vocab_size - 1
    bos = config.bos_token_id if config.bos_token_id is not None else eos
    pad = config.pad_token_id if config.pad_token_id is not None else eos
    return dict(
        vocab_size=config.vocab_size, max_len=config.n_positions, sos_id=bos, eos_id=eos, pad_id=pad,
        n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
        ffn_dim=config.n_inner or 4 * config.n_embd, dropout=0.0, positions="learned", norm="layernorm",
        norm_position="pre", activation="gelu", bias=True, tie_weights=bool(config.tie_word_embeddings),
    )


def _check_supported(config: Any) -> None:
    problems = []
    if getattr(config, "model_type", "gpt2") != "gpt2":
        problems.append(f"model_type={config.model_type!r} (only gpt2)")
    if config.activation_function not in TANH_GELU:
        problems.append(f"activation_function={config.activation_function!r} (only the tanh GELU)")
    if abs(config.layer_norm_epsilon - 1e-5) > 1e-12:
        problems.append(f"layer_norm_epsilon={config.layer_norm_epsilon} (XLabModel uses 1e-5)")
    if not getattr(config, "scale_attn_weights", True) or getattr(config, "scale_attn_by_inverse_layer_idx", False):
        problems.append("non-standard attention scaling")
    if getattr(config, "add_cross_attention", False):
        problems.append("cross-attention")
    if problems:
        raise XLabError(f"this GPT-2 configuration cannot be imported: {', '.join(problems)}.")


def xlab_state_dict_from_gpt2(hf_state: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """Rename nothing, transpose the Conv1D weights, drop GPT-2's non-parameter buffers."""
    state = {}
    for name, tensor in hf_state.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # old transformers versions saved the causal mask as a buffer
        if name == "lm_head.weight" and tied:
            continue  # XLabModel ties it to wte itself
        state[name] = tensor.t().contiguous() if name.endswith(CONV1D_WEIGHTS) else tensor
    return state


def xlab_from_gpt2(hf_model: Any) -> XLabModel:
    """An XLabModel with the weights of a `transformers` GPT2LMHeadModel (same logits)."""
    hparams = xlab_hparams_from_gpt2(hf_model.config)
    hf_state = hf_model.state_dict()
    tied = hparams["tie_weights"]
    model = XLabModel(**hparams)
    result = model.load_state_dict(xlab_state_dict_from_gpt2(hf_state, tied), strict=False)
    missing = [k for k in result.missing_keys if not (tied and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise XLabError(f"GPT-2 weights do not map onto XLabModel: missing {missing[:4]}, "
                        f"unexpected {result.unexpected_keys[:4]}.")
    dtype = next(iter(hf_state.values())).dtype
    return model.to(dtype).eval()


def load_gpt2(path: str | Path) -> Any:
    """A GPT2LMHeadModel from a local `save_pretrained` directory; never touches the network."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise XLabError(f"{path} is not a transformers model directory (no config.json): "
                        "pass a folder written by save_pretrained.")
    if is_export(path):
        raise XLabError(f"{path} is an XLab export already: use it as it is (infer.py, init_from), or import the "
                        "transformers folder it came from.")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.disable_progress_bar()  # a tiny local load needs no progress bar on stderr
    try:
        config = GPT2Config.from_pretrained(path, local_files_only=True)
        _check_supported(config)
        return GPT2LMHeadModel.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
    except XLabError:
        raise
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        detail = " ".join(str(e).split())[:160]
        raise XLabError(f"cannot load a GPT-2 model from {path} (a weight file cut short or corrupt?): {detail}") from None


def hf_tokenizer_files(path: str | Path) -> dict[str, bytes]:
    """The tokenizer files of a Hugging Face model directory, keyed by their path in an export."""
    path = Path(path)
    files = {name: (path / name).read_bytes() for name in HF_TOKENIZER_FILES if (path / name).is_file()}
    if "tokenizer.json" not in files and not {"vocab.json", "merges.txt"} <= files.keys():
        return {}
    return {f"{HF_TOKENIZER_DIR}/{name}": data for name, data in files.items()}
