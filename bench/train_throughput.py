#!/usr/bin/env python3
"""Training throughput of XLabModel against `transformers` GPT-2, and Lightning's overhead.

    python bench/train_throughput.py                         # CPU: 10M GPT-2 shape, batch 4 x 128
    python bench/train_throughput.py --device cuda --shape gpt2 --max-len 1024 --batch-size 8 \
        --precision bf16-mixed --compile

Three loops over the same batches, run in interleaved rounds (so machine noise hits all alike),
timed per optimizer step after warm-up; medians are reported:
  lightning     XLabModel trained by a Lightning Trainer (what ./xlab.py fit runs)
  plain         the same XLabModel in a hand-written loop calling the same training_step
  transformers  GPT2LMHeadModel with the same weights, size, batch, precision, in a plain loop,
                its own loss function (`model.loss_function`)
All three use the optimizer XLab configures: AdamW with decay on matrices only (not on norms,
biases, embeddings), fused on CUDA, warmup then cosine, stepped every batch. A step's time runs
from the end of the previous step to the end of this one, so it covers fetching the batch from
the DataLoader, moving it to the device and logging (every --log-every steps, to a CSV file on
both sides), not only the math.

Prints tokens/s and MFU per loop, the Lightning overhead (lightning / plain step time; target
<= 1.05) and XLabModel's speed against transformers (transformers / plain step time; target
>= 1.0). MFU divides the model's FLOPs (6 N per token plus attention) by the dense peak of the
GPU for the dtype, from a datasheet table (bench/peaks.py); on a CPU by a matmul peak measured in
the same run, and it says so.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed

from bench.device import add_device_option, require_device  # noqa: E402
from bench.peaks import clock, dense_peak, sync  # noqa: E402

SHAPES = {
    "small": dict(vocab_size=8192, n_layer=6, n_head=6, n_embd=384),  # ~10M parameters + embeddings
    "gpt2": dict(vocab_size=50257, n_layer=12, n_head=12, n_embd=768),  # GPT-2 124M
}
HPARAMS = dict(learning_rate=3e-4, weight_decay=0.1, betas=(0.9, 0.95), warmup_steps=2, min_lr_ratio=0.1,
               lr_decay_steps=1000)


def build_models(shape: str, max_len: int, device: torch.device, compile: bool):
    """(XLabModel for the plain loop, XLabModel for Lightning, GPT2LMHeadModel): same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from xlab.interop.hf_gpt2 import xlab_hparams_from_gpt2, xlab_state_dict_from_gpt2
    from xlab.models import XLabModel

    torch.manual_seed(0)
    config = GPT2Config(**SHAPES[shape], n_positions=max_len, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa")
    hf = GPT2LMHeadModel(config)
    xlabs = []
    for _ in range(2):
        model = XLabModel(**xlab_hparams_from_gpt2(config), **HPARAMS, compile=compile)
        model.load_state_dict(xlab_state_dict_from_gpt2(hf.state_dict(), tied=True), strict=False)
        xlabs.append(model)
    if compile:
        hf.forward = torch.compile(hf.forward)
    return xlabs[0].to(device), xlabs[1], hf.to(device)


def make_batches(vocab: int, count: int, batch_size: int, max_len: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        tokens = torch.randint(0, vocab, (batch_size, max_len + 1), generator=generator)
        batches.append({"input_ids": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous(),
                        "num_bytes": torch.full((batch_size,), max_len, dtype=torch.long)})
    return batches


def loader(batches, device: torch.device):
    return torch.utils.data.DataLoader(batches, batch_size=None, pin_memory=device.type == "cuda")


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16"))


def hf_optimizer(model, device: torch.device):
    """XLab's optimizer recipe applied to the transformers model: same groups, same schedule."""
    from xlab.models.lm import LanguageModel
    from xlab.models.schedule import WarmupCosine

    groups = LanguageModel.parameter_groups(model, HPARAMS["weight_decay"])
    optimizer = torch.optim.AdamW(groups, lr=HPARAMS["learning_rate"], betas=HPARAMS["betas"],
                                  fused=device.type == "cuda")
    schedule = WarmupCosine(HPARAMS["warmup_steps"], HPARAMS["lr_decay_steps"], HPARAMS["min_lr_ratio"])
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def plain_steps(model, batches, device: torch.device, precision: str, log_every: int, log_dir: Path,
                kind: str) -> list[float]:
    """Per-step seconds of a hand-written loop; `kind` 'xlab' calls XLab's training_step, 'hf' the
    transformers forward and loss."""
    if kind == "xlab":
        model.setup("fit")
        optimizer, scheduler = (lambda c: (c["optimizer"], c["lr_scheduler"]["scheduler"]))(model.configure_optimizers())
    else:
        optimizer, scheduler = hf_optimizer(model, device)
    model.train()
    ends = []
    sync(device)
    last = clock(device)
    with open(log_dir / f"{kind}.csv", "w", newline="") as log:
        writer = csv.writer(log)
        for step, batch in enumerate(loader(batches, device)):
            batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
            with autocast(device, precision):
                if kind == "xlab":
                    loss = model.training_step(batch, step)
                else:
                    logits = model(input_ids=batch["input_ids"]).logits
                    loss = model.loss_function(logits, None, model.config.vocab_size, shift_labels=batch["labels"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if (step + 1) % log_every == 0:
                writer.writerow([step, float(loss)])
            sync(device)
            now = clock(device)
            ends.append(now - last)
            last = now
    return ends


def lightning_steps(model, batches, device: torch.device, precision: str, log_every: int, log_dir: Path) -> list[float]:
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    class StepTimer(L.Callback):
        def __init__(self):
            self.times, self.last = [], 0.0

        def on_train_epoch_start(self, trainer, module):
            sync(device)
            self.last = clock(device)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            sync(device)
            now = clock(device)
            self.times.append(now - self.last)
            self.last = now

    timer = StepTimer()
    trainer = L.Trainer(accelerator=device.type, devices=1, max_steps=len(batches), precision=precision,
                        logger=CSVLogger(log_dir, name="lightning"), log_every_n_steps=log_every,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[timer])
    trainer.fit(model, loader(batches, device))
    return timer.times


def flops_per_token(model, max_len: int) -> float:
    """nanoGPT's estimate (PaLM appendix B): 6 N for the weights (position table excluded) plus
    12 L H Q T for attention, for forward and backward."""
    hp = model.hparams
    params = model.num_parameters() - model.transformer.wpe.weight.numel()
    return 6 * params + 12 * hp.n_layer * hp.n_embd * max_len


def measure(shape: str = "small", batch_size: int = 4, max_len: int = 128, precision: str = "32-true",
            device: str = "cpu", compile: bool = False, rounds: int = 3, steps: int = 6, log_every: int = 5,
            loops: tuple[str, ...] = ("lightning", "plain", "transformers")) -> dict:
    """Median seconds per step of each loop, tokens per step, FLOPs per token and the peak."""
    device = torch.device(device)
    plain, lightning_model, hf = build_models(shape, max_len, device, compile)
    batches = make_batches(SHAPES[shape]["vocab_size"], steps, batch_size, max_len)
    times: dict[str, list[float]] = {name: [] for name in loops}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds):
            order = list(loops) if round_ % 2 == 0 else list(reversed(loops))
            for name in order:
                if name == "lightning":
                    measured = lightning_steps(lightning_model, batches, device, precision, log_every, Path(tmp))
                else:
                    model, kind = (plain, "xlab") if name == "plain" else (hf, "hf")
                    measured = plain_steps(model, batches, device, precision, log_every, Path(tmp), kind)
                times[name] += measured[1:]  # the first step of a loop warms it up
    peak, label = dense_peak(device, precision)
    return {"median": {name: statistics.median(t) for name, t in times.items()},
            "tokens": batch_size * max_len, "flops_per_token": flops_per_token(plain, max_len),
            "params": plain.num_parameters(), "peak": peak, "peak_label": label}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_option(parser, "device of every timed step")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    parser.add_argument("--compile", action="store_true", help="torch.compile XLab (forward and loss) and transformers")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: least noisy on a shared machine)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three loops")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per loop per round (first is warm-up)")
    parser.add_argument("--log-every", type=int, default=5, help="steps between logged losses, both loops")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    require_device(args.device)
    result = measure(args.shape, args.batch_size, args.max_len, args.precision, args.device, args.compile,
                     args.rounds, args.steps, args.log_every)
    median, tokens, peak = result["median"], result["tokens"], result["peak"]
    print(f"config: {args.shape} shape, {result['params'] / 1e6:.1f}M parameters, batch {args.batch_size} x "
          f"{args.max_len} tokens, {args.precision}{', compiled' if args.compile else ''}, {args.threads} thread(s), "
          f"{args.device}; {args.rounds} interleaved rounds x {args.steps - 1} timed steps, medians")
    print(f"MFU denominator: {result['peak_label']}")
    for name, seconds in median.items():
        rate = tokens / seconds
        print(f"{name:>12}: {seconds * 1e3:8.1f} ms/step  {rate:9.0f} tokens/s  "
              f"MFU {rate * result['flops_per_token'] / peak:6.1%}")
    print(f"Lightning overhead (lightning / plain step time): {median['lightning'] / median['plain']:.3f}x "
          "(target <= 1.05)")
    print(f"XLabModel vs transformers GPT2LMHeadModel (transformers / plain step time): "
          f"{median['transformers'] / median['plain']:.3f}x (target >= 1.0)")
    return result


if __name__ == "__main__":
    main()
