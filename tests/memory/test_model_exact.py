"""MemoryGPT2 gives exactly the results it gave before its hot paths were reworked for GPUs.

`memory_gpt2_reference.json` and `memory_state_reference.pt` were recorded with the host-side
implementation (numpy gathers, float telemetry per step, a growing decode cache): training
losses bit for bit, generated tokens, the memory's ids and a digest of its vectors. The
scenarios cover training with sampled store decisions, delete votes, ended documents and
padding, an ivf memory that trains mid-run, greedy, sampled and beam decoding that writes
through a sliding window, and a memory state saved by that implementation.

    python -m tests.memory.test_model_exact --record   # re-records the reference (only on purpose)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import digest
from xlab import inference
from xlab.common.files import write_text_, written_aside_
from xlab.memory.model import MemoryGPT2

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "memory_gpt2_reference.json"
SAVED_STATE = HERE / "memory_state_reference.pt"
VOCAB = 40
EOS = 2


def build(**settings) -> MemoryGPT2:
    torch.manual_seed(0)
    args = dict(vocab_size=VOCAB, max_len=16, n_layer=2, n_head=2, n_embd=32, memory_size=96, eos_id=EOS,
                memory_device="cpu", forgetfulness_factor=0.05, min_weight=0.5, store_init=0.5, delete_init=-0.5)
    return MemoryGPT2(**{**args, **settings})


def batches(count: int, rows: int = 3, length: int = 16) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        ids = torch.randint(4, 12, (rows, length + 1), generator=generator)  # few tokens: many reads
        ends = torch.rand(rows, length + 1, generator=generator) < 0.08
        out.append(torch.where(ends, torch.full_like(ids, EOS), ids))
    return out


def memory_facts(model: MemoryGPT2) -> dict:
    state = model.memory.get_extra_state()
    return {"ids": state["ids"].tolist(), "vectors": digest(state["vectors"]), "weights": digest(state["weights"]),
            "ages": state["ages"].tolist(), "next_id": int(state["next_id"]),
            "pending": state["pending_ids"].tolist() if "pending_ids" in state else None,
            "open": sorted([row, i] for row, i in zip(state["open_rows"].tolist(), state["open_ids"].tolist()))
            if "open_ids" in state else [],
            "rows": state["rows"].tolist(), "next_serial": int(state["next_serial"])}


def train(model: MemoryGPT2, steps: int) -> dict:
    """Training steps as MemoryGPT2's own step computes its loss, with AdamW updates."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses, telemetry = [], []
    model.train()
    for batch in batches(steps):
        inputs = {"input_ids": batch[:, :-1], "labels": batch[:, 1:], "num_bytes": torch.zeros(len(batch))}
        loss, stats = model.loss_and_stats(inputs)
        loss = loss + model.lm_loss(inputs["labels"]) + model.memory_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()).hex())
        telemetry.append({name: float(value).hex() for name, value in sorted(model.telemetry.items())})
    return {"losses": losses, "telemetry": telemetry, "memory": memory_facts(model)}


def decode(model: MemoryGPT2) -> dict:
    """Greedy, sampled and beam decoding that write to the memory, sliding past max_len."""
    model.eval()
    model.set_generation_writes(True)
    prompts = [torch.tensor([5, 6, 7, 8, 5, 6]), torch.tensor([9, 10, 11])]
    with torch.no_grad():
        greedy = inference.sample(model, prompts, output_length=24, temperature=0)
        drawn = inference.sample(model, prompts, output_length=20, temperature=1.0, top_k=8, seed=3)
        beams = inference.beam_search(model, prompts[0], output_length=12, num_beams=3)
        scores = model(batches(1)[0][:, :-1])
    tokens = [[row.tolist() for row in greedy], [row.tolist() for row in drawn], beams.tolist()]
    return {"tokens": tokens, "scores": digest(scores), "memory": memory_facts(model)}


def scenarios() -> dict:
    results = {}
    for name, settings in {"flat": {}, "ivf": dict(index_type="ivf", num_clusters=2, nprobe=1),
                           "all_scope": dict(memory_scope="all", forget_documents=False, eviction="oldest")}.items():
        model = build(**settings)
        results[name] = {"train": train(model, 6), "decode": decode(model)}
    return results


def saved_state_scenario(state: dict | None) -> dict:
    """A model trained a little saves its memory; a fresh model loads that state and goes on."""
    model = build()
    if state is None:
        train(model, 3)
        state = model.memory.get_extra_state()
    fresh = build()
    fresh.memory.set_extra_state(state)
    fresh.load_state_dict(model.state_dict(), strict=False)
    return {"after_load": memory_facts(fresh), "train": train(fresh, 2)}, state


@pytest.fixture(scope="module")
def reference() -> dict:
    return read_reference()


@pytest.mark.parametrize("name", ["flat", "ivf", "all_scope"])
def test_training_and_decoding_are_exactly_as_recorded(reference, name):
    model = build(**{"flat": {}, "ivf": dict(index_type="ivf", num_clusters=2, nprobe=1),
                     "all_scope": dict(memory_scope="all", forget_documents=False, eviction="oldest")}[name])
    trained = train(model, 6)
    assert trained == reference[name]["train"]
    assert decode(model) == reference[name]["decode"]


def test_a_memory_state_saved_before_loads_and_continues_exactly(reference):
    state = torch.load(SAVED_STATE, weights_only=True)
    result, _ = saved_state_scenario(state)
    assert result == reference["saved_state"]


def record_() -> None:
    torch.set_num_threads(1)  # as the test suite runs (tests/conftest.py): matmuls round per thread count
    results = scenarios()
    results["saved_state"], state = saved_state_scenario(None)
    with written_aside_(SAVED_STATE) as tmp:
        torch.save(state, tmp)
    result, _ = saved_state_scenario(torch.load(SAVED_STATE, weights_only=True))
    results["saved_state"] = result
    write_text_(REFERENCE, as_json(results))


def as_json(results: dict) -> str:
    """One line per scenario and part: reviewable in a diff, without a line per id."""
    lines = [f"  {json.dumps(f'{name}/{part}')}: {json.dumps(value)}"
             for name, parts in results.items() for part, value in parts.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def read_reference() -> dict:
    results = {}
    for key, value in json.loads(REFERENCE.read_text()).items():
        name, part = key.split("/")
        results.setdefault(name, {})[part] = value
    return results


if __name__ == "__main__" and "--record" in sys.argv:
    record_()
