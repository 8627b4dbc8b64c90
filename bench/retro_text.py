#!/usr/bin/env python3
"""Does RETRO pay on real text? A RetroModel against the same decoder without retrieval, at CPU size.

    python bench/retro_text.py [--corpora licences,embedded,stdlib] [--steps 300] [--quick] [--threads 1]
                               [--max-documents N] [--cache DIR] [--device cpu|cuda]

Corpora, all offline: `licences` (the machine's licence and copyright texts, the RETRO CPU quick
start's), `embedded` (the CPython documentation inside the standard library), `stdlib` (the
standard library's source). For each, the RetroModel (neighbours from the train split's database)
and the plain decoder (the same RetroModel trained with retrieval off) start from the same seed
and see the same batches in the same order for the same steps. Printed, in order:

  validation   perplexity and bits per byte of both, overall and by overlap bucket: the share of a
               validation document's 8-grams found in the database (none < 10%, some, most > 50%)
  database     the trained RetroModel evaluated with a database of 1/8, 1/4, 1/2 and all of the
               train split, then all of it plus real text never trained on (the test and predict
               splits); rows for random neighbours and for retrieval off
  fitting      RETRO-fitting: the plain decoder, frozen, with retrieval parts trained for a tenth of
               the steps, against the plain decoder trained on for the same steps
  sampling     the RetroModel scoring held-out blocks through the sampling path (prefill, then one
               token at a time, retrieving at chunk boundaries as infer.py does) against the
               training path, which must agree within 1%
  targets      the issue's targets, met or not met
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed

from bench.device import add_device_option, require_device, to_device  # noqa: E402
from bench.retro_diagnose import Setting, WithoutRetrieval, new_model, train_  # noqa: E402
from xlab.common.tokenizer import PAD_ID  # noqa: E402
from xlab.retro import RetroDataModule, RetroModel, build_retrieval_database_  # noqa: E402
from xlab.retro.datamodule import RetroEvalDataset, RetroTrainDataset  # noqa: E402

CORPORA = {"licences": {"kind": "licences"}, "embedded": {"kind": "embedded"}, "stdlib": {"kind": "stdlib"}}
NGRAM = 8
BUCKETS = (("none", 0.0, 0.1), ("some", 0.1, 0.5), ("most", 0.5, math.inf))  # share of a document's 8-grams
FRACTIONS = (("1/8", 1 / 8), ("1/4", 1 / 4), ("1/2", 1 / 2), ("all", 1.0))
EMBEDDER = {"kind": "hashed", "dim": 256}
# CPU size: minutes a corpus on one thread. --quick: seconds, for the test that runs it end to end.
SMALL = replace(Setting(), vocab=1024, max_len=64, chunk_size=16, n_layer=4, n_embd=64, n_head=4, enc_dim=32,
                steps=1000, batch_size=16, warmup=50, val_blocks=1024)
DOCUMENTS = 200  # per corpus by default: the databases (five of them) build in seconds
QUICK = replace(SMALL, vocab=512, max_len=32, chunk_size=16, n_layer=2, n_embd=16, n_head=2, enc_dim=8, steps=4,
                batch_size=2, warmup=1, val_blocks=8)
SPLITS = [0.8, 0.1, 0.05, 0.05]  # train / val / test / predict: test and predict are the never-trained extra text


# --- overlap with the database --------------------------------------------------------------------

def ngram_keys(tokens: np.ndarray, n: int = NGRAM) -> np.ndarray:
    """One uint64 hash per n-gram of `tokens` (a polynomial over the ids, wrapping mod 2**64)."""
    t = np.asarray(tokens, dtype=np.uint64)
    if len(t) < n:
        return np.zeros(0, np.uint64)
    keys = np.zeros(len(t) - n + 1, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            keys = keys * np.uint64(1_000_003) + t[j:len(t) - n + 1 + j]
    return keys


def overlap_fractions(tokens: np.ndarray, offsets: np.ndarray, database_tokens: np.ndarray) -> np.ndarray:
    """Per document of (tokens, offsets): the share of its 8-grams that occur in `database_tokens`
    (0 for a document shorter than one 8-gram). N-grams across the database's document joins are
    counted too: a few spurious keys among millions."""
    known = np.unique(ngram_keys(database_tokens))
    shares = np.zeros(len(offsets) - 1)
    for d in range(len(offsets) - 1):
        keys = ngram_keys(tokens[offsets[d]:offsets[d + 1]])
        if len(keys):
            shares[d] = np.isin(keys, known, assume_unique=False).mean()
    return shares


def bucket_of(share: float) -> str:
    return next(name for name, low, high in BUCKETS if low <= share < high)


def first_documents(tokens: np.ndarray, offsets: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The first `fraction` of the documents (at least one) as (tokens, offsets)."""
    n = max(1, round((len(offsets) - 1) * fraction))
    return np.asarray(tokens[:offsets[n]]), np.asarray(offsets[:n + 1])


