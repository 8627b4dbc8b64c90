"""CIDEr-D rewards for SCST, scored by pycocoevalcap's own CiderScorer with training-set statistics.

`Cider().compute_score` takes its document frequencies (and the log of the image count) from the
references it is handed, so scoring one batch would judge n-grams by that batch alone. For SCST
the statistics come once from every training image's references (Rennie et al.), tokenised the
way evaluation tokenises, and each batch is scored against them. `_TrainingCider` keeps the
library's arithmetic; it only pins the two statistics that `compute_cider` would recompute.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from pycocoevalcap.cider.cider_scorer import CiderScorer

from xlab.captions.metrics import MetricTokenizer, tokenize
from xlab.common.errors import XLabError


class _TrainingCider(CiderScorer):
    """CiderScorer whose document frequencies and reference count are fixed from outside."""

    def __init__(self, document_frequency, log_images: float):
        super().__init__(n=4, sigma=6.0)
        self.document_frequency = document_frequency
        self._log_images = log_images

    # compute_cider assigns ref_len = log(len(crefs)) (the batch); the training value is kept.
    @property
    def ref_len(self) -> float:
        return self._log_images

    @ref_len.setter
    def ref_len(self, value) -> None:
        pass


class CiderReward:
    """CIDEr-D of captions against their references, with idf from the training references."""

    def __init__(self, training_references: Iterable[list[str]], tokenizer: MetricTokenizer = "simple"):
        refs = {str(i): r for i, r in enumerate(training_references)}
        if len(refs) < 2:
            raise XLabError("SCST needs the references of at least two training images for CIDEr-D's "
                            "document frequencies.")
        self.tokenizer = tokenizer
        counter = CiderScorer(n=4, sigma=6.0)
        for captions in tokenize(refs, tokenizer).values():
            counter.cook_append(None, captions)
        counter.compute_doc_freq()
        self.document_frequency = counter.document_frequency
        self.log_images = float(np.log(float(len(refs))))

    def __call__(self, captions: list[str], references: list[list[str]]) -> np.ndarray:
        """One score per caption; references[i] are caption i's references."""
        keys = [str(i) for i in range(len(captions))]
        hyps = tokenize(dict(zip(keys, ([c] for c in captions))), self.tokenizer)
        refs = tokenize(dict(zip(keys, references)), self.tokenizer)
        scorer = _TrainingCider(self.document_frequency, self.log_images)
        for key in keys:
            scorer.cook_append(hyps[key][0], refs[key])
        return np.asarray(scorer.compute_cider(), dtype=np.float64)
