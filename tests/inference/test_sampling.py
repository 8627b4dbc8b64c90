"""Decoding with the KV cache and the sliding window against plain recomputation, and every
strategy, constraint and error of `xlab.inference` on small random models."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import sharp_model
from xlab import inference
from xlab.common.errors import XLabError
from xlab.inference.processors import race, sample_token, warp


def recompute(model, prompt: list[int], steps: int, block_size: int, keep: int, choose=None) -> list[int]:
    """Reference: every step runs the whole current window through the model, no cache.

    The window starts at 0 and jumps to keep the last `keep` tokens whenever the text would no
    longer fit in `block_size`. `choose` maps logits (1, V) to a token (default argmax)."""
    tokens, start, out = list(prompt), 0, []
    if len(tokens) > block_size:
        start = len(tokens) - keep
    for _ in range(steps):
        with torch.no_grad():
            logits = model(torch.tensor([tokens[start:]]))[:, -1]
        token = int(choose(logits) if choose else logits.argmax())
        out.append(token)
        tokens.append(token)
        if len(tokens) - start > block_size:
            start = len(tokens) - keep
    return out


@pytest.mark.parametrize("positions", ["learned", "rotary"])
@pytest.mark.parametrize("slide_keep,keep", [(None, 15), (0.5, 8), (3, 3)])
def test_cached_decoding_matches_full_recompute_past_the_block(positions, slide_keep, keep):
    model = sharp_model(positions=positions)
    prompt = torch.randint(4, 48, (6,), generator=torch.Generator().manual_seed(1))
    ours = inference.sample(model, prompt, output_length=40, temperature=0, slide_keep=slide_keep)
    assert ours.tolist() == recompute(model, prompt.tolist(), 40, 16, keep)


def test_cached_sampling_matches_full_recompute_with_the_same_noise():
    model = sharp_model(positions="rotary")
    generator = torch.Generator().manual_seed(7)
    reference = recompute(model, [2, 5, 9], 30, 16, 8,
                                 choose=lambda logits: sample_token(logits, 1.5, 10, 0.9, generator))
    ours = inference.sample(model, [2, 5, 9], output_length=30, temperature=1.5, top_k=10, top_p=0.9, seed=7,
                            slide_keep=0.5)
    assert ours.tolist() == reference


def test_block_size_smaller_than_max_len_slides_earlier():
    model = sharp_model(max_len=32)
    prompt = [5, 9, 11]
    ours = inference.sample(model, prompt, output_length=30, block_size=10, temperature=0)
    assert ours.tolist() == recompute(model, prompt, 30, 10, 9)


def test_long_prompt_is_truncated_from_the_left_with_a_warning():
    model = sharp_model()
    prompt = torch.randint(4, 48, (25,), generator=torch.Generator().manual_seed(2))
    with pytest.warns(UserWarning, match="longer than the context"):
        ours = inference.sample(model, prompt, output_length=10, temperature=0)
    assert ours.tolist() == recompute(model, prompt.tolist(), 10, 16, 15)


def test_batch_of_different_lengths_matches_each_prompt_alone():
    model = sharp_model()
    generator = torch.Generator().manual_seed(3)
    prompts = [torch.randint(4, 48, (n,), generator=generator) for n in (2, 7, 13)]
    batch = inference.sample(model, prompts, output_length=24, temperature=0, slide_keep=0.5)
    for prompt, together in zip(prompts, batch):
        alone = inference.sample(model, prompt, output_length=24, temperature=0, slide_keep=0.5)
        assert together.tolist() == alone.tolist()


@pytest.mark.parametrize("eos", [None, 3])
def test_beam_search_batch_matches_each_prompt_alone_past_the_block(eos):
    model = sharp_model()
    generator = torch.Generator().manual_seed(4)
    prompts = [torch.randint(4, 48, (n,), generator=generator) for n in (3, 9)]
    options = dict(output_length=20, eos_class=eos, num_beams=3, num_samples=2)
    batch = inference.sample(model, prompts, **options)
    for prompt, together in zip(prompts, batch):
        alone = inference.sample(model, prompt, **options)
        assert [t.tolist() for t in together] == [t.tolist() for t in alone]
        if eos is None:  # every hypothesis runs to the end, well past the 16-token block
            assert [len(t) for t in together] == [20, 20]


def test_top_k_one_and_one_beam_equal_greedy():
    model = sharp_model()
    prompt = [2, 7, 30]
    greedy = inference.sample(model, prompt, output_length=20, temperature=0).tolist()
    assert inference.sample(model, prompt, output_length=20, top_k=1, seed=0).tolist() == greedy
    assert inference.beam_search(model, prompt, output_length=20, num_beams=1).tolist() == greedy
    assert inference.sample(model, prompt, output_length=20, num_beams=1, temperature=0).tolist() == greedy


def test_seed_reproduces_a_sample_and_generator_works_too():
    model = sharp_model()
    prompt = [2, 7]
    options = dict(output_length=30, temperature=3.0, num_samples=2)
    first = inference.sample(model, prompt, seed=11, **options)
    again = inference.sample(model, prompt, seed=11, **options)
    other = inference.sample(model, prompt, seed=12, **options)
    with_generator = inference.sample(model, prompt, generator=torch.Generator().manual_seed(11), **options)
    as_lists = lambda samples: [s.tolist() for s in samples]  # noqa: E731
    assert as_lists(first) == as_lists(again) == as_lists(with_generator)
    assert as_lists(first) != as_lists(other)
    assert first[0].tolist() != first[1].tolist()  # samples of one prompt are independent draws


def test_result_shapes_follow_the_inputs():
    model = sharp_model()
    one = inference.sample(model, torch.tensor([2, 5]), output_length=4, temperature=0)
    assert isinstance(one, torch.Tensor) and one.shape == (4,)
    several = inference.sample(model, [2, 5], output_length=4, num_samples=3)
    assert isinstance(several, list) and len(several) == 3
    batch = inference.sample(model, torch.tensor([[2, 5], [2, 6]]), output_length=4, temperature=0)
    assert len(batch) == 2 and all(t.shape == (4,) for t in batch)
    nested = inference.sample(model, [[2], [2, 6, 7]], output_length=4, num_samples=2)
    assert len(nested) == 2 and all(len(per_prompt) == 2 for per_prompt in nested)


def test_eos_ends_a_sequence_and_is_not_returned():
    model = sharp_model()
    prompt = [2, 9, 14]
    free = inference.sample(model, prompt, output_length=12, temperature=0).tolist()
    eos = free[4]
    stopped = inference.sample(model, prompt, output_length=12, temperature=0, eos_class=eos).tolist()
    assert stopped == free[: free.index(eos)]


def test_min_length_holds_back_eos():
    model = sharp_model()
    prompt = [2, 9, 14]
    free = inference.sample(model, prompt, output_length=12, temperature=0).tolist()
    eos = free[0]
    out = inference.sample(model, prompt, output_length=12, temperature=0, eos_class=eos, min_length=5).tolist()
    assert len(out) >= 5 and eos not in out[:5]


def test_excluded_tokens_never_appear():
    model = sharp_model()
    prompt = [2, 9]
    free = inference.sample(model, prompt, output_length=16, temperature=0).tolist()
    banned = sorted(set(free))
    out = inference.sample(model, prompt, output_length=16, temperature=0, exclude_tokens=banned).tolist()
    assert len(out) == 16 and not set(out) & set(banned)


def test_no_repeat_ngram_forbids_repeated_bigrams_including_the_prompt():
    model = sharp_model()
    prompt = [2, 9, 14, 9]
    out = inference.sample(model, prompt, output_length=30, temperature=0, no_repeat_ngram_size=2).tolist()
    text = prompt + out
    bigrams = list(zip(text, text[1:]))
    assert len(bigrams) == len(set(bigrams))


def test_repetition_penalty_changes_greedy_choices_only_for_seen_tokens():
    model = sharp_model()
    prompt = [2, 9, 14]
    free = inference.sample(model, prompt, output_length=20, temperature=0).tolist()
    assert len(set(free)) < len(free)  # the plain model repeats itself
    penalised = inference.sample(model, prompt, output_length=20, temperature=0, repetition_penalty=50.0).tolist()
    assert len(set(penalised)) > len(set(free))


def letters(ids) -> str:
    """A stand-in decode: token i is the letter chr(97 + i % 26)."""
    return "".join(chr(97 + int(i) % 26) for i in ids)


def test_stop_string_ends_the_sequence_after_the_token_that_completes_it():
    model = sharp_model()
    prompt = [2, 9, 14]
    free = inference.sample(model, prompt, output_length=16, temperature=0).tolist()
    stop = letters(free[3:6])
    first = letters(free).find(stop)
    out = inference.sample(model, prompt, output_length=16, temperature=0, stop_strings=[stop], decode=letters)
    assert out.tolist() == free[: first + len(stop)]
    assert inference.cut_at_stop(letters(out), [stop]) == letters(free[:first])


def test_stream_reports_every_token_of_every_sequence_in_order():
    model = sharp_model()
    seen: dict[int, list[int]] = {}
    prompts = [[2, 5], [2, 7, 8, 9]]
    results = inference.sample(model, prompts, output_length=10, num_samples=2, eos_class=3, seed=5,
                               stream=lambda row, token: seen.setdefault(row, []).append(token))
    flat = [s.tolist() for per_prompt in results for s in per_prompt]
    assert [seen.get(row, []) for row in range(4)] == flat


def test_decoding_restores_the_training_mode():
    model = sharp_model().train()
    inference.sample(model, [2, 3], output_length=3)
    assert model.training


def test_warp_filters_like_top_k_and_nucleus():
    scores = torch.tensor([[0.6, 0.3, 0.1]]).log()
    kept = lambda s: torch.isfinite(s)[0].tolist()  # noqa: E731
    assert kept(warp(scores, 1.0, None, 0.5)) == [True, False, False]
    assert kept(warp(scores, 1.0, None, 0.7)) == [True, True, False]
    assert kept(warp(scores, 1.0, None, 1.0)) == [True, True, True]
    assert kept(warp(scores, 1.0, 2, None)) == [True, True, False]
    assert kept(warp(scores, 1.0, 2, 0.5)) == [True, False, False]
    torch.testing.assert_close(warp(scores, 2.0, None, None), scores / 2)


def frequencies(draws: torch.Tensor, size: int) -> torch.Tensor:
    return torch.bincount(draws, minlength=size).float() / len(draws)


def test_sampling_draws_tokens_with_their_probabilities():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    draws = race(probs.log().expand(20000, 4), torch.Generator().manual_seed(0))
    torch.testing.assert_close(frequencies(draws, 4), probs, atol=0.015, rtol=0)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 3, None), (1.0, 4, 0.75), (1.5, None, 0.8)])
def test_top_k_shortcut_draws_like_filtering_the_whole_vocabulary(temperature, top_k, top_p):
    scores = torch.tensor([2.0, 0.5, 1.5, -1.0, 1.0, 0.0]).expand(40000, 6)
    expected = warp(scores[:1], temperature, top_k, top_p).softmax(-1)[0]
    draws = sample_token(scores, temperature, top_k, top_p, torch.Generator().manual_seed(1))
    torch.testing.assert_close(frequencies(draws, 6), expected, atol=0.01, rtol=0)


@pytest.mark.parametrize("options,message", [
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(temperature=-1.0), "temperature"),
    (dict(num_beams=49), "larger than the vocabulary"),
    (dict(num_beams=2, top_k=5), "deterministic"),
    (dict(num_beams=2, num_samples=3), "at most num_beams"),
    (dict(stop_strings=["x"]), "decode"),
    (dict(block_size=17), "block_size"),
    (dict(top_k=0), "top_k"),
    (dict(exclude_tokens=[99]), "outside the vocabulary"),
    (dict(slide_keep=16), "slide_keep"),
    (dict(no_such_option=1), "unknown generation settings"),
])
def test_bad_settings_raise_one_line_errors(options, message):
    model = sharp_model()
    with pytest.raises(XLabError, match=message) as error:
        inference.sample(model, [2, 3], output_length=5, **options)
    assert "\n" not in str(error.value)


def test_empty_prompt_and_out_of_vocabulary_ids_are_refused():
    model = sharp_model()
    with pytest.raises(XLabError, match="empty"):
        inference.sample(model, torch.tensor([], dtype=torch.long), output_length=5)
    with pytest.raises(XLabError, match="outside the vocabulary"):
        inference.sample(model, [2, 48], output_length=5)


class CountingCache:
    """The least a cache must offer: a length the model advances, reset and reorder."""

    def __init__(self, batch_size: int, max_len: int):
        self.length, self.max_len, self.batch_size = 0, max_len, batch_size

    def reset(self) -> None:
        self.length = 0

    def reorder(self, index: torch.Tensor) -> None:
        self.batch_size = len(index)


class BigramModel(torch.nn.Module):
    """Not an XLabModel: a lookup table of next-token logits, speaking the decoding protocol."""

    def __init__(self, vocab_size: int = 20, max_len: int = 8):
        super().__init__()
        self.hparams = {"vocab_size": vocab_size, "max_len": max_len, "pad_id": 0}
        self.table = torch.nn.Parameter(torch.randn(vocab_size, vocab_size, generator=torch.Generator().manual_seed(0)))

    def new_cache(self, batch_size: int, max_len: int | None = None) -> CountingCache:
        return CountingCache(batch_size, max_len or self.hparams["max_len"])

    def forward(self, input_ids, cache=None, positions=None, padding_mask=None):
        if cache is not None:
            assert cache.length + input_ids.shape[1] <= cache.max_len
            cache.length += input_ids.shape[1]
        return self.table[input_ids]


def test_any_model_speaking_the_protocol_can_be_decoded():
    model = BigramModel()
    out = inference.sample(model, [3, 4], output_length=12, temperature=0).tolist()
    expected, token = [], 4
    for _ in range(12):
        token = int(model.table[token].argmax())
        expected.append(token)
    assert out == expected
    beams = inference.beam_search(model, [3, 4], output_length=12, num_beams=3)
    assert len(beams) == 12
