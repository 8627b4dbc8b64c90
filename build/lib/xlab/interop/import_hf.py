"""`manage.py import-hf`: a local transformers GPT-2 folder written as an XLab export.

The weights map onto XLabModel (`hf_gpt2`); the tokenizer is the folder's own Hugging Face one, or
a sentencepiece model for GPT-2-shaped models trained on ours. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from xlab.common.errors import XLabError
from xlab.common.export_format import SPM_TOKENIZER
from xlab.common.pretrained_tokenizer import PretrainedTokenizer
from xlab.common.tokenizer import Tokenizer
from xlab.interop.export import write_export_
from xlab.interop.hf_gpt2 import hf_tokenizer_files, load_gpt2, xlab_from_gpt2


def import_hf_(path: str | Path, out: str | Path | None = None, tokenizer: str | Path | None = None,
               force: bool = False) -> Path:
    """Write a local transformers GPT-2 directory as an XLab export; returns the export folder.

    The tokenizer is the directory's own Hugging Face tokenizer, or the sentencepiece model given
    as `tokenizer` (for GPT-2-shaped models trained on our tokenizer); its size must match the model.
    """
    path = Path(path)
    hf_model = load_gpt2(path)
    model = xlab_from_gpt2(hf_model)
    if tokenizer is not None:
        spm = Tokenizer.load(tokenizer)
        files, kind, size = {SPM_TOKENIZER: spm.to_bytes()}, "sentencepiece", len(spm)
    else:
        files = hf_tokenizer_files(path)
        if not files:
            raise XLabError(f"{path} has no tokenizer files (tokenizer.json, or vocab.json and merges.txt): "
                            "copy them there or pass --tokenizer with a sentencepiece model.")
        # Read as the export will be read, so a file cut short is refused now, not copied into it.
        PretrainedTokenizer.from_folder(path)
        kind, size = "huggingface", None
    if size is not None and size > model.hparams.vocab_size:
        raise XLabError(f"the tokenizer has {size} tokens but the model only {model.hparams.vocab_size}: "
                        "pass the tokenizer the model was trained with.")
    out = Path(out) if out is not None else path.parent / f"{path.name}-xlab"
    return write_export_(out, model, tokenizer_files=files, tokenizer_kind=kind,
                         training={"imported_from": str(path.resolve())}, force=force)
