"""xlab/memory/telemetry.py: the last pass's measurements as they were recorded (detached), the means
since the last drain over the training passes only, then a fresh start; the memory's occupancy and
mean age read at the moment they are asked for; nothing recorded, nothing reported; a pass that
leaves out a measurement is refused."""

from __future__ import annotations

import pytest
import torch

from xlab.memory import AssociativeMemory
from xlab.memory.telemetry import PER_PASS, MemoryTelemetry, host_state


def measurements(*values: float) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(value) for name, value in zip(PER_PASS, values, strict=True)}


def memory_with(entries: int, ages: int) -> AssociativeMemory:
    memory = AssociativeMemory(64, 8, index_type="flat")
    memory.add(torch.randn(entries, 8, generator=torch.Generator().manual_seed(0)))
    for _ in range(ages):
        memory.step()
    return memory


def test_the_means_since_the_last_drain_over_training_passes_only():
    memory = memory_with(16, ages=3)
    telemetry = MemoryTelemetry()
    assert telemetry.drain(memory) == {} and telemetry.last_pass(memory) == {}  # nothing recorded yet
    telemetry.record(True, **measurements(0.5, 0.25, 0.0, 1.0, 0.125))
    telemetry.record(False, **measurements(9.0, 9.0, 9.0, 9.0, 9.0))  # evaluation: not in the training curve
    telemetry.record(True, **measurements(0.25, 0.75, 0.5, 0.0, 0.375))
    assert {k: float(v) for k, v in telemetry.last_pass(memory).items()} == {
        "store_rate": 0.25, "store_probability": 0.75, "delete_rate": 0.5, "hit_rate": 0.0, "reliance": 0.375,
        "occupancy": 16 / 64, "mean_age": 3.0}
    assert telemetry.drain(memory) == {"store_rate": 0.375, "store_probability": 0.5, "delete_rate": 0.25,
                                       "hit_rate": 0.5, "reliance": 0.25, "occupancy": 0.25, "mean_age": 3.0}
    assert telemetry.drain(memory) == {}  # drained: the next means start over
    memory.add(torch.randn(16, 8, generator=torch.Generator().manual_seed(1)))  # age 0: the mean halves
    telemetry.record(True, **measurements(1.0, 1.0, 1.0, 1.0, 1.0))
    assert telemetry.drain(memory) == {**dict.fromkeys(PER_PASS, 1.0), "occupancy": 0.5, "mean_age": 1.5}
    assert host_state(memory) == {"occupancy": 0.5, "mean_age": 1.5}


def test_the_last_pass_is_kept_detached_and_only_evaluation_passes_leave_the_sums_alone():
    telemetry = MemoryTelemetry()
    rate = torch.tensor(0.5, requires_grad=True)
    telemetry.record(False, **{**measurements(0.0, 0.0, 0.0, 0.0, 0.0), "store_probability": rate * 1})
    assert not telemetry.last["store_probability"].requires_grad and float(telemetry.last["store_probability"]) == 0.5
    assert telemetry.drain(memory_with(1, ages=0)) == {}  # only an evaluation pass: no training means
    counted = torch.tensor(3, dtype=torch.int64)  # integer counts are averaged as floats
    telemetry.record(True, **{**measurements(0.0, 0.0, 0.0, 0.0, 0.0), "hit_rate": counted})
    telemetry.record(True, **{**measurements(0.0, 0.0, 0.0, 0.0, 0.0), "hit_rate": torch.tensor(4)})
    assert telemetry.drain(memory_with(1, ages=0))["hit_rate"] == 3.5


def test_a_pass_missing_a_measurement_is_refused():
    telemetry = MemoryTelemetry()
    partial = measurements(0.1, 0.2, 0.3, 0.4, 0.5)
    del partial["reliance"]
    with pytest.raises(KeyError, match="reliance"):
        telemetry.record(True, **partial)
