"""Self-critical sequence training (Rennie et al. 2017) for CaptionModel: optimise CIDEr-D directly.

Per batch: draw `scst_samples` captions per image with the inference code (temperature
`scst_temperature`), score each with CIDEr-D against the image's references (document
frequencies from the training references, `xlab.captions.reward`), and subtract a baseline:
    greedy   the CIDEr-D of the greedy caption of the same image (Rennie et al.)
    mean     the mean reward of the image's other samples (Luo 2020; needs >= 2 samples)
The loss is -advantage * log p(sample) summed over the sample's tokens (its end token included
when it ended), averaged over samples; `scst_ce_weight` mixes in the cross-entropy loss.
Logged: train/reward, train/baseline, train/advantage, train/scst_loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from xlab.common.tokenizer import IGNORE_INDEX
from xlab.inference import GenerationSettings


def scst_step(model, batch: dict[str, Any]) -> Tensor:
    hp = model.hparams
    tokenizer = model.tokenizer
    prefix = model.encode(batch)
    prompts, references = batch["prompt"], batch["references"]
    k, length = hp.scst_samples, hp.max_caption_tokens
    sampling = GenerationSettings(output_length=length, eos_class=tokenizer.eos_id,
                                  temperature=hp.scst_temperature, num_samples=k)
    samples = [[t.clone() for t in row] for row in model.caption(prefix.detach(), prompts, sampling)]
    texts = [tokenizer.decode(t) for row in samples for t in row]
    rewards = torch.tensor(model.reward(texts, [r for r in references for _ in range(k)]), dtype=torch.float32)
    rewards = rewards.view(len(prompts), k)
    if hp.scst_baseline == "greedy":
        greedy = GenerationSettings(output_length=length, eos_class=tokenizer.eos_id, temperature=0.0)
        best = model.caption(prefix.detach(), prompts, greedy)
        baseline = torch.tensor(model.reward([tokenizer.decode(r[0]) for r in best], list(references)),
                                dtype=torch.float32)[:, None].expand(-1, k)
    else:
        baseline = (rewards.sum(1, keepdim=True) - rewards) / (k - 1)
    advantage = (rewards - baseline).to(model.device)

    # Teacher-forced log-probabilities of the samples, with gradients this time.
    rows, labels = [], []
    for prompt, row in zip(prompts, samples):
        for tokens in row:
            ended = [tokenizer.eos_id] if len(tokens) < length else []
            sequence = [*prompt, *tokens.tolist(), *ended]
            rows.append(sequence[:-1])
            labels.append([IGNORE_INDEX] * (len(prompt) - 1) + sequence[len(prompt):])
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long, device=model.device)
    target = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long, device=model.device)
    for i, (r, lab) in enumerate(zip(rows, labels)):
        input_ids[i, : len(r)] = torch.tensor(r)
        target[i, : len(lab)] = torch.tensor(lab)
    logits = model.prefixed_logits(prefix.repeat_interleave(k, dim=0), input_ids)
    nll = F.cross_entropy(logits.transpose(1, 2).float(), target, ignore_index=IGNORE_INDEX, reduction="none")
    log_prob = -nll.sum(1).view(len(prompts), k)
    loss = -(advantage * log_prob).mean()
    size = len(prompts)
    model.log("train/scst_loss", loss, batch_size=size)
    if hp.scst_ce_weight > 0:
        ce, _ = model.loss_and_stats(batch)
        loss = (1 - hp.scst_ce_weight) * loss + hp.scst_ce_weight * ce
    model.log_dict({"train/reward": rewards.mean(), "train/baseline": baseline.mean(),
                    "train/advantage": advantage.mean().cpu()}, prog_bar=True, batch_size=size)
    model.log("train/loss_step", loss, batch_size=size)
    return loss