def joined(*parts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, offsets) pairs laid end to end as one (tokens, offsets)."""
    tokens = np.concatenate([np.asarray(t) for t, _ in parts])
    starts = np.cumsum([0] + [len(t) for t, _ in parts[:-1]])
    offsets = np.concatenate([[0]] + [np.asarray(o[1:]) + s for (_, o), s in zip(parts, starts)])
    return tokens, offsets.astype(np.int64)


class Scorer:
    """Perplexity and bits per byte of per-label losses over the first `n_labels` labels of a split,
    overall and per overlap bucket of the label's document."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, n_labels: int, database_tokens: np.ndarray,
                 token_bytes: np.ndarray):
        positions = np.arange(1, n_labels + 1)  # the split index each label predicts
        docs = np.searchsorted(offsets, positions, side="right") - 1
        used = int(docs.max()) + 1
        self.shares = overlap_fractions(tokens, offsets[:used + 1], database_tokens)
        self.docs, self.bucket = docs, np.array([bucket_of(s) for s in self.shares])[docs]
        self.bytes = token_bytes[np.asarray(tokens[positions], dtype=np.int64)]

    def __call__(self, nll: np.ndarray) -> dict[str, tuple[float, float, int]]:
        """name -> (perplexity, bits per byte, documents); buckets without documents are left out."""
        rows = {}
        for name, mask in [("overall", np.ones(len(nll), bool))] + [(b, self.bucket == b) for b, _, _ in BUCKETS]:
            if mask.any():
                rows[name] = (math.exp(nll[mask].mean()), nll[mask].sum() / math.log(2) / self.bytes[mask].sum(),
                              len(np.unique(self.docs[mask])))
        return rows


# --- models and evaluation ------------------------------------------------------------------------

