"""bench/recipe.py's table: each (d) row is the new recipe with exactly one switch turned back,
each (e) row adds exactly one; `--rows` picks rows and always keeps the baseline; the tokens-to-
baseline fraction is the first validation point at or under the baseline's final loss."""

from __future__ import annotations

import pytest

from tests.helpers import load_script

bench = load_script("bench/recipe")


def test_each_ablation_row_differs_from_the_new_recipe_in_its_switch_alone():
    table = bench.rows()
    new = table["(c) new"]
    for name, (on, off) in bench.NEW.items():
        assert {k: new[k] for k in on} == on
        row = table[f"(d) new - {name}"]
        assert {k for k in new if row[k] != new[k]} == {k for k in off if off[k] != on[k]}
    for name, on in bench.EXTRA.items():
        row = table[f"(e) new + {name}"]
        assert {k for k in row if row.get(k) != new.get(k)} == set(on)


def test_rows_are_picked_by_letter_or_switch_and_the_baseline_always_runs():
    table = bench.rows()
    assert list(bench.pick(table, "c")) == ["(a) baseline", "(c) new"]
    assert list(bench.pick(table, "b,d:relu2")) == ["(a) baseline", "(b) default", "(d) new - relu2"]
    assert len(bench.pick(table, "d")) == 1 + len(bench.NEW)
    assert bench.pick(table, None) is table
    with pytest.raises(SystemExit, match="no row 'd:nope'; rows are a, b, c, d, e"):
        bench.pick(table, "d:nope")


def test_first_reach_is_the_first_point_at_or_under_the_target():
    curve = [(10, 5.0), (20, 4.2), (30, 4.0), (40, 3.9)]
    assert bench.first_reach(curve, 4.0, 40) == 0.75
    assert bench.first_reach(curve, 4.5, 40) == 0.5
    assert bench.first_reach(curve, 3.0, 40) is None
