"""What MemoryGPT2's memory did, kept on the device and turned into numbers only when logged.

Every pass measures its store, delete and hit rates as tensors on the model's device; reading
one as a number makes the host wait for the device, so they are summed there and read once per
logging step (the trainer's `log_every_n_steps`), as means over the passes since the last log.
The memory's own occupancy and mean age are host numbers and are read at the same moment.
"""

from __future__ import annotations

import torch
from torch import Tensor

from xlab.memory.associative import AssociativeMemory

# Measured per pass, on the device: what the names say, averaged over tokens or proposals.
PER_PASS = ("store_rate", "store_probability", "delete_rate", "hit_rate", "reliance")


class MemoryTelemetry:
    """The last pass's measurements and their running sums since the last `drain`."""

    def __init__(self) -> None:
        self.last: dict[str, Tensor] = {}
        self._sums: Tensor | None = None
        self._passes = 0

    def record(self, logged: bool, **values: Tensor) -> None:
        """One pass's measurements (0-dim tensors, one per name in PER_PASS); `logged` adds
        them to the sums (training passes: evaluation passes are not in the training curves)."""
        self.last = {name: values[name].detach() for name in PER_PASS}
        if not logged:
            return
        stacked = torch.stack([value.float() for value in self.last.values()])
        self._sums = stacked if self._sums is None else self._sums + stacked
        self._passes += 1

    def last_pass(self, memory: AssociativeMemory) -> dict[str, Tensor | float]:
        """The last pass's measurements (device tensors) and the memory's state now."""
        return {**self.last, **host_state(memory)} if self.last else {}

    def drain(self, memory: AssociativeMemory) -> dict[str, float]:
        """Means since the last drain as numbers (one copy from the device), then start over."""
        if self._sums is None:
            return {}
        means = (self._sums / self._passes).tolist()
        self._sums, self._passes = None, 0
        return {**dict(zip(PER_PASS, means)), **host_state(memory)}


def host_state(memory: AssociativeMemory) -> dict[str, float]:
    stats = memory.stats()
    return {"occupancy": stats["occupancy"], "mean_age": stats["mean_age"]}
