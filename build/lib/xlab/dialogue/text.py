"""Text normalisation shared by the near-duplicate filter and the F1 metric (ParlAI's rules)."""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Lowercase, punctuation and the articles a / an / the removed, whitespace collapsed (ParlAI)."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def unigram_f1(guess: str, reference: str) -> float:
    """F1 of the normalised words of `guess` against `reference` (bags of words, as ParlAI)."""
    g, r = normalize_answer(guess).split(), normalize_answer(reference).split()
    common = sum((Counter(g) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(g), common / len(r)
    return 2 * precision * recall / (precision + recall)
