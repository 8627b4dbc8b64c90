#!/usr/bin/env python
"""Does the memory pay on real text? MemoryGPT2 with the memory on and off, on long documents.

    python bench/memory_text.py [--steps 200] [--max_len 64] [--wikitext PATH] [--sources cpython,wikitext]
                                [--device cpu|cuda]

For each source both runs train the same transformer (same seed, so the same initial weights) on
the same blocks in the same order for the same steps; only `use_memory` differs, and every memory
setting is `conf/memory.yaml`'s, with the transformer shrunk to CPU size. Sources:
  * cpython: the CPython documentation that ships inside the standard library (whole topics);
  * wikitext: a local WikiText copy (`--wikitext`, a save_to_disk folder or data files, read with
    `group: wikitext_articles`); without one, the long descriptions of the installed Python
    distributions, laid out as WikiText articles (` = Title = ` lines), which are real documents.
Validation reads the held-out documents in order with a memory that starts empty, and a token
reads only entries of its own document written by earlier blocks. The script prints validation
perplexity overall and by document length (in contexts of max_len tokens), and the gain.
Then the sampling check: for held-out documents longer than four contexts, the perplexity of the
true continuation scored through the sampler's KV-cache path, with the memory filled from the
document's beginning against an empty memory.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

from bench.device import accelerator, add_device_option, require_device  # noqa: E402
from xlab.datamodules.streams import StreamDataModule  # noqa: E402
from xlab.memory.model import MemoryGPT2  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Document lengths in contexts: fits one, up to four, longer than four.
BUCKETS = (("<= 1 context", 0, 1), ("1-4 contexts", 1, 4), ("> 4 contexts", 4, math.inf))
# conf/memory.yaml's model settings that are shape or schedule, set here for a CPU instead.
NOT_MEMORY = {"max_len", "n_layer", "n_head", "n_embd", "dropout", "pretrained_path", "use_memory", "learning_rate",
              "weight_decay", "betas", "warmup_steps", "min_lr_ratio", "lr_decay_steps", "compile", "memory_device",
              "memory_dim"}


def memory_settings() -> dict:
    """The memory settings of conf/memory.yaml, as a user gets them by default."""
    conf = yaml.safe_load((ROOT / "conf" / "memory.yaml").read_text())
    return {k: v for k, v in conf["model"]["init_args"].items() if k not in NOT_MEMORY}


def cpython_source() -> dict:
    return {"kind": "embedded", "piece_chars": 1_000_000}  # whole topics: the longest run to ~100k characters


def wikitext_source(path: str | None, folder: Path, max_chars: int = 40_000) -> dict:
    """A WikiText-format source: the copy at `path`, or one written to `folder` from the long
    descriptions of the installed distributions (those of 200 characters or more, each cut at
    `max_chars`, in name order): short ones fit a context, the longest run to dozens."""
    if path:
        return {"kind": "huggingface", "path": path, "split": "train+validation+test", "group": "wikitext_articles"}
    import importlib.metadata

    import datasets

    seen, rows = set(), []
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower()):
        name = dist.metadata["Name"]
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if not name or name.lower() in seen or len(body) < 200:
            continue
        seen.add(name.lower())
        rows.append(f" = {name} = \n")
        rows += [line.rstrip() + "\n" for line in body[:max_chars].splitlines() if line.strip()
                 and not line.lstrip().startswith("=")]
    datasets.Dataset.from_dict({"text": rows}).save_to_disk(str(folder))
    return {"kind": "huggingface", "path": str(folder), "split": "train", "group": "wikitext_articles"}


def build_data(source: dict, cache_dir: str, max_len: int, vocab_size: int, batch_size: int,
               seed: int, max_documents: int | None = None) -> StreamDataModule:
    L.seed_everything(seed, verbose=False)
    data = StreamDataModule(sources=[source], cache_dir=cache_dir, vocab_size=vocab_size, max_len=max_len,
                            split_fractions=(0.85, 0.15, 0.0, 0.0), batch_size=batch_size,
                            max_documents=max_documents)
    data.prepare_data()
    data.setup()
    return data


def train(data: StreamDataModule, use_memory: bool, steps: int, n_layer: int, n_embd: int, seed: int,
          device: str = "cpu", **overrides) -> MemoryGPT2:
    L.seed_everything(seed, verbose=False)
    # auto: the memory follows the model, onto the GPU for training and back when Lightning is done
    settings = {**memory_settings(), "memory_device": "cpu" if device == "cpu" else "auto", **overrides}
    model = MemoryGPT2(vocab_size=data.vocab_size, sos_id=data.sos_id, eos_id=data.eos_id, pad_id=data.pad_id,
                       max_len=data.hparams.max_len, n_layer=n_layer, n_head=max(1, n_embd // 32), n_embd=n_embd,
                       dropout=0.0, use_memory=use_memory, learning_rate=2e-3, warmup_steps=max(1, steps // 10),
                       **settings)
    trainer = L.Trainer(accelerator=accelerator(device), devices=1, max_steps=steps, max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, precision="32-true", gradient_clip_val=1.0)
    trainer.fit(model, datamodule=data)
    return model.to(device).eval()


@torch.no_grad()
def document_losses(model: MemoryGPT2, data: StreamDataModule) -> tuple[np.ndarray, np.ndarray]:
    """Summed loss and token count per validation document, reading the split in order from an
    empty memory, as validation does."""
    model.clear_state()
    loader = data.val_dataloader()
    blocks = loader.dataset
    offsets = data.document_offsets("val")
    total, count = np.zeros(len(offsets)), np.zeros(len(offsets))
    T = blocks.block_size
    for step, batch in enumerate(loader):
        logits = model(batch["input_ids"].to(model.device))
        losses = F.cross_entropy(logits.flatten(0, 1), batch["labels"].to(model.device).flatten(), reduction="none").cpu()
        starts = np.array([r * blocks.stream_length + step * T for r in range(blocks.rows)])
        where = (starts[:, None] + np.arange(T)[None] + 1).reshape(-1)  # each label's place in the split
        document = np.searchsorted(offsets, where, side="right") - 1
        np.add.at(total, document, losses.numpy())
        np.add.at(count, document, 1)
    model.clear_state()
    return total, count


def lengths_in_contexts(data: StreamDataModule) -> np.ndarray:
    offsets = data.document_offsets("val")
    ends = np.append(offsets[1:], len(data.tokens["val"]))
    return (ends - offsets) / data.hparams.max_len


def by_bucket(total: np.ndarray, count: np.ndarray, contexts: np.ndarray) -> dict[str, tuple[float, int]]:
    """Perplexity and token count: overall and per bucket of document length."""
    out = {"all": (math.exp(total.sum() / max(1, count.sum())), int(count.sum()))}
    for name, low, high in BUCKETS:
        pick = (contexts > low) & (contexts <= high)
        out[name] = (math.exp(total[pick].sum() / max(1, count[pick].sum())), int(count[pick].sum()))
    return out


@torch.no_grad()
def continuation_perplexity(model: MemoryGPT2, data: StreamDataModule, filled: bool, continuation: int,
                            documents: int) -> float:
    """Perplexity of the last `continuation` tokens of held-out documents longer than four
    contexts, scored through the KV-cache path the sampler uses: a prompt of the tokens just
    before them fills the cache, then one token at a time. `filled`: the memory first reads the
    document up to the prompt, and the cached passes write to it as they go; otherwise the
    memory stays empty."""
    T = data.hparams.max_len
    tokens, offsets = data.tokens["val"], data.document_offsets("val")
    ends = np.append(offsets[1:], len(tokens))
    long_ones = [(s, e) for s, e in zip(offsets, ends) if e - s > 4 * T][:documents]
    total = count = 0.0
    for start, end in long_ones:
        doc = torch.as_tensor(np.asarray(tokens[start:end], dtype=np.int64), device=model.device)
        prompt_start, target_start = len(doc) - T, len(doc) - continuation
        model.clear_state()
        model.set_generation_writes(filled)
        if filled:
            for s in range(0, prompt_start, T):
                model(doc[s:min(s + T, prompt_start)][None])
        cache = model.new_cache(1)
        scores = [model(doc[prompt_start:target_start][None], cache=cache)[:, -1:]]
        scores += [model(doc[t:t + 1][None], cache=cache) for t in range(target_start, len(doc) - 1)]
        scores = torch.cat(scores, dim=1)[0]
        total += float(F.cross_entropy(scores, doc[target_start:], reduction="sum"))
        count += len(doc) - target_start
    model.set_generation_writes(False)
    model.clear_state()
    return math.exp(total / max(1, count))


def text_run(source: dict, cache_dir: str, steps: int = 400, max_len: int = 128, n_layer: int = 4, n_embd: int = 128,
             vocab_size: int = 4096, batch_size: int = 8, seed: int = 0, continuation: int = 32,
             sampling_documents: int = 8, max_documents: int | None = None, device: str = "cpu",
             **overrides) -> dict:
    """Train with the memory on and off and measure both; `overrides` change memory settings."""
    data = build_data(source, cache_dir, max_len, vocab_size, batch_size, seed, max_documents)
    contexts = lengths_in_contexts(data)
    result = {"documents": len(contexts), "long_documents": int((contexts > 4).sum())}
    for on in (True, False):
        started = time.perf_counter()
        model = train(data, on, steps, n_layer, n_embd, seed, device, **overrides)
        seconds = time.perf_counter() - started
        result[on] = {"buckets": by_bucket(*document_losses(model, data), contexts), "seconds": seconds}
        if on:
            result["sampling"] = {filled: continuation_perplexity(model, data, filled, continuation,
                                                                  sampling_documents) for filled in (True, False)}
    return result


def report(name: str, r: dict) -> None:
    print(f"\n{name}: {r['documents']} validation documents, {r['long_documents']} longer than 4 contexts; "
          f"train {r[True]['seconds']:.0f}s on, {r[False]['seconds']:.0f}s off")
    print(f"  {'documents':14s} {'tokens':>8s} {'ppl on':>8s} {'ppl off':>8s} {'gain':>7s}")
    for bucket, (on, tokens) in r[True]["buckets"].items():
        off = r[False]["buckets"][bucket][0]
        print(f"  {bucket:14s} {tokens:8d} {on:8.2f} {off:8.2f} {1 - on / off:+7.1%}")
    filled, empty = r["sampling"][True], r["sampling"][False]
    print(f"  sampling: continuation perplexity {filled:.2f} with the memory filled from the document's "
          f"beginning, {empty:.2f} with an empty memory (gain {1 - filled / empty:+.1%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--max_len", type=int, default=64)
    parser.add_argument("--n_layer", type=int, default=2)
    parser.add_argument("--n_embd", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sources", default="cpython,wikitext")
    parser.add_argument("--wikitext", default=None, help="a local WikiText copy (save_to_disk folder or data files)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache_dir", default=None, help="keep the tokenized corpora here between runs")
    add_device_option(parser)
    args = parser.parse_args()
    require_device(args.device)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"{args.n_layer} layers x {args.n_embd}, context {args.max_len}, {args.steps} steps, seed {args.seed}; "
          f"memory settings of conf/memory.yaml: {memory_settings()}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sources.split(","):
            source = cpython_source() if name == "cpython" else wikitext_source(args.wikitext, Path(tmp) / "wikitext")
            cache = str(Path(args.cache_dir or tmp) / f"cache-{name}")
            r = text_run(source, cache, args.steps, args.max_len, args.n_layer, args.n_embd, seed=args.seed,
                         device=args.device)
            report(name if name == "cpython" else f"wikitext ({args.wikitext or 'installed distributions'})", r)


if __name__ == "__main__":
    main()
