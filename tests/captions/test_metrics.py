"""The COCO caption metrics come from pycocoevalcap, METEOR included once; without Java, METEOR and the
PTB tokenizer are skipped with the reason and the Python scorers still run; SPICE is reported
unavailable. SCST's CIDEr-D reward uses the training references' document frequencies."""

from __future__ import annotations

import pytest

from xlab.captions import metrics
from xlab.captions.reward import CiderReward
from xlab.captions.synthetic import references

REFS = {str(i): references(i, None) for i in range(40)}


def test_scores_with_java_meteor_included():
    if metrics.java_problem() is not None:
        pytest.fail(f"these machines have Java: {metrics.java_problem()}")
    hyps = {k: v[0] for k, v in REFS.items()}
    hyps["0"] = "a dog on a sofa"
    scores, skipped = metrics.caption_scores(REFS, hyps, "ptb", meteor=True)
    assert set(scores) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"}
    assert 0.9 < scores["bleu4"] <= 1 and 0.5 < scores["meteor"] <= 1 and scores["cider"] > 5
    assert "SPICE" in skipped["spice"] and "meteor" not in skipped
    perfect, _ = metrics.caption_scores(REFS, {k: v[0] for k, v in REFS.items()}, "simple", meteor=False)
    assert perfect["cider"] > scores["cider"]


def test_without_java_meteor_is_skipped_with_the_reason(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    metrics.java_problem.cache_clear()
    try:
        scores, skipped = metrics.caption_scores(REFS, {k: v[1] for k, v in REFS.items()}, "ptb", meteor=True)
    finally:
        metrics.java_problem.cache_clear()
    assert "no java on PATH" in skipped["meteor"] and "simple tokenizer" in skipped["ptb_tokenizer"]
    assert scores["bleu1"] > 0.5 and scores["cider"] > 1 and "meteor" not in scores


def test_simple_tokenizer_drops_what_ptb_drops():
    assert metrics.simple_tokenize("Two RED circles, on the left!") == "two red circles on the left"
    assert metrics.simple_tokenize("A dog's ball... here") == "a dog's ball here"


def test_cider_reward_uses_training_statistics():
    reward = CiderReward(list(REFS.values()), "simple")
    scores = reward([references(3, None)[0], "a purple dog", references(4, None)[0]],
                    [references(3, None), references(3, None), references(3, None)])
    assert scores[0] > scores[2] > scores[1] == 0
    # One batch of one image: Cider() alone would give every n-gram idf 0; training statistics do not.
    assert reward([references(3, None)[0]], [references(3, None)])[0] > 1