@torch.no_grad()
def token_nll(model: RetroModel, dataset, batch_size: int = 32) -> np.ndarray:
    """Nats of every label of `dataset`'s blocks, in split order."""
    model.eval()
    out = []
    for batch in DataLoader(dataset, batch_size=batch_size):
        batch = to_device(batch, model.device)
        logits = model.batch_logits(batch)
        out.append(F.cross_entropy(logits.transpose(1, 2).float(), batch["labels"], reduction="none").reshape(-1).cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def sampling_path_nll(model: RetroModel, database, tokens: np.ndarray, s: Setting, blocks: int) -> np.ndarray:
    """Nats of each block's labels, scored as a sampler does: the first half chunk as a prompt, then
    one token at a time through the KV cache, retrieving from `database` as each chunk ends."""
    model.eval()
    model.set_database(database)
    T, out = s.max_len, []
    for b in range(blocks):
        window = torch.as_tensor(np.asarray(tokens[b * T:b * T + T + 1], dtype=np.int64), device=model.device)[None]
        cache, prompt = model.new_cache(1), max(1, s.chunk_size // 2)
        logits = [model(window[:, :prompt], cache=cache)]
        logits += [model(window[:, t:t + 1], cache=cache) for t in range(prompt, T)]
        out.append(F.cross_entropy(torch.cat(logits, 1)[0].float(), window[0, 1:], reduction="none").cpu())
    model.set_database(None)
    return torch.cat(out).numpy()


def data_module(source: dict, s: Setting, cache: str, max_documents: int | None) -> RetroDataModule:
    dm = RetroDataModule(sources=[source], vocab_size=s.vocab, max_len=s.max_len, chunk_size=s.chunk_size, k=s.k,
                         batch_size=s.batch_size, cache_dir=cache, embedder=EMBEDDER, max_documents=max_documents,
                         split_fractions=SPLITS)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def database_(dm: RetroDataModule, s: Setting, tokens: np.ndarray, offsets: np.ndarray, folder: Path):
    """A database over (tokens, offsets) built as the data module builds its own."""
    return build_retrieval_database_(tokens, offsets, folder, chunk_size=s.chunk_size, embedder=EMBEDDER, k=s.k,
                                     tokenizer=dm.tokenizer, progress=False, seq_len=s.max_len, pad_id=PAD_ID)


def fitted_from_(plain: RetroModel, s: Setting, dm: RetroDataModule, folder: Path) -> RetroModel:
    """A RETRO-fitted model of `plain`'s decoder, through init_from as a user runs it."""
    path = folder / "plain.ckpt"
    torch.save({"state_dict": plain.state_dict(), "hyper_parameters": dict(plain.hparams),
                "xlab_model_class": "xlab.retro.model.RetroModel"}, path)
    return new_model(s, dm, init_from=str(path), cca_zero_init=True).to(plain.device)


def lower(ppl: float, reference: float) -> float:
    """How much lower `ppl` is than `reference`, as a fraction of it (negative: higher)."""
    return 1 - ppl / reference


def target(text: str, met: bool) -> None:
    print(f"  {'met    ' if met else 'not met'}  {text}", flush=True)


# --- one corpus -----------------------------------------------------------------------------------

def run_corpus(name: str, s: Setting, cache: str, max_documents: int | None, device: str) -> None:
    print(f"== {name}", flush=True)
    dm = data_module(CORPORA[name], s, cache, max_documents)
    db, T = dm.database, s.max_len
    train = RetroTrainDataset(db, dm.token_bytes, "neighbours", s.k, s.seed)
    val_tokens = dm.tokens["val"]
    blocks = min(s.val_blocks, (len(val_tokens) - 1) // T)
    scorer = Scorer(val_tokens, dm.document_offsets("val"), blocks * T, dm.tokens["train"], dm.token_bytes)
    print(f"  train {len(dm.tokens['train']):,} tokens, {db.n_sequences:,} sequences; validation {blocks} blocks "
          f"of {T} tokens, documents by overlap: " + ", ".join(
              f"{b} {int((np.array([bucket_of(x) for x in scorer.shares]) == b).sum())}" for b, _, _ in BUCKETS))

    def val(database, retrieval: str):
        return RetroEvalDataset(val_tokens[:blocks * T + 1], T, dm.token_bytes, database, retrieval, s.k, s.seed)

    models = {}
    for kind, dataset in (("retro", train), ("plain", WithoutRetrieval(train))):
        models[kind] = new_model(s, dm).to(device)
        per_step = train_(models[kind], dataset, s)
        print(f"  trained {kind}: {s.steps} steps, {per_step:.2f} s/step", flush=True)
    retro, plain = models["retro"], models["plain"]
    scores = {"RetroModel, neighbours": scorer(token_nll(retro, val(db, "neighbours"))),
              "plain decoder": scorer(token_nll(plain, val(db, "off")))}
    print(f"  validation: perplexity / bits per byte (documents) after {s.steps} steps")
    for row, by_bucket in scores.items():
        print(f"    {row:<24}" + "".join(f"  {b} {p:8.3f} / {bpb:.3f} ({n})" for b, (p, bpb, n) in by_bucket.items()))
    ours, base = scores["RetroModel, neighbours"], scores["plain decoder"]

    print("  database size: the trained RetroModel's validation perplexity (overall, most-overlap documents)")
    curve = []
    with tempfile.TemporaryDirectory() as tmp:
        train_docs = (dm.tokens["train"], dm.document_offsets("train"))
        extra = joined(train_docs, *((dm.tokens[split], dm.document_offsets(split)) for split in ("test", "predict")))
        sizes = [(label, first_documents(*train_docs, f)) for label, f in FRACTIONS[:-1]] + [("all", None),
                                                                                            ("all + extra", extra)]
        for label, part in sizes:
            database = db if part is None else database_(dm, s, *part, Path(tmp) / label.replace("/", "_"))
            by_bucket = scorer(token_nll(retro, val(database, "neighbours")))
            curve.append(by_bucket["overall"][0])
            print(f"    {label:<12} {len(database):>8,} chunks  {by_bucket['overall'][0]:8.3f}  "
                  f"{by_bucket.get('most', (math.nan,))[0]:8.3f}", flush=True)
        for retrieval in ("random", "off"):
            by_bucket = scorer(token_nll(retro, val(db, retrieval)))
            print(f"    {retrieval:<12} {'':>15}  {by_bucket['overall'][0]:8.3f}  "
                  f"{by_bucket.get('most', (math.nan,))[0]:8.3f}", flush=True)

        # The new retrieval parts get a fresh schedule; the decoder goes on at the rate its cosine
        # ended on (min_lr_ratio 0.1): warming it up again to the peak would make it worse, not a baseline.
        extension = replace(s, steps=max(1, s.steps // 10), warmup=max(1, s.warmup // 10), seed=s.seed + 1)
        fitted = fitted_from_(plain, s, dm, Path(tmp))
        continued = copy.deepcopy(plain)
        train_(fitted, train, extension)
        train_(continued, WithoutRetrieval(train), replace(extension, lr=0.1 * s.lr, warmup=0))
    fit = scorer(token_nll(fitted, val(db, "neighbours")))["overall"][0]
    more = scorer(token_nll(continued, val(db, "off")))["overall"][0]
    print(f"  fitting: plain decoder {base['overall'][0]:.3f}; {extension.steps} more steps: plain decoder {more:.3f}, "
          f"RETRO-fitted {fit:.3f} ({100 * lower(fit, more):+.1f}% lower); from scratch at {s.steps} steps: "
          f"{100 * lower(ours['overall'][0], base['overall'][0]):+.1f}% lower")

    checked = min(blocks, 4)
    sampled = math.exp(sampling_path_nll(retro, db, val_tokens, s, checked).mean())
    trained = math.exp(token_nll(retro, val(db, "neighbours"))[:checked * T].mean())
    print(f"  sampling path: {checked} blocks, perplexity {sampled:.4f} against {trained:.4f} through training "
          f"({100 * (sampled / trained - 1):+.3f}%)")

    print("  targets")
    overall, most = lower(ours["overall"][0], base["overall"][0]), None
    if "most" in ours:
        most = lower(ours["most"][0], base["most"][0])
        target(f"most-overlap documents >= 20% lower perplexity: {100 * most:+.1f}%", most >= 0.2)
    else:
        print("  (no validation document in the most-overlap bucket)")
    target(f"overall >= 5% lower perplexity: {100 * overall:+.1f}%", overall >= 0.05)
    if "none" in ours:
        worse = ours["none"][0] / base["none"][0] - 1
        target(f"no-overlap documents <= 2% worse: {100 * worse:+.1f}%", worse <= 0.02)
    else:
        print("  (no validation document in the no-overlap bucket)")
    target("gain monotone with database size: " + " > ".join(f"{p:.3f}" for p in curve),
           all(a > b for a, b in zip(curve, curve[1:])))
    # Against the better of the decoder and its continuation: a continuation that got worse (a fresh
    # optimizer's first steps) is no baseline.
    fit_gain = lower(fit, min(more, base["overall"][0]))
    target(f"RETRO-fitted >= half the scratch gain at a tenth of the steps: {100 * fit_gain:+.1f}% against "
           f"{100 * overall:+.1f}%", overall > 0 and fit_gain >= overall / 2)
    target(f"sampling path within 1% of the training path: {100 * (sampled / trained - 1):+.3f}%",
           abs(sampled / trained - 1) <= 0.01)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", default="licences", help=f"comma-separated, of {sorted(CORPORA)}")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps (default {SMALL.steps})")
    parser.add_argument("--quick", action="store_true", help="a tiny model, a few steps, 40 documents")
    parser.add_argument("--max-documents", type=int, default=None,
                        help=f"read at most this many documents (default {DOCUMENTS})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--cache", default=None, help="corpus cache (default: a temporary folder)")
    add_device_option(parser)
    args = parser.parse_args(argv)
    require_device(args.device)
    corpora = [c for c in args.corpora.split(",") if c]
    unknown = sorted(set(corpora) - set(CORPORA))
    if unknown or not corpora:
        parser.error(f"unknown corpora {unknown}: use {sorted(CORPORA)}")
    torch.set_num_threads(args.threads)
    s = QUICK if args.quick else SMALL
    s = replace(s, steps=args.steps) if args.steps else s
    max_documents = args.max_documents or (40 if args.quick else DOCUMENTS)
    print(f"setting: {asdict(s)}, max_documents {max_documents}, {args.threads} thread(s), "
          f"{time.strftime('%Y-%m-%d')}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in corpora:
            run_corpus(name, s, args.cache or tmp, max_documents, args.device)


if __name__ == "__main__":
    main()
