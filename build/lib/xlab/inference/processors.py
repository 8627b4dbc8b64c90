"""Score processing before a token is chosen, all on the device, in the order `transformers` uses
(repetition penalty, no-repeat n-grams, minimum length, excluded tokens; then temperature, top-k,
top-p when sampling), so that greedy and beam search match `generate` token for token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from xlab.inference.context import SlidingContext
from xlab.inference.settings import GenerationSettings


class ScoreProcessor:
    """Applies the settings' constraints to scores (N, V) of the N rows of a `SlidingContext`."""

    def __init__(self, settings: GenerationSettings, context: SlidingContext, vocab_size: int):
        self.settings, self.context, self.vocab_size = settings, context, vocab_size
        device = context.tokens.device
        self.eos = torch.tensor(settings.eos_ids, dtype=torch.long, device=device)
        self.excluded = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        self.excluded[torch.tensor([int(t) for t in settings.exclude_tokens], dtype=torch.long, device=device)] = True
        self.any_excluded = bool(settings.exclude_tokens)
        # Which tokens each row's text holds, kept up to date one token at a time instead of being
        # rebuilt from the whole history every step; column V absorbs padding.
        self.seen = None
        if settings.repetition_penalty != 1.0:
            padding = context.columns[None, : context.end] < context.first_columns[:, None]
            text = context.text().masked_fill(padding, vocab_size)
            self.seen = torch.zeros(context.rows, vocab_size + 1, dtype=torch.bool, device=device)
            self.seen.scatter_(1, text, True)

    def __call__(self, scores: Tensor, step: int) -> Tensor:
        s = self.settings
        if self.seen is not None:
            penalised = torch.where(scores < 0, scores * s.repetition_penalty, scores / s.repetition_penalty)
            scores = torch.where(self.seen[:, : self.vocab_size], penalised, scores)
        if s.no_repeat_ngram_size:
            scores = scores.masked_fill(self._repeated_ngram_ends(s.no_repeat_ngram_size), float("-inf"))
        if step < s.min_length and len(self.eos):
            scores = scores.index_fill(1, self.eos, float("-inf"))
        if self.any_excluded:
            scores = scores.masked_fill(self.excluded, float("-inf"))
        return scores

    def _repeated_ngram_ends(self, n: int) -> Tensor:
        """(N, V) True at tokens that would complete an n-gram already in the row's text."""
        ctx = self.context
        text = ctx.text()
        mask = torch.zeros(ctx.rows, self.vocab_size + 1, dtype=torch.bool, device=text.device)
        if ctx.end < n:
            return mask[:, : self.vocab_size]
        windows = text.unfold(1, n, 1)  # (N, end - n + 1, n): every n-gram, by start column
        suffix = text[:, ctx.end - n + 1:]  # the n - 1 newest tokens
        repeats = (windows[..., :-1] == suffix[:, None, :]).all(-1)
        # n-grams that start in the padding are not text; the suffix itself may reach into the
        # padding only if the row is shorter than n - 1, and then no window is real anyway.
        repeats &= ctx.columns[None, : windows.shape[1]] >= ctx.first_columns[:, None]
        mask.scatter_(1, torch.where(repeats, windows[..., -1], self.vocab_size), True)
        return mask[:, : self.vocab_size]

    def observe(self, token: Tensor) -> None:
        """Record the token (N,) just added to each row."""
        if self.seen is not None:
            self.seen.scatter_(1, token[:, None], True)

    def reorder(self, index: Tensor) -> None:
        if self.seen is not None:
            self.seen = self.seen.index_select(0, index)


def warp(scores: Tensor, temperature: float, top_k: int | None, top_p: float | None) -> Tensor:
    """Temperature, then top-k, then top-p (nucleus) filtering; filtered tokens get -inf."""
    if temperature not in (0, 1):
        scores = scores / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        ordered, order = torch.sort(scores, dim=-1, descending=True)
        scores = torch.empty_like(scores).scatter_(1, order, _nucleus(ordered, top_p))
    return scores


def _nucleus(ordered: Tensor, top_p: float) -> Tensor:
    """-inf on the tail of scores sorted in descending order: a token is dropped when the tokens
    more likely than it already reach top_p, so the most likely token is always kept."""
    probs = ordered.softmax(-1)
    return ordered.masked_fill((probs.cumsum(-1) - probs) >= top_p, float("-inf"))


def sample_token(scores: Tensor, temperature: float, top_k: int | None, top_p: float | None,
                 generator: torch.Generator | None = None) -> Tensor:
    """One token per row (N,) drawn from the warped distribution of scores (N, V).

    With top_k the work after the top-k selection is on k columns instead of the vocabulary;
    the draw has the same distribution as filtering the full scores with `warp`.
    """
    if top_k is None or top_k >= scores.shape[-1]:
        return race(warp(scores, temperature, None, top_p), generator)
    if temperature != 1:
        scores = scores / temperature
    values, indices = torch.topk(scores, top_k, dim=-1)  # sorted, most likely first
    if top_p is not None and top_p < 1:
        values = _nucleus(values, top_p)
    return indices.gather(-1, race(values, generator)[:, None]).squeeze(-1)


def race(scores: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw one column per row from softmax(scores) without a host round trip.

    argmax(p / E) with E ~ Exp(1) is a draw from p (the exponential-race form of Gumbel-max);
    unlike torch.multinomial it never synchronises with the device.
    """
    probs = scores.softmax(-1)
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    # An exact 0 draw would turn a filtered token's 0 / 0 into NaN, which argmax would pick.
    return (probs / noise.clamp_(min=torch.finfo(noise.dtype).tiny)).argmax(-1)
