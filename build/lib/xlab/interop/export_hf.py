"""`manage.py export-hf`: an XLab model as a `transformers` folder, when the model has an equivalent there.

The folder is what `save_pretrained` writes, so `AutoModelForCausalLM.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)` load it with no XLab installed: `config.json`,
`model.safetensors`, `generation_config.json`, `tokenizer.json` and `tokenizer_config.json`.
The model says what it is in transformers (`LanguageModel.hf_export`: a config naming its model
type, and the weights under that model's names) or why it has no equivalent. The tokenizer: a
pretrained one is written back as it came, XLab's sentencepiece BPE as a fast tokenizer with the
same ids (`spm_to_hf`); either adds the start token before a text, as XLab does in training and in
infer.py, so `tok(prompt)` + `generate` and `pipeline("text-generation")` continue a prompt as
`infer.py` does.
"""

from __future__ import annotations

import os
from pathlib import Path

from safetensors.torch import save_file
from transformers import AutoConfig, GenerationConfig

from xlab.common.errors import XLabError
from xlab.common.files import written_aside_
from xlab.common.pretrained_tokenizer import PretrainedTokenizer
from xlab.interop.export import check_target, load
from xlab.interop.spm_to_hf import fast_tokenizer_json


def export_hf_(path: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write the checkpoint or export at `path` as a `transformers` folder `out`; returns `out`."""
    out = Path(out)
    check_target(out, force)
    loaded = load(path)
    settings, state = loaded.model.hf_export()
    settings = dict(settings)
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    tokenizer_files = hf_tokenizer_files(loaded.tokenizer)
    if len(loaded.tokenizer) != config.vocab_size:
        raise XLabError(f"the tokenizer has {len(loaded.tokenizer)} tokens but the model {config.vocab_size}: "
                        "this checkpoint cannot be exported consistently.")
    _write_(out, config, state, tokenizer_files)
    return out


def hf_tokenizer_files(tokenizer) -> dict[str, bytes]:
    """The tokenizer as a fast tokenizer that adds the start token XLab prompts with."""
    if not isinstance(tokenizer, PretrainedTokenizer):
        tokenizer = PretrainedTokenizer(fast_tokenizer_json(tokenizer.to_bytes()), eos_token=tokenizer.eos_token,
                                        sos_token=tokenizer.sos_token, pad_token=tokenizer.pad_token,
                                        unk_token=tokenizer.unk_token)
    return tokenizer.transformers_files()


def _write_(out: Path, config, state, tokenizer_files: dict[str, bytes]) -> None:
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
