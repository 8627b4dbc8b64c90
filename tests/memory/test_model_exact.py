"""MemoryGPT2 gives exactly the results it gave before its hot paths were reworked for GPUs.

`memory_gpt2_reference.json` and `memory_state_reference.pt` were recorded with the host-side
implementation (numpy gathers, float telemetry per step, a growing decode cache): training
losses bit for bit, generated tokens, the memory's ids and a digest of its vectors. The
scenarios cover training with sampled store decisions, delete votes, ended documents and
padding, an ivf memory that trains mid-run, greedy, sampled and beam decoding that writes
through a sliding window, and a memory state saved by that implementation.

Bits do not travel between processor makers: with the kernels pinned to AVX2, an AMD core still
rounds a few sums differently from an Intel one, and sampled store decisions then diverge. So each
maker has its reference: `memory_gpt2_reference.json` from Intel cores (the one the host-side
implementation recorded, which the current code reproduces there), `memory_gpt2_reference.amd.json`
recorded from the current code on AMD cores. A maker without one skips, naming the command that
records it.

    python -m tests.memory.test_model_exact --record   # records this maker's reference (only on purpose)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import cpu_vendor
from tests.memory.helpers import exact_decoding, exact_model, exact_training, memory_facts
from xlab.common.files import write_text_, written_aside_

HERE = Path(__file__).resolve().parent
REFERENCES = {"GenuineIntel": HERE / "memory_gpt2_reference.json", "AuthenticAMD": HERE / "memory_gpt2_reference.amd.json"}
SAVED_STATE = HERE / "memory_state_reference.pt"
def scenarios() -> dict:
    results = {}
    for name, settings in {"flat": {}, "ivf": dict(index_type="ivf", num_clusters=2, nprobe=1),
                           "all_scope": dict(memory_scope="all", forget_documents=False, eviction="oldest")}.items():
        model = exact_model(**settings)
        results[name] = {"train": exact_training(model, 6), "decode": exact_decoding(model)}
    return results


def saved_state_scenario(state: dict | None) -> dict:
    """A model trained a little saves its memory; a fresh model loads that state and goes on."""
    model = exact_model()
    if state is None:
        exact_training(model, 3)
        state = model.memory.get_extra_state()
    fresh = exact_model()
    fresh.memory.set_extra_state(state)
    fresh.load_state_dict(model.state_dict(), strict=False)
    return {"after_load": memory_facts(fresh), "train": exact_training(fresh, 2)}, state


@pytest.fixture(scope="module")
def reference() -> dict:
    path = REFERENCES.get(cpu_vendor())
    if path is None or not path.exists():
        pytest.skip(f"no MemoryGPT2 reference recorded on {cpu_vendor()} processors: "
                    "python -m tests.memory.test_model_exact --record")
    return read_reference(path)


@pytest.mark.parametrize("name", ["flat", "ivf", "all_scope"])
def test_training_and_decoding_are_exactly_as_recorded(reference, name):
    model = exact_model(**{"flat": {}, "ivf": dict(index_type="ivf", num_clusters=2, nprobe=1),
                     "all_scope": dict(memory_scope="all", forget_documents=False, eviction="oldest")}[name])
    trained = exact_training(model, 6)
    assert trained == reference[name]["train"]
    assert exact_decoding(model) == reference[name]["decode"]


def test_a_memory_state_saved_before_loads_and_continues_exactly(reference):
    state = torch.load(SAVED_STATE, weights_only=True)
    result, _ = saved_state_scenario(state)
    assert result == reference["saved_state"]


def record_() -> None:
    torch.set_num_threads(1)  # as the test suite runs (tests/conftest.py): matmuls round per thread count
    results = scenarios()
    if not SAVED_STATE.exists():  # the saved state is an input every maker's reference reads
        _, state = saved_state_scenario(None)
        with written_aside_(SAVED_STATE) as tmp:
            torch.save(state, tmp)
    results["saved_state"], _ = saved_state_scenario(torch.load(SAVED_STATE, weights_only=True))
    write_text_(REFERENCES[cpu_vendor()], as_json(results))


def as_json(results: dict) -> str:
    """One line per scenario and part: reviewable in a diff, without a line per id."""
    lines = [f"  {json.dumps(f'{name}/{part}')}: {json.dumps(value)}"
             for name, parts in results.items() for part, value in parts.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def read_reference(path: Path) -> dict:
    results = {}
    for key, value in json.loads(path.read_text()).items():
        name, part = key.split("/")
        results.setdefault(name, {})[part] = value
    return results


if __name__ == "__main__" and "--record" in sys.argv:
    record_()
