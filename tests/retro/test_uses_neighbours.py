"""A small RetroModel with its default settings learns to read its neighbours: on near-duplicate
documents, validation loss with each block's own neighbours is far below the loss with another
block's (bench/retro_diagnose.py's shuffled neighbours), through the bench's own training loop."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from tests.helpers import load_script
from xlab.retro import RetroModel, build_retrieval_database_
from xlab.retro.datamodule import RetroEvalDataset, RetroTrainDataset


def test_real_neighbours_beat_shuffled_ones(tmp_path):
    ablation, diagnose = load_script("bench/retro_ablation"), load_script("bench/retro_diagnose")
    corpus = replace(ablation.SMALL, groups=200)
    s = diagnose.Setting(steps=300, lr=3e-3, warmup=50, batch_size=16)
    train_tokens, offsets, val_tokens = ablation.corpus(corpus)
    token_bytes = np.ones(corpus.vocab, dtype=np.int64)
    # One thread: the thread count changes the order of float sums, and the machine must not decide.
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        db = build_retrieval_database_(train_tokens, offsets, tmp_path / "db", corpus.chunk_size, None, k=1,
                                       progress=False, seq_len=corpus.max_len, pad_id=ablation.PAD)
        torch.manual_seed(0)
        model = RetroModel(vocab_size=corpus.vocab, pad_id=ablation.PAD, max_len=corpus.max_len, n_layer=2, n_head=2,
                           n_embd=64, chunk_size=corpus.chunk_size, enc_dim=32, enc_depth=1, learning_rate=s.lr)
        diagnose.train_(model, RetroTrainDataset(db, token_bytes, "neighbours", 1), s)
        val = RetroEvalDataset(val_tokens, corpus.max_len, token_bytes, db, "neighbours", 1)
        real, shuffled = diagnose.evaluate(model, val), diagnose.evaluate(model, diagnose.ShuffledNeighbours(val))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    assert real < shuffled - 1.0, (real, shuffled)
