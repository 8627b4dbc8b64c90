"""Helpers of the retrieval tests: token corpora in the chunker's layout, a word-level stand-in
tokenizer, random chunks, a tiny RetroModel."""

import numpy as np
import torch

from xlab.retro import RetroModel

PAD, SOS, EOS = 0, 2, 3


def make_corpus(lengths, seed=0, vocab=500, dtype=np.uint16):
    """Documents of the given text lengths, each wrapped as sos + random tokens + eos."""
    rng = np.random.default_rng(seed)
    docs = [np.concatenate([[SOS], rng.integers(4, vocab, n), [EOS]]) for n in lengths]
    return corpus_of(docs, dtype)


def corpus_of(docs, dtype=np.uint16):
    """(tokens, doc_offsets) of a list of token arrays, in the data module's format."""
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    tokens = np.concatenate([np.asarray(d) for d in docs]).astype(dtype) if docs else np.zeros(0, dtype)
    return tokens, offsets


N_WORDS = 100


class WordTokenizer:
    """Stand-in corpus tokenizer: ids 0-3 are pad/unk/sos/eos, id 4 + i is the word `w{i}`."""

    pad_id, unk_id, sos_id, eos_id = 0, 1, 2, 3

    def __len__(self):
        return 4 + N_WORDS

    def decode(self, ids):
        return " ".join(f"w{i - 4}" for i in ids if i >= 4)


def random_chunks(n, size=32, seed=0, pad_tail=0):
    chunks = np.random.default_rng(seed).integers(4, 4 + N_WORDS, (n, size)).astype(np.int32)
    if pad_tail:
        chunks[:, -pad_tail:] = 0
    return chunks


def tiny_model(**overrides) -> RetroModel:
    torch.manual_seed(0)
    settings = dict(vocab_size=60, max_len=16, n_layer=3, n_head=2, n_embd=32, chunk_size=4, enc_dim=16,
                    enc_depth=2, dec_cross_attn_layers=[1, 2])
    return RetroModel(**(settings | overrides)).eval()
