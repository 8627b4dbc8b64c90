"""Pretrained folders the interop tests make: a tiny random GPT-2 with a byte-level BPE that the
`tokenizers` library trains on the test corpus, saved as `save_pretrained` would."""

from __future__ import annotations

from pathlib import Path

import torch

END = "<|endoftext|>"


def train_byte_level_bpe(corpus_dir: Path, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [p.read_text(encoding="utf-8") for p in sorted(corpus_dir.glob("*.txt"))]
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def write_gpt2_folder_(folder: Path, corpus_dir: Path, n_positions: int = 64, seed: int = 0, **config) -> Path:
    """A GPT-2 folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json)."""
    import transformers

    tokenizer = transformers.GPT2TokenizerFast(tokenizer_object=train_byte_level_bpe(corpus_dir), bos_token=END,
                                               eos_token=END, unk_token=END)
    end = tokenizer.convert_tokens_to_ids(END)
    torch.manual_seed(seed)
    settings = dict(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=32, n_layer=2, n_head=2,
                    bos_token_id=end, eos_token_id=end)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**settings, **config}))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
