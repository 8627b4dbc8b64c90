#!/usr/bin/env python3
"""XLab against litgpt 0.5.13 (`litgpt pretrain`) on the same work, each run as its own process.

    python bench/litgpt_compare.py [--steps 300] [--quick] [--threads 2] [--corpus licences|embedded]

litgpt is not an XLab dependency: it is installed once in a virtual environment of its own under
the XLab cache (with this torch; its litdata pulls a torchvision built for another torch, which is
removed). Both sides get the same token stream (XLab's training split, each document sos + text +
eos, handed to litgpt's `LitData` in its streaming format), XLab's sentencepiece tokenizer
(litgpt's `--tokenizer_dir`), the same model (RMSNorm, SwiGLU, rotary, no biases, tied embedding),
batch, steps, AdamW rate and betas, warmup then cosine to a tenth of the peak, gradient clipping
at 1.0, fp32, the same threads and no loader workers. Each side keeps its own compile default
(litgpt's pretrain always compiles; XLab's `compile` is off), and XLab runs once more with
`compile: true`. Differences left: litgpt's first step has learning rate 0 and it decays every
weight (XLab: matrices only); its blocks are drawn by litdata's shuffle, XLab's by its sampler.

Measured from outside each process: launch to the first optimizer step, steady tokens/s (between
the end of warmup and the last step, from the time each step's line reaches the pipe), the whole
run's wall time and the peak resident memory of its process tree (polled from /proc every 50 ms).
Validation loss and bits per byte are computed here for both, on the same XLab validation blocks
with the same loss call.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout, no install needed

from bench.device import accelerator, add_device_option, require_device  # noqa: E402
from bench.venvs import ensure_venv, venv_folder  # noqa: E402
from xlab.common.errors import XLabError  # noqa: E402
from xlab.common.tokenizer import IGNORE_INDEX  # noqa: E402
from xlab.datamodules import XLabDataModule  # noqa: E402
from xlab.models import XLabModel  # noqa: E402

LITGPT = ["litgpt==0.5.13", "litdata==0.2.59", "sentencepiece"]  # sentencepiece: XLab's tokenizer
LITGPT_CHECK = "import litgpt.pretrain, litdata, sentencepiece"
XLAB_STEP = re.compile(r"^bench-step (\d+)\s*$")
LITGPT_STEP = re.compile(r"\| iter \d+ step (\d+) \|")
SIDE = ROOT / "bench" / "litgpt_side.py"
PAGE = os.sysconf("SC_PAGE_SIZE")


class StepLines(L.Callback):
    """Prints `bench-step N` after each optimizer step, flushed: the comparison times XLab's steps
    from outside the process, by the lines' arrival, as it times the lines litgpt prints."""

    def on_train_batch_end(self, trainer, *args) -> None:
        print(f"bench-step {trainer.global_step}", flush=True)


def ffn_dim(width: int) -> int:
    """SwiGLU's hidden width: ~8/3 of the model's (as much compute as a 4x GELU MLP), to 16."""
    return 16 * math.ceil(8 * width / 3 / 16)


def xlab_config(args, work: Path, name: str, compile: bool) -> dict:
    """Settings over conf/defaults.yaml: one validation at the end, a line per step, XLab's
    defaults (TensorBoard every 10 steps, best and last checkpoints) otherwise."""
    return {
        "trainer": {"accelerator": accelerator(args.device), "devices": 1, "precision": "32-true",
                    "max_steps": args.steps,
                    "val_check_interval": args.steps, "limit_val_batches": args.val_batches,
                    "gradient_clip_val": 1.0, "enable_progress_bar": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(work / "xlab-runs"), "name": name}},
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
                                   "init_args": {"logging_interval": "step"}},
                                  {"class_path": "bench.litgpt_compare.StepLines"}]},
        "model": {"class_path": "xlab.models.XLabModel", "init_args": {
            "max_len": args.context, "n_layer": args.layers, "n_head": args.heads, "n_embd": args.width,
            "ffn_dim": ffn_dim(args.width), "dropout": 0.0, "positions": "rotary", "norm": "rmsnorm",
            "norm_position": "pre", "activation": "swiglu", "bias": False, "tie_weights": True,
            "learning_rate": args.lr, "betas": [0.9, 0.95], "weight_decay": 0.1, "warmup_steps": args.warmup,
            "min_lr_ratio": 0.1, "compile": compile}},
        "data": {"class_path": "xlab.datamodules.XLabDataModule", "init_args": {
            "sources": [{"kind": args.corpus}], "cache_dir": str(args.cache_dir), "vocab_size": args.vocab_size,
            "batch_size": args.batch_size, "eval_batch_size": args.batch_size, "num_workers": 0}},
    }


