#!/usr/bin/env python
"""What the memory costs: its search against raw faiss, and MemoryGPT2's training speed with the
memory on against off.

    python bench/memory.py [--entries 10000] [--dim 768] [--queries 4096] [--k 5] [--threads 1]
                           [--n_layer 4] [--n_embd 256] [--max_len 256] [--batch_size 8] [--repeats 7]
                           [--device cpu|cuda] [--skip-training]

1. Search: AssociativeMemory.search against the bare faiss index it wraps (flat, then ivf), on
   the same stored vectors and the same query batch. The memory also gathers the k vectors per
   query and hands back torch tensors; the target is a ratio within 1.1x.
2. Training: tokens per second of MemoryGPT2 (forward, backward, AdamW step) with use_memory on
   and off, same shape, same batches.
3. Sampling: tokens per second of `xlab.inference.sample` (KV cache, greedy) with the memory on
   (reading the entries training left, and writing what it generates) and off.

Runs are interleaved (the order alternating) and the medians compared, single-threaded by default,
since two threads on a small CPU swing up to 2x between runs. On a CPU the clock is the process's
CPU time: on a shared machine wall time mostly measures waits for a core (a faiss IVF search of
0.4 s of CPU took 2.2 s of wall time here). With --device cuda the queries live on the GPU:
the flat memory answers them there as a matmul and a top-k, the ivf memory through a faiss GPU
copy; the reference is a faiss GPU copy of the same index, timed in wall time. The clock and the
device sync are bench/peaks.py's, as in the other benches.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.device import add_device_option, require_device  # noqa: E402
from bench.peaks import clock  # noqa: E402
from xlab.memory import AssociativeMemory  # noqa: E402
from xlab.memory.model import MemoryGPT2  # noqa: E402


def timed(fn, device: torch.device) -> float:
    start = clock(device)
    fn()
    return clock(device) - start


def interleaved(runs: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each callable, running them in turn (order alternating) `repeats` times
    after a warm-up."""
    for fn in runs.values():
        fn()
    seconds = {name: [] for name in runs}
    for repeat in range(repeats):
        names = list(runs) if repeat % 2 == 0 else list(reversed(runs))
        for name in names:
            seconds[name].append(timed(runs[name], device))
    return {name: statistics.median(values) for name, values in seconds.items()}


def reference_index(memory: AssociativeMemory, device: str):
    """The very index the memory searches (same vectors, same training); on a GPU a faiss GPU
    copy of it, as the memory's own searcher makes."""
    index = memory.index
    if device == "cpu" or faiss.get_num_gpus() == 0:
        return index
    resources = faiss.StandardGpuResources()
    copy = faiss.index_cpu_to_gpu(resources, 0, index)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        faiss.GpuParameterSpace().set_index_parameter(copy, "nprobe", ivf.nprobe)
    copy.resources = resources  # keep them alive with the copy
    return copy


def bench_search(args) -> None:
    rng = np.random.default_rng(0)
    stored = rng.standard_normal((args.entries, args.dim), dtype=np.float32)
    host_queries = torch.from_numpy(rng.standard_normal((args.queries, args.dim), dtype=np.float32))
    queries = host_queries.to(args.device)
    for index_type in ("flat", "ivf"):
        memory = AssociativeMemory(args.entries, args.dim, index_type=index_type, num_search_results=args.k,
                                   num_clusters=args.clusters, nprobe=args.nprobe, device=args.device)
        memory.add(torch.from_numpy(stored))
        raw = reference_index(memory, args.device)
        q = host_queries.numpy()
        times = interleaved({"memory": lambda: memory.search(queries, args.k),
                             "faiss": lambda: raw.search(q, args.k)}, args.repeats, torch.device(args.device))
        print(f"search {index_type:4s}: {args.queries} queries x k={args.k} over {len(memory)} x {args.dim}: "
              f"memory {1e3 * times['memory']:.1f} ms, faiss {1e3 * times['faiss']:.1f} ms, "
              f"ratio {times['memory'] / times['faiss']:.3f}x (target <= 1.1x)")


def bench_training(args) -> None:
    vocab = 4096
    settings = dict(vocab_size=vocab, max_len=args.max_len, n_layer=args.n_layer, n_head=max(1, args.n_embd // 64),
                    n_embd=args.n_embd, memory_size=args.entries, memory_device=args.device, index_type=args.index,
                    num_clusters=args.clusters, nprobe=args.nprobe)
    models = {on: MemoryGPT2(use_memory=on, **settings).to(args.device) for on in (True, False)}
    optimizers = {on: torch.optim.AdamW(m.parameters(), lr=1e-4) for on, m in models.items()}
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(4, vocab, (args.batch_size, args.max_len + 1), generator=generator).to(args.device)
               for _ in range(8)]
    position = {on: 0 for on in models}

    def step(on: bool) -> None:
        model, optimizer = models[on], optimizers[on]
        batch = batches[position[on] % len(batches)]
        position[on] += 1
        inputs = {"input_ids": batch[:, :-1], "labels": batch[:, 1:], "num_bytes": torch.zeros(len(batch), device=batch.device)}
        loss, _ = model.loss_and_stats(inputs)
        if model.memory is not None:  # as MemoryGPT2's training step: the LM's own loss trains the transformer
            loss = loss + model.lm_loss(inputs["labels"]) + model.memory_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # Fill the memory first (and train an ivf index), so the timed steps search a realistic memory.
    memory = models[True].memory.entries
    while len(memory) < args.entries // 2 or not memory.is_trained:
        step(True)
    times = interleaved({"on": lambda: step(True), "off": lambda: step(False)}, args.repeats, torch.device(args.device))
    tokens = args.batch_size * args.max_len
    on, off = tokens / times["on"], tokens / times["off"]
    print(f"training {args.n_layer} layers x {args.n_embd}, {args.batch_size} x {args.max_len} tokens, "
          f"{args.index} index, "
          f"memory of {len(models[True].memory.entries)} entries: memory on {on:,.0f} tok/s, off {off:,.0f} tok/s, "
          f"on/off {on / off:.3f}")
    bench_sampling(args, models, batches[0][:, : args.max_len // 2])


def bench_sampling(args, models: dict, prompts: torch.Tensor) -> None:
    from xlab.inference import sample

    for model in models.values():
        model.eval()
    models[True].set_generation_writes(True)
    length = args.max_len // 2

    def run(on: bool) -> None:
        with torch.no_grad():
            sample(models[on], list(prompts), output_length=length, temperature=0)

    times = interleaved({"on": lambda: run(True), "off": lambda: run(False)}, max(1, args.repeats // 2),
                        torch.device(args.device))
    tokens = len(prompts) * length
    on, off = tokens / times["on"], tokens / times["off"]
    print(f"sampling {len(prompts)} prompts x {length} new tokens, memory of {len(models[True].memory.entries)} "
          f"entries: memory on {on:,.0f} tok/s, off {off:,.0f} tok/s, on/off {on / off:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=10000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=4096)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--clusters", type=int, default=256)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--index", default="ivf", help="the model memory's index_type (conf/memory.yaml: ivf)")
    parser.add_argument("--n_layer", type=int, default=4)
    parser.add_argument("--n_embd", type=int, default=256)
    parser.add_argument("--max_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    add_device_option(parser, "where the memory searches and the models train")
    parser.add_argument("--skip-training", action="store_true", help="only the search comparison")
    args = parser.parse_args()
    require_device(args.device)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    print(f"threads: {args.threads}, faiss GPUs visible: {faiss.get_num_gpus()}")
    bench_search(args)
    if not args.skip_training:
        bench_training(args)


if __name__ == "__main__":
    main()
