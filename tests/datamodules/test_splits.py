import collections

import pytest

from xlab.common.errors import XLabError
from xlab.datamodules.splits import SPLITS, check_fractions, split_of

FRACTIONS = (0.9, 0.05, 0.025, 0.025)


def test_split_is_deterministic_and_proportional():
    ids = [f"doc-{i}" for i in range(20000)]
    first = [split_of(i, FRACTIONS) for i in ids]
    assert first == [split_of(i, FRACTIONS) for i in ids]
    counts = collections.Counter(first)
    for name, fraction in zip(SPLITS, FRACTIONS):
        assert abs(counts[name] / len(ids) - fraction) < 0.01


def test_documents_keep_their_split_when_the_corpus_grows():
    small = {f"doc-{i}": split_of(f"doc-{i}", FRACTIONS) for i in range(1000)}
    grown = {f"doc-{i}": split_of(f"doc-{i}", FRACTIONS) for i in reversed(range(3000))}
    assert all(grown[k] == v for k, v in small.items())


def test_salt_changes_the_split():
    ids = [f"doc-{i}" for i in range(500)]
    assert [split_of(i, FRACTIONS, 0) for i in ids] != [split_of(i, FRACTIONS, 1) for i in ids]


def test_zero_fraction_split_gets_nothing():
    assert "predict" not in {split_of(f"d{i}", (0.9, 0.05, 0.05, 0.0)) for i in range(5000)}


@pytest.mark.parametrize("bad", [(0.9, 0.1), (0.5, 0.5, 0.5, -0.5), (0.0, 0.5, 0.25, 0.25), (0.9, 0.05, 0.05, 0.05)])
def test_bad_fractions_are_clear_errors(bad):
    with pytest.raises(XLabError, match="split"):
        check_fractions(bad)