def litgpt_config(args, work: Path, vocab: int) -> dict:
    """`litgpt pretrain --config` settings for the same model and schedule (its model settings are
    accepted only inside this file, and it counts a run in tokens, not steps)."""
    return {
        "model_name": "xlab-bench",
        "model_config": {"name": "xlab-bench", "block_size": args.context, "vocab_size": vocab,
                         "padded_vocab_size": vocab, "n_layer": args.layers, "n_head": args.heads,
                         "n_query_groups": args.heads, "n_embd": args.width, "rotary_percentage": 1.0,
                         "parallel_residual": False, "bias": False, "norm_class_name": "RMSNorm",
                         "mlp_class_name": "LLaMAMLP", "intermediate_size": ffn_dim(args.width)},
        "out_dir": str(work / "litgpt-out"), "precision": "32-true", "devices": 1, "seed": 1337,
        "tokenizer_dir": str(work / "tokenizer"), "logger_name": "csv",
        "data": {"class_path": "litgpt.data.LitData",
                 "init_args": {"data_path": str(work / "litdata"), "split_names": ["train", "val"],
                               "num_workers": 0}},
        "train": {"save_interval": None, "log_interval": 1, "global_batch_size": args.batch_size,
                  "micro_batch_size": args.batch_size, "max_tokens": args.steps * args.batch_size * args.context,
                  "max_norm": 1.0, "min_lr": 0.1 * args.lr, "lr_warmup_steps": args.warmup,
                  "tie_embeddings": True, "max_seq_length": args.context},
        "eval": {"interval": args.steps + 1, "max_iters": args.val_batches, "initial_validation": False,
                 "final_validation": True},
        "optimizer": {"class_path": "torch.optim.AdamW",
                      "init_args": {"lr": args.lr, "weight_decay": 0.1, "betas": [0.9, 0.95]}},
    }


@dataclass
class Run:
    """One process, as seen from outside: (step, seconds since launch) per step line, peak RSS."""
    wall: float = 0.0
    peak_rss: int = 0
    stamps: list[tuple[int, float]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    @property
    def first_step(self) -> float:
        return self.stamps[0][1]

    def tokens_per_s(self, skip: int, tokens_per_step: int) -> float:
        """Tokens/s from the first step at or past `skip` to the last step."""
        later = [stamp for stamp in self.stamps if stamp[0] >= skip] or self.stamps
        (first, start), (last, end) = later[0], self.stamps[-1]
        return (last - first) * tokens_per_step / (end - start) if end > start else float("nan")


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(kid) for kid in (task / "children").read_text().split()]
        except OSError:  # the task ended meanwhile
            pass
    return kids


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (litdata and compile workers included),
    from /proc (Linux)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * PAGE
        except OSError:  # it ended meanwhile
            continue
        todo += _children(current)
    return total


def run_measured(name: str, command: list[str], step_line: re.Pattern, env: dict, log: Path) -> Run:
    run = Run()
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)

    def read() -> None:
        for line in proc.stdout:
            now = time.monotonic() - start
            run.lines.append(line)
            match = step_line.search(line)
            if match:
                run.stamps.append((int(match[1]), now))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while proc.poll() is None:
        run.peak_rss = max(run.peak_rss, tree_rss(proc.pid))
        time.sleep(0.05)
    run.wall = time.monotonic() - start
    reader.join()
    log.write_text("".join(run.lines))
    if proc.returncode != 0 or not run.stamps:
        last = next((line.strip() for line in reversed(run.lines) if line.strip()), "no output")
        raise SystemExit(f"the {name} run failed (exit status {proc.returncode}; its output is in {log}): {last}")
    return run


