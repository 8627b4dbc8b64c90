"""xlab/inference/context.py: SlidingContext against a slow written-out reference. Each row's logits,
after the prefill and after every appended token, are those of the model run from scratch on that
row's window alone (positions from 0): left-padded rows see no padding, a row whose text outgrows
block_size keeps its last `keep` tokens, a prompt longer than the block is cut with a warning, and
beam reorders carry each row's text and cache together."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers import sharp_model
from xlab.inference.context import SlidingContext

VOCAB, PAD = 48, 0


class Reference:
    """One row decoded the obvious way: its whole text, its window start, the model run on the window."""

    def __init__(self, model, prompt: list[int], block: int, keep: int):
        self.model, self.block, self.keep = model, block, keep
        self.text = list(prompt)
        self.start = len(prompt) - keep if len(prompt) > block else 0

    def append(self, token: int) -> None:
        self.text.append(token)
        if len(self.text) - self.start > self.block:
            self.start = len(self.text) - self.keep

    def logits(self) -> torch.Tensor:
        with torch.no_grad():
            return self.model(torch.tensor([self.text[self.start:]]))[0, -1]


def prompts_of(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (n,), generator=generator) for n in lengths]


def check(context: SlidingContext, logits: torch.Tensor, references: list[Reference]) -> None:
    for row, reference in enumerate(references):
        expected = reference.logits()
        torch.testing.assert_close(logits[row], expected, rtol=1e-4, atol=1e-4)
        assert int(logits[row].argmax()) == int(expected.argmax())
        text = context.text()[row]
        first = context.first[row]
        assert text[first:].tolist() == reference.text and (text[:first] == PAD).all()


@pytest.mark.parametrize("positions", ["learned", "rotary"])
@pytest.mark.parametrize("block,keep", [(8, 5), (8, 7), (12, 1)])
def test_every_step_equals_the_window_run_alone(positions, block, keep):
    model = sharp_model(vocab_size=VOCAB, max_len=12, positions=positions, norm="rmsnorm" if positions == "rotary" else "layernorm")
    prompts = prompts_of([3, 6, 1])  # unequal: the shorter rows are left-padded
    new = 20  # every row outgrows the block, the rows at different steps
    context = SlidingContext(model, prompts, block_size=block, keep=keep, new_tokens=new, pad_id=PAD)
    references = [Reference(model, p.tolist(), block, keep) for p in prompts]
    assert context.rows == 3 and context.first == context.start == [3, 0, 5]
    assert context.cache.max_len == block  # the window, never more than the whole text
    with torch.no_grad():
        logits = context.prefill()
        check(context, logits, references)
        tokens = torch.randint(1, VOCAB, (new, 3), generator=torch.Generator().manual_seed(1))
        for step in range(new):
            logits = context.append(tokens[step])
            for row, reference in enumerate(references):
                reference.append(int(tokens[step, row]))
            check(context, logits, references)
    assert [context.end - s for s in context.start] == [len(r.text) - r.start for r in references]
    assert context.end == 6 + new


def test_a_prompt_longer_than_the_block_keeps_its_last_tokens_with_a_warning():
    model = sharp_model(vocab_size=VOCAB, max_len=8)
    prompts = prompts_of([11, 4], seed=2)
    with pytest.warns(UserWarning, match="prompt of 11 tokens is longer than the context of 8: keeping its last 6"):
        context = SlidingContext(model, prompts, block_size=8, keep=6, new_tokens=5, pad_id=PAD)
    assert context.start == [11 - 6, 7]
    references = [Reference(model, p.tolist(), 8, 6) for p in prompts]
    with torch.no_grad():
        check(context, context.prefill(), references)
        for token in (5, 9, 13, 17, 21):
            logits = context.append(torch.tensor([token, token + 1]))
            references[0].append(token)
            references[1].append(token + 1)
            check(context, logits, references)


def test_reorder_moves_each_rows_text_and_cache_together():
    model = sharp_model(vocab_size=VOCAB, max_len=16, positions="rotary", norm="rmsnorm")
    prompt = prompts_of([4], seed=3)[0]
    context = SlidingContext(model, [prompt] * 3, block_size=10, keep=6, new_tokens=12, pad_id=PAD)
    references = [Reference(model, prompt.tolist(), 10, 6) for _ in range(3)]
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        check(context, context.prefill(), references)
        for step in range(12):
            tokens = torch.randint(1, VOCAB, (3,), generator=generator)
            logits = context.append(tokens)
            for row, reference in enumerate(references):
                reference.append(int(tokens[row]))
            check(context, logits, references)
            if step % 3 == 1:  # beams: one row kept twice, another dropped
                order = [2, 2, 0] if step % 2 else [1, 0, 0]
                context.reorder(torch.tensor(order))
                references = [copy.copy(references[i]) for i in order]
                for reference in references:
                    reference.text = list(reference.text)


def test_a_short_generation_allocates_only_the_text():
    model = sharp_model(vocab_size=VOCAB, max_len=16)
    context = SlidingContext(model, prompts_of([3, 5]), block_size=16, keep=15, new_tokens=4, pad_id=PAD)
    assert context.cache.max_len == 5 + 4 and context.tokens.shape == (2, 9)
