"""bench/retro_text.py: the overlap buckets, the database subsets, the per-bucket scores, the
sampling-path check, and `--quick` end to end on the machine's licence texts (seconds; the
measured run trains for minutes)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.helpers import load_script
from tests.helpers import retro_data as tiny_data
from tests.retro.helpers import tiny_model
from xlab.retro.datamodule import RetroEvalDataset

bench = load_script("bench/retro_text")


def test_overlap_buckets_count_the_documents_8_grams_found_in_the_database():
    database = np.arange(1, 41)
    copied = np.arange(5, 17)  # 12 tokens, all 5 of its 8-grams in the database
    unseen = np.arange(100, 116)
    half = np.concatenate([np.arange(21, 29), np.arange(200, 208)])  # 9 8-grams, the first one found
    mostly = np.concatenate([np.arange(1, 16), [300]])  # 8 of 9 found
    tokens = np.concatenate([copied, unseen, half, mostly, [1, 2, 3]])  # the last: shorter than an 8-gram
    offsets = np.cumsum([0, 12, 16, 16, 16, 3])
    shares = bench.overlap_fractions(tokens, offsets, database)
    assert shares == pytest.approx([1.0, 0.0, 1 / 9, 8 / 9, 0.0])
    assert [bench.bucket_of(s) for s in shares] == ["most", "none", "some", "most", "none"]
    assert bench.bucket_of(0.1) == "some" and bench.bucket_of(0.5) == "most"


def test_database_subsets_take_whole_documents_in_order():
    tokens, offsets = np.arange(10), np.array([0, 2, 5, 6, 10])
    part, part_offsets = bench.first_documents(tokens, offsets, 1 / 2)
    assert part.tolist() == [0, 1, 2, 3, 4] and part_offsets.tolist() == [0, 2, 5]
    assert bench.first_documents(tokens, offsets, 1 / 8)[1].tolist() == [0, 2]  # at least one document
    joined, joined_offsets = bench.joined((tokens, offsets), (np.array([7, 8, 9]), np.array([0, 1, 3])))
    assert joined.tolist() == [*range(10), 7, 8, 9] and joined_offsets.tolist() == [0, 2, 5, 6, 10, 11, 13]


def test_scores_by_bucket():
    # Two documents: 8 copied tokens then 8 unseen ones; the labels are tokens 1..15.
    tokens = np.concatenate([np.arange(1, 9), np.arange(100, 108)])
    token_bytes = np.full(200, 2)
    scorer = bench.Scorer(tokens, np.array([0, 8, 16]), 15, np.arange(1, 9), token_bytes)
    nll = np.where(np.arange(15) < 7, 1.0, 3.0)  # labels 0-6 are document 0's
    rows = scorer(nll)
    assert rows["most"] == pytest.approx((math.e, 1 / math.log(2) / 2, 1))
    assert rows["none"] == pytest.approx((math.exp(3.0), 3 / math.log(2) / 2, 1))
    assert rows["overall"][0] == pytest.approx(math.exp((7 + 3 * 8) / 15)) and "some" not in rows


def test_the_sampling_path_scores_as_the_training_path(corpus_dir, tmp_path):
    torch.set_num_threads(1)
    dm = tiny_data(corpus_dir, tmp_path)
    model = tiny_model(vocab_size=dm.vocab_size)
    s = replace(bench.QUICK, max_len=16, chunk_size=4, k=2)
    tokens = dm.tokens["val"]
    sampled = bench.sampling_path_nll(model, dm.database, tokens, s, 3)
    trained = bench.token_nll(model, RetroEvalDataset(tokens[:3 * 16 + 1], 16, dm.token_bytes, dm.database,
                                                      "neighbours", 2))
    np.testing.assert_allclose(sampled, trained, rtol=1e-4, atol=1e-5)
    assert model.database is None  # the check leaves the model as it found it


def test_the_quick_run_prints_every_section_and_target(capsys):
    bench.main(["--quick"])
    out = capsys.readouterr().out
    for line in ("validation: perplexity", "database size:", "fitting: plain decoder", "sampling path:",
                 "met      sampling path within 1% of the training path: +0.000%"):
        assert line in out, out
    assert out.count("all + extra") == 1 and "RETRO-fitted >= half the scratch gain" in out
