"""Dialogue metrics on validation and test, logged next to the loss.

    {stage}/perplexity   (the LM metric) with turn-masked labels it is the perplexity of the replies
    {stage}/hits@1       the true reply ranked first among `candidates` (itself and replies drawn from
                         other episodes of the split) by the model's mean log-likelihood per token;
                         chance is 1 / candidates
    {stage}/f1           unigram F1 of the greedy reply (up to the turn-end token) against the
                         reference, after ParlAI's normalisation

The data module installs this callback when it is set up, so `validate` / `test` from a checkpoint
report the same numbers as training without any callback in the config.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from xlab.dialogue.text import unigram_f1


@torch.no_grad()
def candidate_scores(model, prompt: list[int], bodies: list[list[int]], max_len: int, pad_id: int) -> torch.Tensor:
    """Mean log-probability per token of each body after `prompt` (a sequence longer than the
    context loses tokens from the left of the prompt)."""
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
    return torch.stack([logp[i, s - 1: e - 1].mean() for i, (s, e) in enumerate(spans)])


def hits_at_1(model, examples: list[dict], max_len: int, pad_id: int) -> float:
    hits = 0
    for ex in examples:
        scores = candidate_scores(model, ex["prompt"], [ex["body"], *ex["negatives"]], max_len, pad_id)
        # Ties count against the model: the true reply must beat every candidate.
        hits += int(bool((scores[0] > scores[1:]).all()))
    return hits / max(1, len(examples))


def greedy_replies(model, prompts: list[list[int]], tokenizer, stop_ids: list[int], reply_tokens: int,
                   max_len: int, batch: int = 32) -> list[str]:
    from xlab import inference
    from xlab.inference import GenerationSettings

    settings = GenerationSettings(output_length=reply_tokens, temperature=0.0, eos_class=stop_ids, block_size=max_len)
    device = next(model.parameters()).device
    replies = []
    for i in range(0, len(prompts), batch):
        chunk = [torch.tensor(p, dtype=torch.long, device=device) for p in prompts[i:i + batch]]
        for outputs in inference.generate(model, chunk, settings):
            replies.append(tokenizer.decode(outputs[0]).strip())
    return replies


def dialogue_scores(model, datamodule, split: str) -> dict[str, float]:
    """Hits@1 and F1 of `model` on the split's evaluation examples."""
    examples = datamodule.eval_examples(split)
    if not examples:
        return {}
    max_len, tokenizer = datamodule.hparams.max_len, datamodule.tokenizer
    was_training = model.training
    model.eval()
    try:
        hits = hits_at_1(model, examples, max_len, tokenizer.pad_id)
        stops = [datamodule.renderer.turn_end_id, tokenizer.eos_id]
        replies = greedy_replies(model, [ex["prompt"] for ex in examples], tokenizer, stops,
                                 datamodule.hparams.reply_tokens, max_len)
    finally:
        model.train(was_training)
    f1 = sum(unigram_f1(r, ex["reference"]) for r, ex in zip(replies, examples)) / len(examples)
    return {"hits@1": hits, "f1": f1}


class DialogueMetrics(L.Callback):
    """Logs {stage}/hits@1 and {stage}/f1 at the end of each validation and test."""

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        split = "val" if stage == "val" else "test"
        for name, value in dialogue_scores(pl_module, trainer.datamodule, split).items():
            pl_module.log(f"{stage}/{name}", value, prog_bar=True, sync_dist=False, rank_zero_only=False)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "test")
