#!/usr/bin/env python3
"""Why RETRO does or does not pay on real text: the measurements, on the licences corpus, at CPU size.

    python bench/retro_diagnose.py [--steps 300] [--variants before,zero_x2] [--threads 2] [--cache DIR]

The corpus is `kind: licences` (the machine's licence and copyright texts: hundreds of packages
quoting the same few licences, so the database has plenty to copy). Printed, in order:

  recall     how much of each validation chunk's TRUE next chunk the retrieved neighbours hold:
             the share of its tokens whose 4-gram (the token and the three before it) occurs in
             the neighbours' 2L tokens, i.e. what a perfect copier could take. For the database's
             embedder at k = 1, 2, 4, random database chunks (the floor), and the train split as
             a whole (the ceiling: no retriever can find what is not there).
  layers     the CCA layers the default rule gives each decoder depth.
  training   each variant (model settings, see VARIANTS) trains once with neighbours; the same
             decoder trains with retrieval off on the same batches (same seed, same order, same
             steps). Validation loss of the retrieval model with real neighbours, with shuffled
             ones (another block's) and with none, the plain decoder's, and per CCA layer the
             size of its output against the residual stream and its attention entropy (1 =
             uniform over the k * 2L neighbour tokens).

A model that uses its neighbours has real < shuffled; one that pays has real < the plain decoder.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed

from bench.device import add_device_option, require_device, to_device  # noqa: E402
from xlab.common.tokenizer import PAD_ID  # noqa: E402
from xlab.models.schedule import WarmupCosine  # noqa: E402
from xlab.retro import RetroDataModule, RetroModel  # noqa: E402
from xlab.retro.datamodule import RetroEvalDataset, RetroTrainDataset  # noqa: E402


@dataclass(frozen=True)
class Setting:
    vocab: int = 2048
    max_len: int = 128
    chunk_size: int = 32
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    enc_dim: int = 64
    enc_depth: int = 1
    k: int = 2
    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    warmup: int = 30
    val_blocks: int = 256      # validation blocks of max_len tokens
    seed: int = 0


# Model settings of each variant: `before` is how RetroModel trained until now with the issue's
# CCA layers 1 and 3; the others are the changes the measurements pointed at (docs/retro.md).
VARIANTS = {
    "before": {"dec_cross_attn_layers": [1, 3], "cca_zero_init": False, "retrieval_lr_scale": 1.0},
    "zero_x2": {"dec_cross_attn_layers": [1, 3], "cca_zero_init": True, "retrieval_lr_scale": 2.0},
    "zero_x5": {"dec_cross_attn_layers": [1, 3], "cca_zero_init": True, "retrieval_lr_scale": 5.0},
    "zero_x2_apart": {"dec_cross_attn_layers": [1, 3], "cca_zero_init": True, "retrieval_lr_scale": 2.0,
                      "clip_retrieval_apart": True},
}


def data_module(s: Setting, cache: str) -> RetroDataModule:
    dm = RetroDataModule(sources=[{"kind": "licences"}], vocab_size=s.vocab, max_len=s.max_len,
                         chunk_size=s.chunk_size, k=max(s.k, 4), batch_size=s.batch_size, cache_dir=cache,
                         embedder={"kind": "hashed", "dim": 256})
    dm.prepare_data()
    dm.setup("fit")
    return dm


# --- (a) recall of the retriever on real chunks --------------------------------------------------

def _gram_ids(tokens: np.ndarray) -> np.ndarray:
    """4-grams of the last axis as int64 keys (token ids < 2**15)."""
    t = tokens.astype(np.int64)
    return (t[..., :-3] << 45) | (t[..., 1:-2] << 30) | (t[..., 2:-1] << 15) | t[..., 3:]


def copyable(query: np.ndarray, following: np.ndarray, neighbours: np.ndarray) -> float:
    """Share of the tokens of `following` (B, L) whose 4-gram (over query + following) occurs in
    that row's neighbours (B, k, 2L); padding never matches."""
    context = _gram_ids(np.concatenate([query, following], axis=1))[:, -following.shape[1]:]
    hits = 0
    for row, found in zip(context, neighbours):
        grams = set()
        for n in found:
            grams.update(_gram_ids(n[n != PAD_ID]).tolist())
        hits += sum(g in grams for g in row.tolist())
    return hits / following.size