def score_blocks(data: XLabDataModule, count: int) -> dict[str, torch.Tensor]:
    """The first `count` validation blocks (fewer if the split is shorter), stacked."""
    blocks = data.blocks("val")
    rows = [blocks[i] for i in range(min(count, len(blocks)))]
    return {key: torch.stack([torch.as_tensor(row[key]) for row in rows]) for key in ("input_ids", "labels",
                                                                                       "num_bytes")}


@torch.no_grad()
def score_xlab(checkpoint: Path, blocks: dict[str, torch.Tensor]) -> float:
    """Summed next-token loss of an XLab checkpoint over the blocks (the call litgpt_side.py makes)."""
    model = XLabModel.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    nll = 0.0
    for input_ids, labels in zip(blocks["input_ids"].split(16), blocks["labels"].split(16)):
        logits = model(input_ids)
        nll += float(F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                                     reduction="sum"))
    return nll


def last_checkpoint(work: Path, name: str) -> Path:
    found = sorted((work / "xlab-runs" / name).glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"the {name} run left no last.ckpt under {work / 'xlab-runs' / name}")
    return found[-1]


def targets(xlab: dict, litgpt: dict) -> list[tuple[str, bool]]:
    """The issue's targets for one XLab row against litgpt's."""
    return [("steady tokens/s >= 1.2x litgpt", xlab["tokens_per_s"] >= 1.2 * litgpt["tokens_per_s"]),
            ("time to first step <= litgpt", xlab["first_step"] <= litgpt["first_step"]),
            ("whole-run wall <= 0.8x litgpt", xlab["wall"] <= 0.8 * litgpt["wall"]),
            ("peak RSS <= litgpt", xlab["peak_rss"] <= litgpt["peak_rss"])]


