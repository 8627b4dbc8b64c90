"""MemoryGPT2's decode cache: written in place into buffers allocated once, and giving the
logits the growing transformers cache gives, through steps, a reset, a beam reorder and growth."""

import torch
from transformers import DynamicCache

from xlab.memory.decode_cache import MemoryCache
from xlab.memory.model import MemoryGPT2


def model() -> MemoryGPT2:
    torch.manual_seed(0)
    return MemoryGPT2(vocab_size=30, max_len=16, n_layer=2, n_head=2, n_embd=16, use_memory=False).eval()


def step(gpt, layers, ids, past):
    positions = torch.arange(past, past + ids.shape[1])[None].expand(ids.shape[0], -1)
    out = gpt.transformer(input_ids=ids, position_ids=positions, past_key_values=layers, use_cache=True)
    return gpt.lm_head(out.last_hidden_state)


@torch.no_grad()
def test_the_preallocated_cache_gives_what_the_growing_one_gives():
    gpt = model()
    ids = torch.randint(0, 30, (3, 12), generator=torch.Generator().manual_seed(1))
    cache, growing = gpt.new_cache(3, max_len=8), DynamicCache(config=gpt.transformer.config)
    assert isinstance(cache, MemoryCache)
    exact = dict(rtol=0, atol=0)
    torch.testing.assert_close(step(gpt, cache.layers, ids[:, :4], 0), step(gpt, growing, ids[:, :4], 0), **exact)
    buffer = cache.layers.layers[0]._keys.data_ptr()
    for t in range(4, 10):  # past max_len=8 from t=8: the buffers grow
        mine, theirs = step(gpt, cache.layers, ids[:, t: t + 1], t), step(gpt, growing, ids[:, t: t + 1], t)
        torch.testing.assert_close(mine, theirs, **exact)
        if t < 8:
            assert cache.layers.layers[0]._keys.data_ptr() == buffer  # written in place, not reallocated
    assert cache.length == 10
    index = torch.tensor([2, 2, 0])
    cache.reorder(index)
    growing.reorder_cache(index)
    torch.testing.assert_close(step(gpt, cache.layers, ids[:, 10:11], 10), step(gpt, growing, ids[:, 10:11], 10),
                               rtol=0, atol=0)
    cache.reset()
    assert cache.length == 0 and cache.replaying
    fresh = DynamicCache(config=gpt.transformer.config)
    torch.testing.assert_close(step(gpt, cache.layers, ids[:, 2:6], 0), step(gpt, fresh, ids[:, 2:6], 0), **exact)
