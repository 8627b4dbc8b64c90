"""Helpers shared by the memory tests: the recall task's data and a small Trainer, and the model,
batches, training and decoding of the exactness scenarios (tests/memory/test_model_exact.py), which
tests/memory/test_model_device.py runs against a device memory."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from tests.helpers import digest
from xlab import inference
from xlab.datamodules.sources.recall import RecallSource
from xlab.datamodules.streams import StreamDataModule
from xlab.memory.model import MemoryGPT2


def recall_data(tmp_path: Path, batch_size: int = 4, **settings) -> StreamDataModule:
    source = {"kind": "recall", "documents": 300, "facts": 4, "keys": 64, "values": 8, "seed": 0, **settings}
    vocab = RecallSource(**{k: v for k, v in source.items() if k != "kind"}).tokenizer_vocab_size()
    return StreamDataModule(sources=[source], cache_dir=str(tmp_path / "cache"), vocab_size=vocab, max_len=12,
                            batch_size=batch_size, split_fractions=(0.8, 0.2, 0.0, 0.0))


def trainer(tmp_path: Path, **settings) -> L.Trainer:
    return L.Trainer(**{**dict(accelerator="cpu", devices=1, max_steps=6, logger=False, enable_checkpointing=False,
                               enable_progress_bar=False, enable_model_summary=False, limit_val_batches=2,
                               default_root_dir=str(tmp_path)), **settings})


# --- the exactness scenarios ----------------------------------------------------------------------
EXACT_VOCAB = 40
EXACT_EOS = 2


def exact_model(**settings) -> MemoryGPT2:
    torch.manual_seed(0)
    args = dict(vocab_size=EXACT_VOCAB, max_len=16, n_layer=2, n_head=2, n_embd=32, memory_size=96, eos_id=EXACT_EOS,
                memory_device="cpu", forgetfulness_factor=0.05, min_weight=0.5, store_init=0.5, delete_init=-0.5)
    return MemoryGPT2(**{**args, **settings})


def exact_batches(count: int, rows: int = 3, length: int = 16) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        ids = torch.randint(4, 12, (rows, length + 1), generator=generator)  # few tokens: many reads
        ends = torch.rand(rows, length + 1, generator=generator) < 0.08
        out.append(torch.where(ends, torch.full_like(ids, EXACT_EOS), ids))
    return out


def memory_facts(model: MemoryGPT2) -> dict:
    state = model.memory.get_extra_state()
    return {"ids": state["ids"].tolist(), "vectors": digest(state["vectors"]), "weights": digest(state["weights"]),
            "ages": state["ages"].tolist(), "next_id": int(state["next_id"]),
            "pending": state["pending_ids"].tolist() if "pending_ids" in state else None,
            "open": sorted([row, i] for row, i in zip(state["open_rows"].tolist(), state["open_ids"].tolist()))
            if "open_ids" in state else [],
            "rows": state["rows"].tolist(), "next_serial": int(state["next_serial"])}


def exact_training(model: MemoryGPT2, steps: int) -> dict:
    """Training steps as MemoryGPT2's own step computes its loss, with AdamW updates."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses, telemetry = [], []
    model.train()
    for batch in exact_batches(steps):
        inputs = {"input_ids": batch[:, :-1], "labels": batch[:, 1:], "num_bytes": torch.zeros(len(batch))}
        loss, stats = model.loss_and_stats(inputs)
        loss = loss + model.lm_loss(inputs["labels"]) + model.memory_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()).hex())
        telemetry.append({name: float(value).hex() for name, value in sorted(model.telemetry.items())})
    return {"losses": losses, "telemetry": telemetry, "memory": memory_facts(model)}


def exact_decoding(model: MemoryGPT2) -> dict:
    """Greedy, sampled and beam decoding that write to the memory, sliding past max_len."""
    model.eval()
    model.set_generation_writes(True)
    prompts = [torch.tensor([5, 6, 7, 8, 5, 6]), torch.tensor([9, 10, 11])]
    with torch.no_grad():
        greedy = inference.sample(model, prompts, output_length=24, temperature=0)
        drawn = inference.sample(model, prompts, output_length=20, temperature=1.0, top_k=8, seed=3)
        beams = inference.beam_search(model, prompts[0], output_length=12, num_beams=3)
        scores = model(exact_batches(1)[0][:, :-1])
    tokens = [[row.tolist() for row in greedy], [row.tolist() for row in drawn], beams.tolist()]
    return {"tokens": tokens, "scores": digest(scores), "memory": memory_facts(model)}
