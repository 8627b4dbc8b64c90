#!/usr/bin/env python3
"""Dialogue: does turn-masked training on real conversations learn to reply?

Usage:
    python bench/dialogue.py                        # conf/dialogue.yaml as it is, on chitchat
    python bench/dialogue.py --steps 300 --episodes 3000 --threads 2
    python bench/dialogue.py --device cuda          # both fits on the GPU (the recipe's precision)

Trains `conf/dialogue.yaml` twice through the real CLI, with the loss on the replies only
(`mask_turns: true`) and on every token (`mask_turns: false`), tests both on the same test split
and prints, against references measured in the same run:
  reply perplexity   vs a unigram model of the train replies
  Hits@1 / 20        vs chance (1/20) and vs the model trained without turn masking, ranked by
                     likelihood (hits@1) and by PMI (hits@1_pmi), with binomial standard errors
  unigram F1         of greedy replies (ParlAI normalisation)
The same test examples are also ranked without any model, by the tf-idf weight of the words a
candidate shares with the history in its prompt: how much the history alone tells apart.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.device import accelerator, require_device  # noqa: E402


def train_and_test(workdir: Path, mask_turns: bool, steps: int | None, extra: list[str]) -> dict[str, float]:
    """Fit the recipe, then test its last checkpoint; the test metrics and the test unigram baseline."""
    from xlab.cli import main

    start = time.perf_counter()
    name = "masked" if mask_turns else "unmasked"
    common = ["--trainer.logger.init_args.save_dir", str(workdir / "runs"), "--trainer.enable_progress_bar", "false",
              "--data.init_args.cache_dir", str(workdir / "cache")]
    length = [] if steps is None else ["--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps)]
    main(["fit", "-c", str(ROOT / "conf" / "dialogue.yaml"), *length, "--trainer.logger.init_args.name", name, "--data.init_args.mask_turns", str(mask_turns).lower(),
          *common, *extra])
    fit_seconds = time.perf_counter() - start
    ckpt = sorted((workdir / "runs" / name).rglob("last.ckpt"))[-1]
    cli = main(["test", "-c", str(ROOT / "conf" / "dialogue.yaml"), "--ckpt_path", str(ckpt),
                "--trainer.logger.init_args.name", name, "--data.init_args.mask_turns", str(mask_turns).lower(),
                *common, *extra])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test/")}
    metrics["unigram_loss"] = cli.datamodule.unigram_loss("test")
    metrics["candidates"] = cli.datamodule.hparams.candidates
    metrics["scored"] = len(cli.datamodule.eval_examples("test"))
    metrics["fit_seconds"] = fit_seconds
    metrics["overlap_hits"] = overlap_hits(cli.datamodule, "test")
    return metrics


def overlap_hits(datamodule, split: str) -> float:
    """Hits@1 of ranking each example's candidates by the summed idf (from the train turns) of their
    words that also occur in the history of the prompt; ties are misses, as for the model."""
    from collections import Counter

    from xlab.dialogue.metrics import ranked_first
    from xlab.dialogue.text import normalize_answer

    def words(text: str) -> set[str]:
        return set(normalize_answer(text).split())

    texts = [t for r in datamodule.rendered["train"] for t in r.texts]
    df = Counter(w for t in texts for w in words(t))
    examples, decode = datamodule.eval_examples(split), datamodule.tokenizer.decode
    hits = 0
    for ex in examples:
        history = words(decode(ex["prompt"]))
        scores = [sum(math.log(len(texts) / (1 + df[w])) for w in words(decode(body)) & history)
                  for body in [ex["body"], *ex["negatives"]]]
        hits += ranked_first(torch.tensor(scores))
    return hits / max(1, len(examples))


def compare(workdir: Path, steps: int | None, extra: list[str]) -> dict[str, dict[str, float]]:
    return {"masked": train_and_test(workdir, True, steps, extra), "unmasked": train_and_test(workdir, False, steps, extra)}


def stderr(p: float, n: int) -> float:
    """The binomial standard error of a rate p measured on n replies."""
    return math.sqrt(p * (1 - p) / max(1, n))


def report(results: dict[str, dict[str, float]]) -> str:
    m, u = results["masked"], results["unmasked"]
    k, n = int(m["candidates"]), int(m["scored"])
    chance = 1 / k
    unigram_ppl = math.exp(m["unigram_loss"])

    def hits(metrics: dict[str, float], name: str) -> str:
        p = metrics[f"test/{name}"]
        return f"{p:.3f} +- {stderr(p, n):.3f}"

    lines = [
        f"reply perplexity       {m['test/perplexity']:8.1f}   unigram {unigram_ppl:.1f}   ratio {m['test/perplexity'] / unigram_ppl:.3f}",
        f"Hits@1/{k} of {n} test replies (+- one binomial standard error), chance {chance:.3f}:",
        f"  by likelihood        masked {hits(m, 'hits@1')}   unmasked {hits(u, 'hits@1')}",
        f"  by PMI               masked {hits(m, 'hits@1_pmi')}   unmasked {hits(u, 'hits@1_pmi')}",
        f"  no model: tf-idf of the words shared with the history  {m['overlap_hits']:.3f} +- {stderr(m['overlap_hits'], n):.3f}",
        f"unigram F1             masked {m['test/f1']:.3f}   unmasked {u['test/f1']:.3f}",
        f"  (unmasked reply perplexity {u['test/perplexity']:.1f})",
        f"fit wall time          masked {m['fit_seconds']:.0f} s   unmasked {u['fit_seconds']:.0f} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="training steps per model (default: the recipe's)")
    parser.add_argument("--episodes", type=int, default=None, help="read at most this many conversations")
    parser.add_argument("--eval-examples", type=int, default=500,
                        help="test replies scored for Hits@1 and F1 (default 500; the recipe validates on 200)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="where both fits run (default: the recipe's accelerator, a GPU when there is one)")
    parser.add_argument("--workdir", default=None, help="where runs and caches go (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.device is not None:
        require_device(args.device)
    device = [] if args.device is None else ["--trainer.accelerator", accelerator(args.device)]
    sys.argv = sys.argv[:1]  # the CLI runs below get their arguments as lists, not from this command line
    torch.set_num_threads(args.threads)
    extra = ["--data.init_args.max_documents", "null" if args.episodes is None else str(args.episodes),
             "--data.init_args.eval_examples", str(args.eval_examples), *device]
    with tempfile.TemporaryDirectory() as tmp:
        results = compare(Path(args.workdir or tmp), args.steps, extra)
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
