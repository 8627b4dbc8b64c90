"""xlab/dialogue/filters.py: filters clear examples (trained turns), not episodes; duplicates, length,
broken unicode and near-duplicate replies, seeded; an unknown filter is named with the known ones."""

from __future__ import annotations

import pytest

from xlab.common.errors import XLabError
from xlab.dialogue.episode import Episode, Turn
from xlab.dialogue.filters import apply_filters, build_filter


def test_filters_clear_examples_not_episodes():
    def ep(name, *replies):
        return Episode(name, "t", [t for r in replies for t in (Turn("User", "hi", False), Turn("Bot", r, True))])

    eps = [ep("e0", "hello", "sure thing"), ep("e1", "hello", "sure thing"), ep("e2", "x" * 50),
           ep("e3", "hello there", "y" * 50)]
    kept, counts = apply_filters(eps, [build_filter("duplicates"), build_filter("length?max_chars=20")])
    assert counts["duplicates"] == 2 and counts["length"] == 2 and counts["episodes_dropped"] == 2
    assert [e.id for e in kept] == ["e0", "e3"]  # e1 repeats e0, e2 has no trained turn left
    assert kept[1].turns[3].train is False and len(kept[1].turns) == 4  # the turn stays as history


def test_broken_unicode_and_near_duplicates_are_seeded():
    flood = "he\u0301\u0302\u0303\u0304\u0305llo"
    eps = [Episode(f"e{i}", "t", [Turn("Bot", "The cat!" if i < 6 else f"reply {i}", True)]) for i in range(10)]
    eps.append(Episode("z", "t", [Turn("Bot", flood, True)]))
    assert build_filter("unicode").rejects(eps) == {(10, 0)}
    first = build_filter("near_duplicates?max_repeats=2&seed=1").rejects(eps)
    assert len(first) == 4 and first == build_filter("near_duplicates?max_repeats=2&seed=1").rejects(eps)
    with pytest.raises(XLabError, match="there is no filter 'nope': use one of duplicates"):
        build_filter("nope")
