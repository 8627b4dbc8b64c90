"""MemoryGPT2 on real text: the memory never changes how the transformer learns, and it pays on
documents longer than the context, in validation and when sampling (bench/memory_text.py small)."""

from __future__ import annotations

import lightning as L
import torch

from tests.helpers import load_script
from tests.memory.helpers import recall_data, trainer
from xlab.memory.model import MemoryGPT2


def test_the_transformer_learns_exactly_as_without_a_memory(tmp_path):
    # Same seed, same batches, dropout and gradient clipping on: the memory's read trains on its
    # own loss and is clipped apart, so the transformer's weights come out identical. Hence a
    # document the memory has nothing for is predicted exactly as without a memory.
    data = recall_data(tmp_path)
    data.prepare_data()
    weights = {}
    for on in (True, False):
        L.seed_everything(0, verbose=False)
        model = MemoryGPT2(vocab_size=data.vocab_size, max_len=12, n_layer=1, n_head=2, n_embd=32, dropout=0.1,
                           memory_size=500, memory_device="cpu", use_memory=on, learning_rate=3e-3)
        trainer(tmp_path, gradient_clip_val=0.5, limit_val_batches=0).fit(model, datamodule=data)
        weights[on] = model.transformer.state_dict()
        if on:
            assert len(model.memory.entries) > 0 and model.telemetry["reliance"] > 0  # it did read
    for name, value in weights[False].items():
        torch.testing.assert_close(weights[True][name], value, rtol=0, atol=0, msg=name)


def test_memory_pays_on_long_documents_in_validation_and_when_sampling(tmp_path):
    bench = load_script("bench/memory_text")
    # The first 24 topics of the CPython documentation, whole; a tiny model, a few steps.
    r = bench.text_run(bench.cpython_source(), str(tmp_path / "cache"), steps=40, max_len=32, n_layer=1, n_embd=32,
                       vocab_size=512, batch_size=4, seed=0, continuation=16, sampling_documents=3,
                       max_documents=24, index_type="flat", memory_size=2000)
    on, off = r[True]["buckets"]["> 4 contexts"][0], r[False]["buckets"]["> 4 contexts"][0]
    assert r["long_documents"] >= 2 and on < 0.9 * off
    filled, empty = r["sampling"][True], r["sampling"][False]
    assert filled < 0.9 * empty
