"""RetroModel decoding: the CCA keys and values of a chunk are computed once per layer, a prompt's
chunks are retrieved and encoded in one batch, and the tokens stay those of full recomputation,
also across context slides."""

from __future__ import annotations

import numpy as np
import torch

from tests.helpers import retro_data as tiny_data
from tests.retro.helpers import tiny_model
from xlab import inference
from xlab.retro.model import CrossAttention


def sharp(model):
    """Decisive, varied logits: greedy choices are no near-ties that rounding could flip."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1 and name != "wte.weight":
                param.mul_(20)
    return model


def windowed_greedy(model, database, prompt: list[int], steps: int, block: int, keep: int) -> list[int]:
    """Greedy decoding the slow way: the whole window every step, with the neighbours of each of
    its finished chunks; the window keeps its last `keep` tokens when the text outgrows `block`."""
    L, sequence, start, new = model.chunk_size, list(prompt), 0, []
    with torch.no_grad():
        for _ in range(steps):
            window = torch.tensor(sequence[start:])
            n = len(window) // L
            found = None
            if n:
                found = torch.from_numpy(database.search(window[: n * L].reshape(n, L).numpy()).astype(np.int64))[None]
            token = int(model(window[None], found)[0, -1].argmax())
            new.append(token)
            sequence.append(token)
            if len(sequence) - start > block:
                start = len(sequence) - keep
    return new


def test_generation_across_slides_equals_windowed_recomputation(corpus_dir, tmp_path):
    dm = tiny_data(corpus_dir, tmp_path)
    model = sharp(tiny_model(vocab_size=dm.vocab_size))
    model.set_database(dm.database)
    prompt = np.asarray(dm.tokens["val"][:6], dtype=np.int64).tolist()
    reference = windowed_greedy(model, dm.database, prompt, 22, block=16, keep=9)
    assert inference.sample(model, prompt, output_length=22, temperature=0, slide_keep=9).tolist() == reference


def test_keys_values_once_per_layer_and_chunk_and_one_search_for_the_prompt(corpus_dir, tmp_path, monkeypatch):
    dm = tiny_data(corpus_dir, tmp_path)
    model = sharp(tiny_model(vocab_size=dm.vocab_size))
    model.set_database(dm.database)
    calls, searches = [], []
    keys_values, search = CrossAttention.keys_values, type(dm.database).search

    def counted(self, context):
        calls.append(self)
        return keys_values(self, context)

    def searched(self, chunks, *args, **kwargs):
        searches.append(len(chunks))
        return search(self, chunks, *args, **kwargs)

    monkeypatch.setattr(CrossAttention, "keys_values", counted)
    monkeypatch.setattr(type(dm.database), "search", searched)
    prompt = np.asarray(dm.tokens["val"][:9], dtype=np.int64).tolist()  # two finished chunks
    inference.sample(model, prompt, output_length=6, temperature=0)  # 14 tokens fed: chunks 0, 1, 2
    cca = [layer.cca for layer in model.layers if layer.cca is not None]
    assert [sum(call is c for call in calls) for c in cca] == [3] * len(cca)  # the encoder's own calls aside
    assert searches == [2, 1]  # the prompt's two chunks in one search, then chunk 2 when it ends
