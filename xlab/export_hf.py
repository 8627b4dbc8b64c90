"""`manage.py export-hf`: any XLab model that GPT-2 or Llama can express, as a `transformers` folder.

The folder is what `save_pretrained` writes, so `AutoModelForCausalLM.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)` load it with no XLab installed: `config.json`,
`model.safetensors`, `generation_config.json`, `tokenizer.json` and `tokenizer_config.json`.
- XLabModel: `GPT2LMHeadModel` when GPT-2-shaped, `LlamaForCausalLM` when rotary / RMSNorm /
  SwiGLU (`hf_weights.hf_kind` names the setting that neither can express).
- MemoryGPT2 without a memory (`use_memory: false`) is a GPT-2; with one, its predictions depend
  on the memory's contents, which a `transformers` model cannot hold: refused.
- RetroModel: chunked cross-attention to retrieved neighbours has no `transformers` equivalent.
The tokenizer: a pretrained one is written back as it came; XLab's sentencepiece BPE is
converted to a fast tokenizer with the same ids (`spm_to_hf`).
"""

from __future__ import annotations

import os
from pathlib import Path

from xlab.errors import XLabError
from xlab.files import written_aside_


def export_hf_(path: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write the checkpoint or export at `path` as a `transformers` folder `out`; returns `out`."""
    from xlab.export import _check_target, load

    out = Path(out)
    _check_target(out, force)
    loaded = load(path)
    config, state = _model_parts(loaded.model)
    tokenizer_files = hf_tokenizer_files(loaded.tokenizer)
    if len(loaded.tokenizer) != config.vocab_size:
        raise XLabError(f"the tokenizer has {len(loaded.tokenizer)} tokens but the model {config.vocab_size}: "
                        "this checkpoint cannot be exported consistently.")
    _write_(out, config, state, tokenizer_files)
    return out


def hf_tokenizer_files(tokenizer) -> dict[str, bytes]:
    from xlab.datamodules.pretrained_tokenizer import PretrainedTokenizer
    from xlab.spm_to_hf import fast_tokenizer_json

    if not isinstance(tokenizer, PretrainedTokenizer):
        tokenizer = PretrainedTokenizer(fast_tokenizer_json(tokenizer.to_bytes()), eos_token=tokenizer.eos_token,
                                        sos_token=tokenizer.sos_token, pad_token=tokenizer.pad_token,
                                        unk_token=tokenizer.unk_token)
    return tokenizer.hf_files()


def _model_parts(model):
    """(a transformers config, the weights under its model's names) for an XLab model."""
    from transformers import GPT2Config, LlamaConfig

    from xlab.hf_weights import hf_config_from_xlab, hf_kind, hf_state_from_xlab

    name = type(model).__name__
    hp = dict(model.hparams)
    if name == "MemoryGPT2":
        if hp.get("use_memory", True):
            raise XLabError("a MemoryGPT2 with a memory cannot be exported to transformers: its predictions depend "
                            "on the memory's entries, which a transformers model cannot hold (a model trained "
                            "with use_memory: false exports as GPT-2).")
        # The backbone's config names no pad token (see gpt2_backbone); the export names the data's.
        config = GPT2Config(**{**model.transformer.config.to_dict(), "architectures": ["GPT2LMHeadModel"],
                               "tie_word_embeddings": True, "pad_token_id": hp.get("pad_id")})
        state = {k: v for k, v in model.state_dict().items() if k.startswith("transformer.")}
        return config, state
    if name != "XLabModel":
        raise XLabError(f"a {name} cannot be exported to transformers: "
                        + ("its chunked cross-attention to retrieved neighbours has no transformers equivalent."
                           if name == "RetroModel" else "only XLabModel and MemoryGPT2 without memory can."))
    kind = hf_kind(hp)
    ffn_dim = model.transformer.h[0].mlp.c_proj.in_features
    settings = hf_config_from_xlab(hp, ffn_dim)
    config = (GPT2Config if kind == "gpt2" else LlamaConfig)(**settings)
    state = hf_state_from_xlab(kind, model.state_dict(), hp["n_layer"], bool(hp["tie_weights"]))
    return config, state


def _write_(out: Path, config, state, tokenizer_files: dict[str, bytes]) -> None:
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    generation = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                  pad_token_id=config.pad_token_id)
    with written_aside_(out) as tmp:
        tmp.mkdir()
        config.save_pretrained(tmp)
        generation.save_pretrained(tmp)
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp / "model.safetensors",
                  metadata={"format": "pt"})
        for name, data in tokenizer_files.items():
            (tmp / name).write_bytes(data)
