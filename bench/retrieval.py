"""Benchmark the retrieval database pipeline on growing synthetic corpora.

For each size (in chunks) a fresh process generates a corpus on disk (random Zipf-distributed
tokens with phrases repeated across documents, so retrieval has something to find), then runs
chunking, hashed embedding (fit + embed), index building (automatic choice) and neighbour
precomputation, and reports chunks/s per step and the peak growth of anonymous memory (heap,
not the memmaps' file pages, which the kernel can drop) over the process's baseline. Apart from
the index itself this growth must stay flat as the corpus grows: every step streams.

    python bench/retrieval.py                      # 20k, 80k, 320k chunks, a few minutes on 2 cores
    python bench/retrieval.py --sizes 10000,40000  # other sizes
    python bench/retrieval.py --factory IVF1024,SQ8 --target-recall 0.95   # one index kind for every row
    python bench/retrieval.py --device cpu         # keep faiss off the GPU even when there is one

Each row prints the index kind chosen for the memory budget (or the one given), the nprobe the
tuning settled on, recall@10 against exact search (target 0.9 by default: the tuning raises
nprobe, or moves to finer codes within the budget, until it is reached), queries/s at that
setting, and the index's memory. The automatic kind changes with the corpus size (exact search
up to 65,536 chunks, then IVF with ~2 sqrt(n) lists); --factory fixes one kind so that rows
compare like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHUNK_SIZE, VOCAB, SOS, EOS = 64, 8000, 2, 3


def write_corpus(folder: Path, n_chunks: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A token memmap and document offsets of about `n_chunks` chunks, generated in batches."""
    rng = np.random.default_rng(seed)
    phrases = [rng.integers(4, VOCAB, int(rng.integers(8, 48))) for _ in range(4000)]
    zipf = np.cumsum(1.0 / np.arange(1, VOCAB - 3) ** 1.1)
    ranks = np.searchsorted(zipf / zipf[-1], rng.random(1 << 20))  # a pool of Zipf ranks to slice from
    # Topics: each ranks the vocabulary differently, so documents on one topic share frequent words.
    topics = [4 + rng.permutation(VOCAB - 4) for _ in range(64)]
    offsets, chunks, total = [0], 0, 0
    with open(folder / "tokens.bin", "wb") as out:
        while chunks < n_chunks:
            docs = []
            for _ in range(256):
                length = int(np.clip(rng.lognormal(6.0, 0.8), 20, 8000))
                topic = topics[int(rng.integers(len(topics)))]
                parts, size = [], 0
                while size < length:
                    # A third of the text is shared phrases; the rest is fresh Zipf noise.
                    if rng.random() < 0.33:
                        part = phrases[int(rng.integers(len(phrases)))]
                    else:
                        start = int(rng.integers(len(ranks) - 64))
                        part = topic[ranks[start:start + int(rng.integers(8, 64))]]
                    parts.append(part)
                    size += len(part)
                docs.append(np.concatenate([[SOS], *parts, [EOS]]).astype(np.uint16))
            for doc in docs:
                out.write(doc.tobytes())
                total += len(doc)
                offsets.append(total)
                chunks += -(-len(doc) // CHUNK_SIZE)
                if chunks >= n_chunks:
                    break
    tokens = np.memmap(folder / "tokens.bin", dtype=np.uint16, mode="r")
    return tokens, np.asarray(offsets, dtype=np.int64)


class AnonPeak:
    """Samples RssAnon from /proc every few ms: heap growth, excluding file-backed memmap pages."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.003)

    def __enter__(self):
        self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def run_one(n_chunks: int, dim: int, budget: str, search_budget: float | None, factory: str | None,
            target: float) -> dict:
    from xlab.retro import build_index_, chunk_tokens_, embed_chunks_, make_embedder, precompute_neighbours_
    from xlab.retro.chunking import open_chunks

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tokens, offsets = write_corpus(folder, n_chunks)
        baseline = AnonPeak.now()
        result = {"chunks": 0, "steps": {}}

        def step(name, fn):
            started = time.perf_counter()
            with AnonPeak() as peak:
                out = fn()
            seconds = time.perf_counter() - started
            result["steps"][name] = {"seconds": seconds, "peak_growth": peak.peak - baseline}
            return out

        step("chunk", lambda: chunk_tokens_(tokens, offsets, folder / "db", CHUNK_SIZE, seq_len=2048))
        files = open_chunks(folder / "db")
        n = result["chunks"] = len(files["chunks"])
        embedder = make_embedder({"kind": "hashed", "dim": dim})
        step("embed", lambda: embed_chunks_(embedder.fit(files["chunks"]), files["chunks"], folder / "db" / "emb.npy"))
        embeddings = np.load(folder / "db" / "emb.npy", mmap_mode="r")
        report = step("index", lambda: build_index_(embeddings, folder / "db" / "index.faiss", index_factory=factory,
                                                    max_index_memory_usage=budget, target_recall=target,
                                                    search_time_budget_s=search_budget))
        stats = step("neighbours", lambda: precompute_neighbours_(folder / "db" / "index.faiss", embeddings,
                                                                 files["chunk_doc_ids"], 2, 10,
                                                                 folder / "db" / "neighbours.npy"))
        result["index"] = {key: report[key] for key in ("factory", "index_bytes", "recall", "search_params",
                                                        "train_size", "queries_per_s", "target_reached")}
        result["short_rows"] = stats["short_rows"]
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20000,80000,320000", help="comma-separated database sizes in chunks")
    parser.add_argument("--dim", type=int, default=256, help="hashed embedder dimension")
    parser.add_argument("--budget", default="1G", help="max_index_memory_usage")
    parser.add_argument("--search-budget", type=float, default=None,
                        help="search_time_budget_s: projected seconds to search all chunks, caps nprobe (default: none)")
    parser.add_argument("--target-recall", type=float, default=0.9, help="recall@10 the index must reach (default 0.9)")
    parser.add_argument("--factory", default=None, help="one faiss index_factory for every size (default: automatic)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="cpu hides GPUs from faiss; default: a GPU when faiss sees one")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one size in this process
    args = parser.parse_args()
    if args.device == "cuda":
        import faiss

        if faiss.get_num_gpus() == 0:
            sys.exit("--device cuda: faiss sees no GPU (a CPU build of faiss, or no visible CUDA device); "
                     "run with --device cpu.")
    if args.one:
        print(json.dumps(run_one(args.one, args.dim, args.budget, args.search_budget, args.factory,
                                 args.target_recall)))
        return
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {}))
    extra = ["--target-recall", str(args.target_recall)]
    extra += ["--search-budget", str(args.search_budget)] if args.search_budget else []
    extra += ["--factory", args.factory] if args.factory else []

    mib = 1 << 20
    print(f"target recall@10: {args.target_recall}")
    print(f"{'chunks':>8} {'chunk/s':>10} {'embed/s':>8} {'index s':>7} {'neigh/s':>8} {'index':>16} {'nprobe':>6} "
          f"{'recall':>6} {'query/s':>8} {'idx MiB':>7} {'train MiB':>9} {'peak MiB':>8} {'other MiB':>9} {'total s':>7}")
    for size in (int(s) for s in args.sizes.split(",")):
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--one", str(size), "--dim", str(args.dim),
                               "--budget", args.budget, *extra], capture_output=True, text=True, env=env)
        if proc.returncode:
            sys.exit(f"size {size} failed:\n{proc.stderr}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        s, n, index = r["steps"], r["chunks"], r["index"]
        train_bytes = index["train_size"] * args.dim * 4
        peak = max(step["peak_growth"] for step in s.values())
        # Memory that is neither the index (held while building and searching) nor the k-means
        # training sample (sized like the coarse quantizer): this is what must not grow with n.
        other = max(s["chunk"]["peak_growth"], s["embed"]["peak_growth"],
                    s["index"]["peak_growth"] - index["index_bytes"] - train_bytes,
                    s["neighbours"]["peak_growth"] - index["index_bytes"])
        print(f"{n:>8} {n / s['chunk']['seconds']:>10,.0f} {n / s['embed']['seconds']:>8,.0f} "
              f"{s['index']['seconds']:>7.1f} {n / s['neighbours']['seconds']:>8,.0f} {index['factory']:>16} "
              f"{index['search_params'].get('nprobe', '-'):>6} {index['recall']:>6.3f}"
              f"{'' if index['target_reached'] else '!'} {index['queries_per_s']:>8,.0f} "
              f"{index['index_bytes'] / mib:>7.1f} {train_bytes / mib:>9.1f} {peak / mib:>8.1f} {other / mib:>9.1f} "
              f"{time.perf_counter() - started:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