def recall_rows(dm: RetroDataModule, s: Setting) -> list[tuple[str, float]]:
    db, L = dm.database, s.chunk_size
    val = np.asarray(dm.tokens["val"][: s.val_blocks * s.max_len], dtype=np.int64).reshape(-1, s.max_len // L, L)
    query, following = val[:, :-1].reshape(-1, L), val[:, 1:].reshape(-1, L)
    ids = db.search_ids(query, 4)
    rows = [(f"{db.manifest['embedder']['spec']['kind']} embedder, k={k}", copyable(query, following,
                                                                                    db.tokens_of(ids[:, :k])))
            for k in (1, 2, 4)]
    rng = np.random.default_rng(s.seed)
    rows.append(("random chunks, k=2", copyable(query, following, db.tokens_of(rng.integers(0, len(db), (len(query), 2))))))
    train = set(_gram_ids(np.asarray(dm.tokens["train"])).tolist())
    grams = _gram_ids(np.concatenate([query, following], axis=1))[:, -L:]
    rows.append(("anywhere in the train split", float(np.isin(grams, np.fromiter(train, np.int64)).mean())))
    return rows


# --- (b) training, same batches with and without retrieval ---------------------------------------

class WithoutRetrieval(Dataset):
    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {key: value for key, value in self.dataset[i].items() if key != "retrieved"}


class ShuffledNeighbours(WithoutRetrieval):
    """Block i with the neighbours of block i + n/2: real neighbours, of the wrong text."""

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[i], "retrieved": self.dataset[(i + len(self) // 2) % len(self)]["retrieved"]}


def train_(model: RetroModel, dataset: Dataset, s: Setting) -> float:
    """Train for s.steps on `dataset` in a seeded order; returns seconds per step."""
    optimizer = torch.optim.AdamW(model.parameter_groups(0.1), lr=s.lr, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(s.warmup, s.steps, 0.1))
    order = torch.Generator().manual_seed(s.seed)
    model.train()
    step, started = 0, time.time()
    while step < s.steps:
        for batch in DataLoader(dataset, batch_size=s.batch_size, shuffle=True, drop_last=True, generator=order):
            loss, _ = model.loss_and_stats(to_device(batch, model.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            model.clip_gradients_(1.0)
            optimizer.step()
            schedule.step()
            step += 1
            if step >= s.steps:
                break
    return (time.time() - started) / s.steps


class CrossAttentionProbe:
    """Per CCA layer: RMS of its output over the residual stream's, and attention entropy / log(keys)."""

    def __init__(self, model: RetroModel):
        self.stats = {l: {"ratio": [], "entropy": []} for l in model.cross_layers}
        self.handles = []
        for l in model.cross_layers:
            layer = model.layers[l]
            self.handles.append(layer.ln_cca.register_forward_hook(self._residual(l)))
            self.handles.append(layer.cca.register_forward_hook(self._output(l, layer.cca)))
        self.residual: dict[int, torch.Tensor] = {}

    def _residual(self, l):
        def hook(module, inputs, output):
            self.residual[l] = inputs[0].pow(2).mean().sqrt()
        return hook

    def _output(self, l, cca):
        def hook(module, inputs, output):
            x, context = inputs[0], inputs[1]
            self.stats[l]["ratio"].append(float(output.pow(2).mean().sqrt() / self.residual[l]))
            k, _ = cca.keys_values(context)
            N, Tq, _ = x.shape
            q = cca.q(x).view(N, Tq, cca.n_head, cca.head_dim).transpose(1, 2)
            q = cca.rotary(q, torch.arange(Tq, device=x.device).expand(N, Tq))
            weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(cca.head_dim), dim=-1)
            entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1).mean()
            self.stats[l]["entropy"].append(float(entropy / math.log(k.shape[2])))
        return hook

    def summary(self) -> str:
        for h in self.handles:
            h.remove()
        return "  ".join(f"L{l}: out/res {np.mean(v['ratio']):.3f} entropy {np.mean(v['entropy']):.3f}"
                         for l, v in self.stats.items())


@torch.no_grad()
def evaluate(model: RetroModel, dataset: Dataset) -> float:
    model.eval()
    nll, tokens = 0.0, 0
    for batch in DataLoader(dataset, batch_size=32):
        _, stats = model.loss_and_stats(to_device(batch, model.device))
        nll, tokens = nll + float(stats["nll_sum"]), tokens + int(stats["tokens"])
    return nll / tokens


def new_model(s: Setting, dm: RetroDataModule, **overrides) -> RetroModel:
    torch.manual_seed(s.seed)  # the same initial decoder for every run
    return RetroModel(vocab_size=len(dm.tokenizer), pad_id=PAD_ID, max_len=s.max_len, n_layer=s.n_layer,
                      n_head=s.n_head, n_embd=s.n_embd, chunk_size=s.chunk_size, enc_dim=s.enc_dim,
                      enc_depth=s.enc_depth, learning_rate=s.lr, **overrides)


def training_rows(dm: RetroDataModule, s: Setting, variants: list[str], plain: bool = True, device: str = "cpu"
                  ) -> dict[str, dict[str, float]]:
    db, token_bytes = dm.database, dm.token_bytes
    train = RetroTrainDataset(db, token_bytes, "neighbours", s.k, s.seed)
    val_tokens = dm.tokens["val"][: s.val_blocks * s.max_len]
    val = RetroEvalDataset(val_tokens, s.max_len, token_bytes, db, "neighbours", s.k, s.seed)
    results = {}
    for name in ["plain decoder"] * plain + variants:
        overrides = VARIANTS["before" if name == "plain decoder" else name]  # plain: the before decoder
        model = new_model(s, dm, **overrides).to(device)
        if name == "plain decoder":
            per_step = train_(model, WithoutRetrieval(train), s)
            results[name] = {"off": evaluate(model, WithoutRetrieval(val))}
        else:
            per_step = train_(model, train, s)
            probe = CrossAttentionProbe(model)
            real = evaluate(model, val)
            cca = probe.summary()
            results[name] = {"real": real, "shuffled": evaluate(model, ShuffledNeighbours(val)),
                             "off": evaluate(model, WithoutRetrieval(val)), "cca": cca}
        print(f"  {name:<14} {per_step:.2f} s/step  " + "  ".join(
            f"{key} {value:.3f}" if isinstance(value, float) else value for key, value in results[name].items()),
            flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=Setting.steps)
    parser.add_argument("--k", type=int, default=Setting.k)
    parser.add_argument("--seed", type=int, default=Setting.seed)
    parser.add_argument("--variants", default="before,zero_x2,zero_x5,zero_x2_apart", help=f"comma-separated, of {sorted(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--cache", default=None, help="corpus cache (default: a temporary folder)")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: recall,layers,plain,training")
    add_device_option(parser)
    args = parser.parse_args()
    require_device(args.device)
    torch.set_num_threads(args.threads)
    s = replace(Setting(), steps=args.steps, k=args.k, seed=args.seed)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}: use {sorted(VARIANTS)}")
    skip = set(args.skip.split(","))
    print("setting:", asdict(s), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        dm = data_module(s, args.cache or tmp)
        if "recall" not in skip:
            print("recall: share of the true next chunk's tokens copyable from the neighbours (4-gram match)")
            for name, value in recall_rows(dm, s):
                print(f"  {name:<32} {value:.3f}", flush=True)
        if "layers" not in skip:
            print("layers: default CCA layers by decoder depth")
            for depth in (2, 3, 4, 6, 8, 12):
                model = RetroModel(vocab_size=64, max_len=16, n_layer=depth, n_head=2, n_embd=16, chunk_size=4,
                                   enc_dim=8, enc_depth=1)
                print(f"  n_layer {depth:>2}: {model.cross_layers}")
        if "training" not in skip:
            print(f"training: validation loss after {s.steps} steps (nats per token)")
            results = training_rows(dm, s, variants, "plain" not in skip, args.device)
            plain = results.get("plain decoder", {}).get("off")
            for name in variants if plain is not None else []:
                real = results[name]["real"]
                print(f"  {name}: real neighbours vs plain decoder {real - plain:+.3f} nats, "
                      f"perplexity {100 * (math.exp(real - plain) - 1):+.1f}%")


if __name__ == "__main__":
    main()
