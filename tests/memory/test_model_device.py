"""MemoryGPT2 with its memory held on the model's device (a DeviceMemory): the same memory,
tokens and (to rounding) losses as with the host memory, and a training pass in which the
memory makes the host wait for nothing.

A GPU is where that memory lives for users; the routing is widened to the CPU here, as in
tests/memory/test_device_search.py, so the same code runs. Both sides search on the device:
a matmul over the same slots (the host memory keeps a device copy for it), so what is compared
is everything else. How that search differs from faiss's own arithmetic is
tests/memory/test_device_search.py's subject. The losses may differ in their last bits: the
device memory's delete votes come padded to a fixed size, so the delete head's gradient sums
over more (zero) rows, in another order."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.memory.helpers import exact_batches, exact_decoding, exact_model, exact_training
from xlab.memory import MemoryStore, associative
from xlab.memory.votes import PAD

SCENARIOS = {"documents": {}, "all_scope": dict(memory_scope="all", forget_documents=False, eviction="oldest")}


@pytest.fixture
def on_cpu_too(monkeypatch):
    monkeypatch.setattr(associative, "SEARCH_ON_DEVICE_TYPES", frozenset({"cuda", "cpu"}))


def train(settings: dict):
    model = exact_model(memory_device="auto", **settings)
    return model, exact_training(model, 6), model.memory.on_device


def same_weights_(model, like) -> None:
    """Give `model` the weights of `like`: after training they differ in the last bits (see above),
    enough to flip a greedy choice between near-equal tokens, so decoding is compared from equal ones."""
    with torch.no_grad():
        for mine, theirs in zip(model.parameters(), like.parameters(), strict=True):
            mine.copy_(theirs)


def comparable(facts: dict) -> dict:
    """Memory facts without what the two keep differently on purpose: padding votes, and the
    host's open lists still naming entries removed since (closing them later removes nothing)."""
    return {**facts, "pending": [i for i in facts["pending"] or [] if i != PAD],
            "open": [pair for pair in facts["open"] if pair[1] in facts["ids"]]}


def close(a: list[str], b: list[str]) -> bool:
    return all(float.fromhex(x) == pytest.approx(float.fromhex(y), rel=1e-5, abs=1e-7) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_device_memory_trains_and_decodes_as_the_host_memory(name, on_cpu_too, monkeypatch):
    device_model, device_trained, placed = train(SCENARIOS[name])
    device_decoded = exact_decoding(device_model)
    assert placed
    with monkeypatch.context() as patch:
        patch.setattr(MemoryStore, "_place", lambda self, device: None)  # the entries stay on the host
        host_model, host_trained, placed = train(SCENARIOS[name])
        same_weights_(host_model, device_model)
        host_decoded = exact_decoding(host_model)
    assert not placed
    assert close(device_trained["losses"], host_trained["losses"])
    for mine, theirs in zip(device_trained["telemetry"], host_trained["telemetry"], strict=True):
        assert mine.keys() == theirs.keys() and close(list(mine.values()), list(theirs.values()))
    assert comparable(device_trained["memory"]) == comparable(host_trained["memory"])
    assert device_decoded["tokens"] == host_decoded["tokens"]
    assert comparable(device_decoded["memory"]) == comparable(host_decoded["memory"])
    assert len(device_trained["memory"]["pending"]) > len(comparable(device_trained["memory"])["pending"]) > 0


# Operations after which the host must wait for the device to know a value or a size.
WAITS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten._unique2.default",
         "aten.unique_dim.default", "aten.unique_consecutive.default", "aten.masked_select.default",
         "aten.repeat_interleave.Tensor", "aten.masked_scatter.default"}


class HostWaits(TorchDispatchMode):
    """Records every operation that, on a GPU, would make the host wait for the device: reading
    a value (item, int, bool), sizes that depend on values (nonzero, unique, boolean indexing)."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        masked = name.startswith(("aten.index.", "aten.index_put")) and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()) or ())
        if name in WAITS or masked:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def training_pass(model, batch):
    inputs = {"input_ids": batch[:, :-1], "labels": batch[:, 1:], "num_bytes": torch.zeros(len(batch))}
    loss, _ = model.loss_and_stats(inputs)
    if model.memory is not None:
        loss = loss + model.lm_loss(inputs["labels"]) + model.memory_loss
    loss.backward()


def waits_of_a_pass(model, batches) -> list[str]:
    """What the third of `batches` waits for, after two passes that fill the memory, cast votes
    (which wait a pass) and open documents."""
    model.train()
    for batch in batches[:2]:
        training_pass(model, batch)
    with HostWaits() as waits:
        training_pass(model, batches[2])
    return waits.seen


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_device_memory_adds_no_wait_to_a_training_pass(name, on_cpu_too):
    batches = exact_batches(3)
    model = exact_model(memory_device="auto", **SCENARIOS[name])
    with_memory = waits_of_a_pass(model, batches)
    assert model.memory.on_device and len(model.memory.entries) > 0
    # GPT-2 alone: transformers checks the default positions for packed sequences, once per
    # pass, unless the transformer is compiled (`compile: true`), which skips the check.
    without = waits_of_a_pass(exact_model(use_memory=False), batches)
    assert with_memory == without == ["aten._local_scalar_dense.default"]
    # The host memory waits (for the entries it stores, the votes it counts): the check sees them.
    host = waits_of_a_pass(exact_model(memory_device="cpu", **SCENARIOS[name]), batches)
    assert "aten.nonzero.default" in host and len(host) > len(without)
