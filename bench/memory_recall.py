#!/usr/bin/env python
"""Does the memory help? MemoryGPT2 with the memory on vs off on the synthetic recall task.

    python bench/memory_recall.py [--steps 600] [--facts 8] [--keys 1024] [--values 16] [--seed 0]
                                  [--device cpu|cuda]

Both runs train the same transformer (same seed, so the same initial weights), on the same
documents in the same order, for the same steps; only `use_memory` differs. Each question sits
3 * facts tokens after its fact and the context window is exactly that long, so no question can
see its fact: without a memory the best answer accuracy is 1 / values. The script prints the
validation answer accuracy and loss of both runs, measured on held-out documents with a memory
that starts empty and fills as the validation documents are read.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lightning as L  # noqa: E402
import torch  # noqa: E402

from bench.device import accelerator, add_device_option, require_device  # noqa: E402
from xlab.datamodules.sources.recall import RecallSource  # noqa: E402
from xlab.datamodules.streams import StreamDataModule  # noqa: E402
from xlab.memory.model import MemoryGPT2  # noqa: E402


def recall_run(use_memory: bool, cache_dir: str, steps: int = 600, facts: int = 8, keys: int = 1024,
               values: int = 16, documents: int | None = None, n_layer: int = 2, n_head: int = 2,
               n_embd: int = 64, batch_size: int = 8, seed: int = 0, log_dir: str | None = None,
               device: str = "cpu", **model_args) -> dict[str, float]:
    """Train for `steps` and validate; returns answer_accuracy, loss and the wall time.
    `model_args` override MemoryGPT2's settings below."""
    max_len = 3 * facts
    tokens_per_document = 6 * facts + 2
    # Enough training documents that no document is seen twice (90% of them go to train).
    documents = documents or int(steps * batch_size * max_len / tokens_per_document / 0.9) + 200
    source = {"kind": "recall", "documents": documents, "facts": facts, "keys": keys, "values": values, "seed": seed}
    vocab_size = RecallSource(**{k: v for k, v in source.items() if k != "kind"}).tokenizer_vocab_size()
    L.seed_everything(seed, verbose=False)
    data = StreamDataModule(sources=[source], cache_dir=cache_dir, vocab_size=vocab_size, max_len=max_len,
                            split_fractions=(0.9, 0.1, 0.0, 0.0), batch_size=batch_size)
    model_settings = dict(
        vocab_size=data.vocab_size, sos_id=data.sos_id, eos_id=data.eos_id, pad_id=data.pad_id, max_len=max_len,
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, use_memory=use_memory,
        # Room for the open documents of every row and a few more; older entries go first.
        memory_size=4 * batch_size * max_len, eviction="oldest", num_search_results=4,
        forget_documents=True, learning_rate=3e-3, weight_decay=0.0, warmup_steps=20)
    model_settings.update(model_args)
    model = MemoryGPT2(**model_settings)
    logger = L.pytorch.loggers.TensorBoardLogger(log_dir, name="memory_on" if use_memory else "memory_off") if log_dir else False
    trainer = L.Trainer(accelerator=accelerator(device), devices=1, max_steps=steps, max_epochs=-1, logger=logger,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=10)
    started = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - started
    evaluator = L.Trainer(accelerator=accelerator(device), devices=1, logger=False, enable_progress_bar=False,
                          enable_model_summary=False)
    metrics = evaluator.validate(model, datamodule=data, verbose=False)[0]
    return {"answer_accuracy": metrics["val/answer_accuracy"], "loss": metrics["val/loss"], "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--facts", type=int, default=8)
    parser.add_argument("--keys", type=int, default=1024)
    parser.add_argument("--values", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log_dir", default=None, help="write TensorBoard logs (memory telemetry) here")
    add_device_option(parser)
    args = parser.parse_args()
    require_device(args.device)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as cache:
        results = {on: recall_run(on, cache, args.steps, args.facts, args.keys, args.values, seed=args.seed,
                                  log_dir=args.log_dir, device=args.device) for on in (True, False)}
    print(f"recall task: {args.facts} facts per document, {args.keys} keys, {args.values} values "
          f"(chance {1 / args.values:.3f}), {args.steps} steps, seed {args.seed}")
    for on, r in results.items():
        print(f"memory {'on ' if on else 'off'}: answer accuracy {r['answer_accuracy']:.3f}  "
              f"val loss {r['loss']:.3f}  train {r['seconds']:.1f}s")
    on, off = results[True], results[False]
    print(f"memory on - off: answer accuracy {on['answer_accuracy'] - off['answer_accuracy']:+.3f}, "
          f"val loss {on['loss'] - off['loss']:+.3f}")


if __name__ == "__main__":
    main()
