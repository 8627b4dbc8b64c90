"""The learning-rate schedules, written out: warmup, then cosine or the trapezoid's flat top and linear cooldown."""

from __future__ import annotations

import pytest

from xlab.models.schedule import Trapezoid, WarmupCosine


def test_warmup_then_cosine():
    factor = WarmupCosine(10, 110, 0.1)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.55) and factor(110) == pytest.approx(0.1) and factor(500) == pytest.approx(0.1)


def test_trapezoid_holds_the_peak_then_cools_down_linearly():
    factor = Trapezoid(10, 110, 0.1, cooldown_fraction=0.2)  # 100 steps after warmup: cooldown from step 90
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(50) == pytest.approx(1.0) and factor(90) == pytest.approx(1.0)
    assert factor(100) == pytest.approx(0.1 + 0.9 * 0.5) and factor(110) == pytest.approx(0.1)
    assert factor(500) == pytest.approx(0.1)
    assert Trapezoid(0, 10, 0.0, cooldown_fraction=0.0)(9) == 1.0  # no cooldown: the peak to the end


def test_a_rewarmed_trapezoid_starts_over_from_the_step_it_was_extended():
    factor = Trapezoid(10, 110, 0.1, cooldown_fraction=0.2)
    notice = factor.extend_(110, 210, "rewarm")
    assert "trapezoid to step 110" in notice and "rewarm" in notice
    assert factor(110) == pytest.approx(0.1) and factor(150) == 1.0 and factor(210) == pytest.approx(0.1)
    assert "stays at its final" in Trapezoid(10, 110, 0.1, 0.2).extend_(110, 210, "keep")
