"""Scoring a CaptionModel by its captions at validation and test.

Every image of the split is captioned (greedy, or beam search with the model's `eval_num_beams`)
and the captions are scored against the references with pycocoevalcap (BLEU-1..4, ROUGE-L,
CIDEr-D, and METEOR when asked). `CaptionDataModule.generation_evaluator` gives one to the
`GenerationMetrics` callback; under DDP each rank captions its own images and the captions are
gathered before scoring, so every rank logs the same numbers.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from xlab.captions.metrics import caption_scores
from xlab.inference import GenerationSettings


class CaptionEvaluator:
    """Captions of a split's images and their COCO caption metrics."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.generated: list[tuple[str, list[str]]] = []
        self._told_skipped = False

    def reset(self) -> None:
        self.generated = []

    def update(self, model, batch: dict[str, Any]) -> None:
        hp = model.hparams
        settings = GenerationSettings(output_length=hp.max_caption_tokens, eos_class=self.tokenizer.eos_id,
                                      temperature=0.0, num_beams=hp.eval_num_beams)
        results = model.caption(model.encode(batch), batch["prompt"], settings)
        for tokens, references in zip(results, batch["references"]):
            self.generated.append((self.tokenizer.decode(tokens[0]), list(references)))

    def compute(self, model, stage: str) -> dict[str, float]:
        generated = self.generated
        if dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, generated)
            generated = [g for part in gathered for g in part]
        self.reset()
        if not generated:
            return {}
        hypotheses = {str(i): h for i, (h, _) in enumerate(generated)}
        references = {str(i): r for i, (_, r) in enumerate(generated)}
        scores, skipped = caption_scores(references, hypotheses, model.hparams.metric_tokenizer, model.hparams.meteor)
        if not self._told_skipped and (not dist.is_initialized() or dist.get_rank() == 0):
            self._told_skipped = True
            for metric, reason in skipped.items():
                print(f"xlab: {metric} not computed: {reason}", flush=True)
        return {name: float(value) for name, value in scores.items()}
