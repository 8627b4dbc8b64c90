#!/usr/bin/env python3
"""One command for a machine with a CUDA GPU: does XLab's GPU side work, and how fast is it?

    python bench/gpu_check.py            # a few minutes on one GPU; prints PASS/FAIL and figures per check

Checks, each independent (one failing does not stop the others):
  train-xlab, train-memory, train-retro   each recipe (defaults, memory, retro), shrunk to a few
                                          steps on the embedded corpus, trained by the real CLI on
                                          the GPU with bf16-mixed and compile
  ddp-one-gpu                             the defaults recipe under DDP on one device
  fsdp-one-gpu                            XLabFSDP on one device: sharded checkpoint written, then
                                          resumed from
  faiss-memory                            AssociativeMemory on the GPU against a raw faiss GPU index
                                          on the same queries (target <= 1.1x)
  memory-no-wait                          MemoryGPT2 with a flat memory held on the GPU: a training
                                          step waits for the device no more often than GPT-2 alone;
                                          its step time against the same memory held on the host
  faiss-retrieval                         a retrieval index built with faiss on the GPU, its recall
  decoding                                xlab.inference against transformers generate, GPT-2 124M
                                          shape, batch 1 and 8, greedy (targets >= 1.0x, >= 1.1x)
  mfu-gpt2                                GPT-2 124M at context 1024, bf16-mixed, compiled: MFU
                                          against the GPU's bf16 dense peak (target >= 45% on an
                                          H100-class GPU), and the step against transformers'
Exit status: 0 when every check passes, 1 otherwise, 2 when there is no CUDA GPU (one line).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

MFU_TARGET = 0.45
H100_CLASS = ("h100", "h200", "gh200", "b100", "b200")


def refuse_without_gpu() -> int | None:
    if torch.cuda.is_available():
        return None
    print("gpu_check: no CUDA GPU is visible to torch; this check needs one (on a CPU, run the other bench/ scripts).")
    return 2


def cli_fit(recipe: str, folder: Path, *extra: str) -> object:
    """The real CLI on a recipe, shrunk: embedded corpus, a few steps, on the GPU."""
    from xlab.cli import main

    return main(["fit", "-c", str(ROOT / "conf" / recipe), "--trainer.accelerator", "cuda", "--trainer.devices", "1",
                 "--trainer.max_steps", "12", "--trainer.val_check_interval", "6", "--trainer.limit_val_batches", "2",
                 "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
                 "--trainer.logger.init_args.save_dir", str(folder / "runs"),
                 "--data.init_args.sources", '[{"kind": "embedded"}]', "--data.init_args.vocab_size", "2048",
                 "--data.init_args.cache_dir",
                 str(folder / "cache"), "--data.init_args.num_workers", "0", *extra])


# What each recipe needs to find training batches in the small embedded corpus.
SHRINK = {
    "defaults.yaml": [],
    "memory.yaml": ["--model.init_args.max_len", "128", "--model.init_args.num_clusters", "64",
                    "--data.init_args.batch_size", "4"],
    "retro.yaml": ["--model.init_args.max_len", "128", "--model.init_args.chunk_size", "16",
                   "--data.init_args.chunk_size", "16", "--data.init_args.batch_size", "4",
                   "--data.init_args.max_index_memory_usage", "256M"],
}


def check_training(recipe: str, folder: Path) -> str:
    started = time.perf_counter()
    cli = cli_fit(recipe, folder, "--trainer.precision", "bf16-mixed", "--model.init_args.compile", "true",
                  "--trainer.strategy", "auto", *SHRINK[recipe])
    loss = float(cli.trainer.callback_metrics["val/loss"])
    if not loss == loss or loss == float("inf"):
        raise RuntimeError(f"validation loss is {loss}")
    return f"bf16-mixed + compile, 12 steps in {time.perf_counter() - started:.0f} s, val/loss {loss:.3f}"


def check_ddp(folder: Path) -> str:
    cli = cli_fit("defaults.yaml", folder, "--trainer.strategy", "ddp", "--trainer.precision", "bf16-mixed")
    return f"DDP on one GPU: {cli.trainer.global_step} steps, val/loss {float(cli.trainer.callback_metrics['val/loss']):.3f}"


def check_fsdp(folder: Path) -> str:
    cli = cli_fit("defaults.yaml", folder, "--trainer.strategy", "xlab.strategies.XLabFSDP",
                  "--trainer.precision", "bf16-mixed")
    last = next((folder / "runs").rglob("last.ckpt"))
    if not last.is_dir():
        raise RuntimeError(f"{last} is one file: the sharded checkpoint is a folder of shards")
    resumed = cli_fit("defaults.yaml", folder, "--trainer.strategy", "xlab.strategies.XLabFSDP",
                      "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "14", "--ckpt_path", str(last))
    return (f"sharded checkpoint of {len(list(last.iterdir()))} files at step {cli.trainer.global_step}, "
            f"resumed to step {resumed.trainer.global_step}")


def check_faiss_memory() -> str:
    import faiss
    import numpy as np

    from bench.memory import interleaved, reference_index
    from xlab.memory import AssociativeMemory

    if faiss.get_num_gpus() == 0:
        raise RuntimeError("faiss sees no GPU: install faiss-gpu")
    rng = np.random.default_rng(0)
    stored = torch.from_numpy(rng.standard_normal((20000, 768), dtype=np.float32))
    queries = torch.from_numpy(rng.standard_normal((4096, 768), dtype=np.float32)).cuda()
    ratios = []
    for kind in ("flat", "ivf"):
        memory = AssociativeMemory(20000, 768, index_type=kind, num_search_results=5, num_clusters=256, nprobe=16,
                                   device="cuda")
        memory.add(stored)
        raw, q = reference_index(memory, "cuda"), queries.cpu().numpy()
        times = interleaved({"memory": lambda: memory.search(queries, 5), "faiss": lambda: raw.search(q, 5)}, 7,
                            torch.device("cuda"))
        ratios.append(f"{kind} {times['memory'] / times['faiss']:.2f}x")
        if times["memory"] / times["faiss"] > 1.1:
            raise RuntimeError(f"memory search against raw faiss on the GPU: {', '.join(ratios)} (target <= 1.1x)")
    return f"memory search / raw faiss GPU search: {', '.join(ratios)} (target <= 1.1x)"


def check_memory_waits() -> str:
    import warnings

    from bench.memory import interleaved
    from xlab.memory.model import MemoryGPT2

    vocab = 50304
    batches = [torch.randint(4, vocab, (8, 257), device="cuda") for _ in range(4)]

    def build(**settings) -> MemoryGPT2:
        torch.manual_seed(0)
        return MemoryGPT2(vocab_size=vocab, max_len=256, n_layer=6, n_head=8, n_embd=512, memory_size=20000,
                          **settings).cuda().train()

    def step(model: MemoryGPT2, batch: torch.Tensor) -> None:
        inputs = {"input_ids": batch[:, :-1], "labels": batch[:, 1:], "num_bytes": torch.zeros(len(batch), device="cuda")}
        loss, _ = model.loss_and_stats(inputs)
        if model.memory is not None:
            loss = loss + model.lm_loss(inputs["labels"]) + model.memory_loss
        loss.backward()

    def waits(model: MemoryGPT2) -> int:
        for batch in batches[:3]:  # the memory fills and votes are cast before the step that counts
            step(model, batch)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                step(model, batches[3])
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return len(seen)

    on_device, host = build(), build(memory_device="cpu")
    counts = {"gpt2": waits(build(use_memory=False)), "device": waits(on_device), "host": waits(host)}
    if not on_device.memory.on_device:
        raise RuntimeError("the flat memory stayed on the host")
    times = interleaved({name: lambda model=model: step(model, batches[0])
                         for name, model in (("device", on_device), ("host", host))}, 7, torch.device("cuda"))
    figures = (f"waits per step: GPT-2 alone {counts['gpt2']}, memory on the GPU {counts['device']}, on the host "
               f"{counts['host']}; step {times['device'] * 1e3:.1f} ms vs {times['host'] * 1e3:.1f} ms on the host")
    if counts["device"] > counts["gpt2"]:
        raise RuntimeError(figures)
    return figures


def check_faiss_retrieval(folder: Path) -> str:
    import faiss
    import numpy as np

    from xlab.retro.index import build_index_

    if faiss.get_num_gpus() == 0:
        raise RuntimeError("faiss sees no GPU: install faiss-gpu")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, 128))
    x = centres[rng.integers(0, 200, 100_000)] + 0.3 * rng.standard_normal((100_000, 128))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    report = build_index_(x, folder / "index.faiss", max_index_memory_usage="64M")
    if not report["gpu"] or not report["target_reached"]:
        raise RuntimeError(f"built on the GPU: {report['gpu']}, recall {report['recall']} (target "
                           f"{report['target_recall']})")
    return (f"{report['factory']} over 100k x 128 built on the GPU in {report['build_seconds']} s, "
            f"recall@10 {report['recall']:.3f}, {report['queries_per_s']:,.0f} queries/s")


def check_decoding() -> str:
    from bench.sampling import build_models, build_parser, compare

    args = build_parser().parse_args(["--device", "cuda", "--new-tokens", "128", "--repeats", "3"])
    hf, ours = build_models("gpt2", "cuda")
    results, failed = [], False
    for batch, target in ((1, 1.0), (8, 1.1)):
        xlab_speed, hf_speed = compare(hf, ours, batch, False, args)
        ratio = xlab_speed / hf_speed
        failed |= ratio < target
        results.append(f"batch {batch} greedy {xlab_speed:,.0f} tok/s, {ratio:.2f}x transformers (target >= {target})")
    if failed:
        raise RuntimeError("; ".join(results))
    return "; ".join(results)


def check_mfu() -> str:
    from bench.train_throughput import measure

    result = measure("gpt2", batch_size=8, max_len=1024, precision="bf16-mixed", device="cuda", compile=True,
                     rounds=2, steps=6, loops=("plain", "transformers"))
    median = result["median"]
    mfu = result["tokens"] / median["plain"] * result["flops_per_token"] / result["peak"]
    speed = median["transformers"] / median["plain"]
    figures = (f"GPT-2 124M, 8 x 1024 tokens, bf16-mixed, compiled: {median['plain'] * 1e3:.0f} ms/step, "
               f"MFU {mfu:.1%} of {result['peak_label']}; {speed:.2f}x transformers' step")
    h100_class = any(name in torch.cuda.get_device_name().lower() for name in H100_CLASS)
    if h100_class and mfu < MFU_TARGET:
        raise RuntimeError(f"{figures} (target >= {MFU_TARGET:.0%} on an H100-class GPU)")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="run only these checks (names as listed above)")
    args = parser.parse_args(argv)
    refused = refuse_without_gpu()
    if refused is not None:
        return refused
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"gpu_check on {torch.cuda.get_device_name()} ({torch.cuda.device_count()} visible), torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checks = {
            "train-xlab": lambda: check_training("defaults.yaml", folder / "xlab"),
            "train-memory": lambda: check_training("memory.yaml", folder / "memory"),
            "train-retro": lambda: check_training("retro.yaml", folder / "retro"),
            "ddp-one-gpu": lambda: check_ddp(folder / "ddp"),
            "fsdp-one-gpu": lambda: check_fsdp(folder / "fsdp"),
            "faiss-memory": check_faiss_memory,
            "memory-no-wait": check_memory_waits,
            "faiss-retrieval": lambda: check_faiss_retrieval(folder),
            "decoding": check_decoding,
            "mfu-gpt2": check_mfu,
        }
        passed, began = [], time.perf_counter()
        for name, check in checks.items():
            if args.only and name not in args.only:
                continue
            started = time.perf_counter()
            try:
                figures = check()
                passed.append(True)
                print(f"PASS {name:<16} {figures} [{time.perf_counter() - started:.0f} s]", flush=True)
            except BaseException as error:  # noqa: BLE001 - a check's failure, whatever it is, is reported
                if isinstance(error, KeyboardInterrupt):
                    raise
                passed.append(False)
                reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
                print(f"FAIL {name:<16} {type(error).__name__}: {reason} [{time.perf_counter() - started:.0f} s]",
                      flush=True)
                if os.environ.get("XLAB_GPU_CHECK_TRACEBACK"):
                    traceback.print_exc()
            torch.cuda.empty_cache()
    print(f"{sum(passed)}/{len(passed)} checks passed in {time.perf_counter() - began:.0f} s")
    return 0 if all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
