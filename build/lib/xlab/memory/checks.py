"""Checks that turn a bad memory setting into a one-line XLabError naming the setting.

faiss and numpy would accept many wrong values (a float size, a bool count, NaN) and fail
later, far from the setting that caused it.
"""

from __future__ import annotations

import math
import numbers

from xlab.common.errors import XLabError


def check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise XLabError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise XLabError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise XLabError(f"unknown {name} {value!r}: use one of {', '.join(choices)}")
    return value
