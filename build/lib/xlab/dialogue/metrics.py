"""Dialogue metrics on validation and test, logged next to the loss.

    {stage}/perplexity   (the LM metric) with turn-masked labels it is the perplexity of the replies
    {stage}/hits@1       the true reply ranked first among `candidates` (itself and replies drawn from
                         other episodes of the split) by the model's mean log-likelihood per token
                         given the history; chance is 1 / candidates
    {stage}/hits@1_pmi   the same candidates ranked by how much the history raised each one's
                         log-likelihood: log p(reply | history) - log p(reply | no history), summed
                         over its tokens (pointwise mutual information)
    {stage}/f1           unigram F1 of the greedy reply (up to the turn-end token) against the
                         reference, after ParlAI's normalisation
    {stage}/*_se         the standard error of each over the `eval_examples` replies scored

Why both rankings: a small model's likelihood of a reply is mostly how fluent and common the reply
is, so likelihood ranking favours generic replies ("haha yes") over the one that fits. Subtracting
the reply's likelihood without the history leaves what the history contributed, which is what
ranking is meant to measure. `hits@1` stays the plain likelihood ranking the metric is usually
reported with. Ties count against the model in both.

The data module's `generation_evaluator` is a `DialogueEvaluator`; the `GenerationMetrics` callback
(which the CLI always installs) runs it at the end of each validation and test.
"""

from __future__ import annotations

import math
import statistics
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from xlab import inference
from xlab.dialogue.text import unigram_f1
from xlab.inference import GenerationSettings


@torch.no_grad()
def reply_log_probs(model, prompt: list[int], bodies: list[list[int]], max_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each body after `prompt`, and its number of tokens. A body keeps
    its first max_len // 2 tokens; a sequence still longer than the context loses tokens from the
    left of the prompt."""
    rows, spans = [], []
    for body in bodies:
        body = body[: max_len // 2]
        ids = (prompt + body)[-(max_len + 1):]
        rows.append(ids)
        spans.append((len(ids) - len(body), len(ids)))
    width = max(len(r) for r in rows)
    device = next(model.parameters()).device
    batch = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        batch[i, : len(r)] = torch.tensor(r, device=device)
    logits = model.batch_logits({"input_ids": batch[:, :-1]}).float()
    logp = F.log_softmax(logits, dim=-1).gather(-1, batch[:, 1:, None]).squeeze(-1)  # (N, width - 1)
    sums = torch.stack([logp[i, s - 1: e - 1].sum() for i, (s, e) in enumerate(spans)])
    return sums, torch.tensor([e - s for s, e in spans], dtype=sums.dtype, device=device)


def ranked_first(scores: torch.Tensor) -> bool:
    """Whether candidate 0 (the true reply) beats every other one: a tie is a miss."""
    return bool((scores[0] > scores[1:]).all())


def hits_at_1(model, examples: list[dict], max_len: int, pad_id: int, progress=None) -> dict[str, float]:
    """hits@1 (mean log-likelihood per token) and hits@1_pmi (summed log-likelihood given the
    history minus without it) over `examples`; `progress` is told of each example scored."""
    hits = {"hits@1": 0, "hits@1_pmi": 0}
    for ex in examples:
        if progress is not None:
            progress.update()
        bodies = [ex["body"], *ex["negatives"]]
        given, lengths = reply_log_probs(model, ex["prompt"], bodies, max_len, pad_id)
        alone, _ = reply_log_probs(model, ex["prior"], bodies, max_len, pad_id)
        hits["hits@1"] += ranked_first(given / lengths)
        hits["hits@1_pmi"] += ranked_first(given - alone)
    return {name: count / max(1, len(examples)) for name, count in hits.items()}


def greedy_replies(model, prompts: list[list[int]], tokenizer, stop_ids: list[int], reply_tokens: int,
                   max_len: int, batch: int = 32) -> list[str]:
    settings = GenerationSettings(output_length=reply_tokens, temperature=0.0, eos_class=stop_ids, block_size=max_len)
    device = next(model.parameters()).device
    replies = []
    for i in range(0, len(prompts), batch):
        chunk = [torch.tensor(p, dtype=torch.long, device=device) for p in prompts[i:i + batch]]
        for outputs in inference.generate(model, chunk, settings):
            replies.append(tokenizer.decode(outputs[0]).strip())
    return replies


def dialogue_scores(model, datamodule, split: str, announce: bool = False) -> dict[str, float]:
    """hits@1, hits@1_pmi and F1 of `model` on the split's evaluation examples, each with its standard
    error over that many examples (`*_se`). `announce`: say what is scored, show progress on a
    terminal, and print the results."""
    examples = datamodule.eval_examples(split)
    if not examples:
        return {}
    max_len, tokenizer = datamodule.hparams.max_len, datamodule.tokenizer
    n = len(examples)
    if announce:
        print(f"xlab: scoring {n} {split} replies for Hits@1 among {datamodule.hparams.candidates} and F1 of greedy "
              f"replies (data eval_examples bounds it)", file=sys.stderr, flush=True)
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=n, desc="hits@1", unit=" replies", file=sys.stderr, disable=None if announce else True,
                  leave=False) as bar:
            hits = hits_at_1(model, examples, max_len, tokenizer.pad_id, bar)
        stops = [datamodule.renderer.turn_end_id, tokenizer.eos_id]
        replies = greedy_replies(model, [ex["reply_prompt"] for ex in examples], tokenizer, stops,
                                 datamodule.hparams.reply_tokens, max_len)
    finally:
        model.train(was_training)
    f1 = [unigram_f1(r, ex["reference"]) for r, ex in zip(replies, examples)]
    scores = {**hits, "f1": sum(f1) / n}
    errors = {f"{name}_se": math.sqrt(p * (1 - p) / n) for name, p in hits.items()}
    errors["f1_se"] = statistics.stdev(f1) / math.sqrt(n) if n > 1 else 0.0
    if announce:
        shown = ", ".join(f"{name} {scores[name]:.3f} ± {errors[name + '_se']:.3f}" for name in scores)
        print(f"xlab: {split} {shown} (standard errors over {n} replies)", file=sys.stderr, flush=True)
    return {**scores, **errors}


class DialogueEvaluator:
    """hits@1, hits@1_pmi and F1 of a model on the split's evaluation examples, once per epoch (the
    batches are not needed: the examples are the data module's)."""

    def __init__(self, datamodule):
        self.datamodule = datamodule

    def update(self, model, batch) -> None:
        """Nothing to gather per batch."""

    def compute(self, model, stage: str) -> dict[str, float]:
        announce = stage == "test" and (not dist.is_available() or not dist.is_initialized() or dist.get_rank() == 0)
        return dialogue_scores(model, self.datamodule, stage, announce=announce)