def report(rows: dict[str, dict], args) -> None:
    print(f"\n{args.layers} layers x {args.width}, {args.heads} heads, FF {ffn_dim(args.width)}, context "
          f"{args.context}, vocab {args.vocab_size}, batch {args.batch_size}, {args.steps} steps (warmup "
          f"{args.warmup}), fp32, {args.threads} thread(s), corpus {args.corpus}; tokens/s from step "
          f"{args.skip} to the last")
    print("\n| run | compile | first step s | steady tok/s | wall s | peak RSS MiB | val loss | bpb |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['compile']} | {row['first_step']:.1f} | {row['tokens_per_s']:,.0f} | "
              f"{row['wall']:.1f} | {row['peak_rss'] / 2**20:,.0f} | {row['val_loss']:.3f} | {row['bpb']:.3f} |")
    litgpt = rows["litgpt"]
    for name, row in rows.items():
        if name == "litgpt":
            continue
        print(f"\n{name} / litgpt: tokens/s {row['tokens_per_s'] / litgpt['tokens_per_s']:.2f}x, first step "
              f"{row['first_step'] / litgpt['first_step']:.2f}x, wall {row['wall'] / litgpt['wall']:.2f}x, "
              f"peak RSS {row['peak_rss'] / litgpt['peak_rss']:.2f}x")
        for text, met in targets(row, litgpt):
            print(f"  {'met    ' if met else 'NOT met'}  {text}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--val-batches", type=int, default=4, help="validation batches, in each run and scored here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--corpus", choices=("licences", "embedded"), default="licences",
                        help="licences: /usr/share licence and copyright texts; embedded: CPython's docs")
    parser.add_argument("--cache-dir", type=Path, default=None, help="XLab's data cache (default: $XLAB_CACHE)")
    parser.add_argument("--work-dir", type=Path, default=None, help="runs and logs (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="a tiny model for a few steps: checks the wiring")
    add_device_option(parser, "where both frameworks train")
    args = parser.parse_args(argv)
    require_device(args.device)
    if args.quick:
        args.steps, args.layers, args.width, args.heads, args.context = 12, 1, 64, 2, 64
        args.vocab_size, args.batch_size, args.warmup, args.val_batches = 1024, 4, 4, 1
    for name in ("steps", "layers", "width", "heads", "context", "batch_size", "warmup", "val_batches", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.width % args.heads:
        parser.error(f"--width {args.width} must be a multiple of --heads {args.heads}")
    args.skip = min(args.warmup, args.steps // 2)
    if args.cache_dir is None:
        args.cache_dir = Path(os.environ.get("XLAB_CACHE", Path.home() / ".cache" / "xlab"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    python = ensure_venv(venv_folder("litgpt-0.5.13"), LITGPT, remove=("torchvision",), check=LITGPT_CHECK)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="litgpt-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "litgpt-out", ignore_errors=True)
    data = XLabDataModule(sources=[{"kind": args.corpus}], cache_dir=str(args.cache_dir), vocab_size=args.vocab_size,
                          max_len=args.context, batch_size=args.batch_size)
    try:
        data.setup("fit")
    except XLabError as error:  # e.g. no licence texts on this machine: say so, and which corpus to use
        raise SystemExit(f"{error} (--corpus embedded uses the docs packed with XLab)") from None
    vocab = data.vocab_size
    (work / "tokenizer").mkdir(exist_ok=True)
    shutil.copy(data.cache_folder / "tokenizer.model", work / "tokenizer" / "tokenizer.model")
    for split in ("train", "val"):  # litgpt's copy of XLab's token streams, rebuilt every run (seconds)
        shutil.rmtree(work / "litdata" / split, ignore_errors=True)
        np.save(work / f"{split}.npy", np.asarray(data.block_tokens(split)))
        done = subprocess.run([str(python), str(SIDE), "prepare", str(work / f"{split}.npy"),
                               str(work / "litdata" / split), str(args.context + 1)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"writing the {split} tokens for litgpt failed: "
                             f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")
    blocks = score_blocks(data, args.val_batches * args.batch_size)
    torch.save(blocks, work / "blocks.pt")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    if args.device == "cpu":  # litgpt takes a GPU whenever it sees one
        env["CUDA_VISIBLE_DEVICES"] = ""
    (work / "litgpt.yaml").write_text(yaml.safe_dump(litgpt_config(args, work, vocab)))
    rows: dict[str, dict] = {}
    plans = [("xlab", False), ("litgpt", True), ("xlab-compiled", True)]
    for name, compiled in plans:
        print(f"running {name} ...", flush=True)
        if name == "litgpt":
            command = [str(python), "-m", "litgpt", "pretrain", "--config", str(work / "litgpt.yaml")]
            run = run_measured(name, command, LITGPT_STEP, env, work / f"{name}.log")
            nll = score_litgpt(python, work)
        else:
            (work / f"{name}.yaml").write_text(yaml.safe_dump(xlab_config(args, work, name, compiled)))
            command = [sys.executable, str(ROOT / "xlab.py"), "fit", "-c", str(ROOT / "conf" / "defaults.yaml"),
                       "-c", str(work / f"{name}.yaml")]
            run = run_measured(name, command, XLAB_STEP, env, work / f"{name}.log")
            nll = score_xlab(last_checkpoint(work, name), blocks)
        tokens = int((blocks["labels"] != IGNORE_INDEX).sum())
        rows[name] = {"compile": compiled, "first_step": run.first_step, "wall": run.wall, "peak_rss": run.peak_rss,
                      "tokens_per_s": run.tokens_per_s(args.skip, args.batch_size * args.context),
                      "val_loss": nll / tokens, "bpb": nll / float(blocks["num_bytes"].sum()) / math.log(2)}
        print(f"{name}: " + ", ".join(f"{key} {value:.4g}" for key, value in rows[name].items()), flush=True)
    report(rows, args)
    (work / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"\nlogs and results.json in {work}")
    return 0


def score_litgpt(python: Path, work: Path) -> float:
    command = [str(python), str(SIDE), "score", str(work / "litgpt-out" / "final"), str(work / "blocks.pt")]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"scoring litgpt's checkpoint failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["nll_sum"]


if __name__ == "__main__":
    sys.exit(main())
