"""Beam search with the semantics of `transformers` `generate(num_beams=...)`, so both give the same
tokens on the same weights.

Per prompt and step: every beam's scores are log-softmax plus processing plus the beam's running
log-probability; the best (1 + number of eos ids, at least 2) x num_beams continuations are kept so
that num_beams of them can go on even if many just ended. Ended continuations among the top
num_beams compete for the num_beams finished slots with score / new_length ** length_penalty (the
eos counts in the length). The search stops when every continuation ends, when early_stopping is
True and num_beams hypotheses are finished, or when the best running beam can no longer beat the
worst finished one (estimated at the current length, or at output_length under "never" with a
positive length penalty). -1e9, not -inf, marks excluded entries: it keeps sums finite and matches
the reference arithmetic, and therefore its tie-breaking, exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from xlab.inference.context import SlidingContext
from xlab.inference.processors import ScoreProcessor
from xlab.inference.settings import GenerationSettings
from xlab.inference.stopping import StopStrings

_EXCLUDED = -1.0e9


class _Hypotheses:
    """num_beams sequences per prompt with their scores, as (B, K, ...) tensors."""

    def __init__(self, tokens: Tensor, scores: Tensor, lengths: Tensor, finished: Tensor):
        self.tokens, self.scores, self.lengths, self.finished = tokens, scores, lengths, finished

    def best_of(self, other: _Hypotheses, k: int) -> _Hypotheses:
        """The k best of both sets (sorted, best first)."""
        scores = torch.cat([self.scores, other.scores], dim=1)
        keep = torch.topk(scores, k, dim=1).indices
        return _Hypotheses(_take(torch.cat([self.tokens, other.tokens], 1), keep), _take(scores, keep),
                           _take(torch.cat([self.lengths, other.lengths], 1), keep),
                           _take(torch.cat([self.finished, other.finished], 1), keep))


def _take(tensor: Tensor, index: Tensor) -> Tensor:
    """Rows `index` (B, k) along dim 1 of a (B, n, ...) tensor."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


def beam_rows(model, prompts: list[Tensor], settings: GenerationSettings, vocab_size: int, block_size: int,
              pad_id: int, decode: Callable | None = None) -> list[list[Tensor]]:
    """The best `num_samples` hypotheses (new tokens, eos excluded) of each prompt, best first."""
    s = settings
    B, K, steps = len(prompts), s.num_beams, s.output_length
    candidates = max(2, 1 + len(s.eos_ids)) * K
    rows = [p for p in prompts for _ in range(K)]
    context = SlidingContext(model, rows, block_size, s.keep(block_size), steps, pad_id)
    process = ScoreProcessor(s, context, vocab_size)
    stops = StopStrings(s.stop_strings, decode) if s.stop_strings else None
    device = context.tokens.device

    running_tokens = torch.full((B, K, steps), pad_id, dtype=torch.long, device=device)
    # Only the first beam starts live, so the first step does not pick the same token K times.
    running_scores = torch.full((B, K), _EXCLUDED, device=device)
    running_scores[:, 0] = 0.0
    done = _Hypotheses(running_tokens.clone(), torch.full((B, K), _EXCLUDED, device=device),
                       torch.zeros(B, K, dtype=torch.long, device=device),
                       torch.zeros(B, K, dtype=torch.bool, device=device))
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    in_top_k = torch.arange(candidates, device=device) < K
    row_offsets = torch.arange(B, device=device)[:, None] * K

    logits = context.prefill()
    for step in range(steps):
        log_probs = process(torch.log_softmax(logits.float(), dim=-1), step)
        totals = (log_probs.view(B, K, vocab_size) + running_scores[..., None]).view(B, K * vocab_size)
        cand_scores, cand_index = torch.topk(totals, candidates, dim=1)
        cand_beam, cand_token = cand_index // vocab_size, cand_index % vocab_size
        cand_tokens = _take(running_tokens, cand_beam)
        cand_tokens[:, :, step] = cand_token
        ends = torch.isin(cand_token, process.eos) | (step + 1 >= steps)
        if stops is not None and step + 1 >= s.min_length:
            ends |= _stop_hits(cand_tokens[:, :, : step + 1], stops)

        alive_scores = cand_scores + ends.float() * _EXCLUDED
        keep = torch.topk(alive_scores, K, dim=1).indices
        running_tokens, running_scores = _take(cand_tokens, keep), _take(alive_scores, keep)
        source = _take(cand_beam, keep)

        final_scores = cand_scores / ((step + 1) ** s.length_penalty)
        if s.early_stopping is True:
            final_scores = final_scores + done.finished.all(1, keepdim=True).float() * _EXCLUDED
        final_scores = final_scores + (~improvable).float() * _EXCLUDED
        just_ended = ends & in_top_k
        final_scores = final_scores + (~just_ended).float() * _EXCLUDED
        lengths = torch.full_like(cand_token, step + 1)
        done = done.best_of(_Hypotheses(cand_tokens, final_scores, lengths, just_ended), K)

        improvable &= _can_improve(running_scores, done, step + 1, steps, s)
        if not _should_continue(improvable, done, ends, s):
            break
        index = (source + row_offsets).view(-1)
        context.reorder(index)
        process.reorder(index)
        token = running_tokens[:, :, step].reshape(-1)
        logits = context.append(token)
        process.observe(token)
    return _results(done, s.num_samples, set(s.eos_ids))


def _can_improve(running_scores: Tensor, done: _Hypotheses, new_length: int, steps: int,
                 s: GenerationSettings) -> Tensor:
    """(B, 1): could the best running beam still beat the worst finished hypothesis?"""
    length = steps if (s.early_stopping == "never" and s.length_penalty > 0) else new_length
    best_possible = running_scores[:, :1] / (length ** s.length_penalty)
    worst = torch.where(done.finished, done.scores.min(1, keepdim=True).values, _EXCLUDED)
    return (best_possible > worst).any(-1, keepdim=True)


def _should_continue(improvable: Tensor, done: _Hypotheses, ends: Tensor, s: GenerationSettings) -> bool:
    all_finished = s.early_stopping is True and bool(done.finished.all())
    return bool(improvable.any()) and not all_finished and not bool(ends.all())


def _stop_hits(tokens: Tensor, stops: StopStrings) -> Tensor:
    """(B, C) whether each candidate's new tokens contain a stop string."""
    B, C, _ = tokens.shape
    hits = [stops(seq) for seq in tokens.reshape(B * C, -1).tolist()]
    return torch.tensor(hits, dtype=torch.bool, device=tokens.device).view(B, C)


def _results(done: _Hypotheses, count: int, eos: set[int]) -> list[list[Tensor]]:
    lengths = done.lengths.tolist()
    results = []
    for b, row in enumerate(lengths):
        best = []
        for k in range(count):
            tokens = done.tokens[b, k, : row[k]]
            if row[k] and int(tokens[-1]) in eos:
                tokens = tokens[:-1]
            best.append(tokens)
        results.append(best)
    return results
