#!/usr/bin/env python3
"""Transfer: does pretraining on one corpus help on another? Fine-tuned vs from scratch.

    python bench/finetune.py [--pretrain-steps 400] [--steps 150] [--every 25] [--threads 1] [--device cpu|cuda]

1. Pretrain a small Llama-shaped XLabModel (the defaults.yaml architecture, 2 layers) on the
   embedded corpus (CPython's documentation) with its sentencepiece tokenizer.
2. `export-hf` it: a LlamaForCausalLM folder with the tokenizer converted to tokenizer.json.
3. On other prose (the licence texts shipped with the installed Python packages, written to a
   text folder, near-duplicates dropped), train two models for the same steps on the same blocks
   with the same tokenizer (that folder's, via `tokenizer_path`):
     fine-tuned    XLabModel(init_from=that folder)
     scratch       the same architecture, randomly initialised
   and print both validation losses at the same steps. Step 0 is the pretrained model's zero-shot
   loss. The whole path is the one a user takes: Lightning Trainer, data modules, export-hf, init_from.
A few CPU minutes on one thread.
"""

from __future__ import annotations

import argparse
import hashlib
import site
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed

from bench.device import accelerator, add_device_option, require_device  # noqa: E402

SHAPE = dict(n_layer=2, n_head=4, n_embd=128, positions="rotary", norm="rmsnorm", activation="swiglu", bias=False)
MAX_LEN, BATCH, VOCAB = 128, 16, 2048


def licence_texts(limit_bytes: int = 400_000) -> list[str]:
    """The installed packages' licence files, each distinct text once (by its opening)."""
    roots = {Path(p) for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]] if Path(p).is_dir()}
    files = sorted(f for root in roots for pattern in ("*.dist-info/LICEN[CS]E*", "*.dist-info/licenses/**/*",
                                                       "*.dist-info/COPYING*") for f in root.glob(pattern)
                   if f.is_file())
    seen, texts, size = set(), [], 0
    for file in files:
        text = file.read_text(encoding="utf-8", errors="ignore").strip()
        key = hashlib.sha1(" ".join(text.split())[:600].encode()).hexdigest()
        if len(text) < 500 or key in seen:
            continue
        seen.add(key)
        texts.append(text)
        size += len(text)
        if size >= limit_bytes:
            break
    return texts


class ValLosses(L.Callback):
    """Records val/loss at every validation, keyed by the global step."""

    def __init__(self):
        self.losses: dict[int, float] = {}

    def on_validation_end(self, trainer, module):
        if not trainer.sanity_checking and "val/loss" in trainer.callback_metrics:
            self.losses[trainer.global_step] = float(trainer.callback_metrics["val/loss"])


def train(model, data, steps: int, every: int, device: str = "cpu"):
    recorder = ValLosses()
    trainer = L.Trainer(max_steps=steps, val_check_interval=every, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator=accelerator(device), devices=1, callbacks=[recorder],
                        gradient_clip_val=1.0, inference_mode=False)  # validate() before fit() shares metric states
    trainer.validate(model, data, verbose=False)
    recorder.losses[0] = float(trainer.callback_metrics["val/loss"])
    trainer.fit(model, data)
    return recorder.losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrain-steps", type=int, default=400)
    parser.add_argument("--steps", type=int, default=150, help="fine-tuning / from-scratch steps")
    parser.add_argument("--every", type=int, default=25, help="validate every this many steps")
    parser.add_argument("--threads", type=int, default=1)
    add_device_option(parser)
    args = parser.parse_args(argv)
    require_device(args.device)
    torch.set_num_threads(args.threads)

    from xlab.datamodules import XLabDataModule
    from xlab.interop.export import export_checkpoint_
    from xlab.interop.export_hf import export_hf_
    from xlab.models import XLabModel

    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        L.seed_everything(0, verbose=False)
        docs = XLabDataModule(sources=[{"kind": "embedded"}], cache_dir=str(tmp / "cache"), vocab_size=VOCAB,
                              max_len=MAX_LEN, batch_size=BATCH)
        pretrained = XLabModel(vocab_size=docs.vocab_size, max_len=MAX_LEN, learning_rate=2e-3, warmup_steps=50,
                               **SHAPE)
        pretrain = train(pretrained, docs, args.pretrain_steps, args.pretrain_steps, args.device)
        ckpt = tmp / "pretrained.ckpt"
        pretrained.trainer.save_checkpoint(ckpt, weights_only=False)
        export_hf_(export_checkpoint_(ckpt, tmp / "export"), tmp / "hf")

        folder = tmp / "prose"
        folder.mkdir()
        texts = licence_texts()
        for i, text in enumerate(texts):
            (folder / f"{i:04d}.txt").write_text(text, encoding="utf-8")
        prose = dict(sources=[{"kind": "text_folder", "path": str(folder)}], cache_dir=str(tmp / "cache"),
                     tokenizer_path=str(tmp / "hf"), max_len=MAX_LEN, batch_size=BATCH,
                     split_fractions=(0.8, 0.15, 0.025, 0.025))  # a val split big enough to compare on
        results = {}
        for name in ("fine-tuned", "scratch"):
            L.seed_everything(1, verbose=False)  # the same batches in the same order for both
            data = XLabDataModule(**prose)
            start = {"init_from": str(tmp / "hf")} if name == "fine-tuned" else SHAPE
            model = XLabModel(vocab_size=data.vocab_size, max_len=MAX_LEN, learning_rate=1e-3, warmup_steps=20, **start)
            results[name] = train(model, data, args.steps, args.every, args.device)
        meta = data.meta["splits"]

    print(f"pretraining: embedded corpus, {args.pretrain_steps} steps, val loss {pretrain[args.pretrain_steps]:.3f}")
    print(f"other prose: {len(texts)} licence texts, {sum(map(len, texts)) / 1e3:.0f} KB; train {meta['train']['tokens']:,} "
          f"tokens, val {meta['val']['tokens']:,} tokens; model {SHAPE}, context {MAX_LEN}, batch {BATCH}")
    print(f"{'step':>6} {'fine-tuned':>11} {'scratch':>9} {'gap':>7}")
    for step in sorted(results["scratch"]):
        tuned, scratch = results["fine-tuned"][step], results["scratch"][step]
        print(f"{step:>6} {tuned:>11.3f} {scratch:>9.3f} {scratch - tuned:>7.3f}")
    last = max(results["scratch"])
    print(f"after {last} steps the fine-tuned model's val loss is {results['scratch'][last] - results['fine-tuned'][last]:.3f} "
          f"nats/token lower ({time.time() - started:.0f} s wall, {time.process_time():.0f} s CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
