"""The RETRO retrieval database: build it step by step (resumably), then open it read-only.

`build_retrieval_database_` runs four steps into `out_dir`:

    chunks      chunk_tokens_          chunks.npy, chunk_doc_ids.npy, doc_chunk_offsets.npy, seq_starts.npy
    embeddings  embedder.fit + embed   embedder_state.npz, embeddings.npy
    index       build_index_           index.faiss, index.report.json
    neighbours  precompute_neighbours_ neighbours.npy

Every artefact is written aside and renamed, and each step ends by writing a stamp
`steps/<step>.json` holding its settings (including the identity of what it was built from)
and its result. A step whose stamp matches the current settings and whose files exist is
skipped, so an interrupted build resumes at the step it was in, and changing e.g. k re-runs
only the neighbours step. A changed input (tokens are hashed) re-runs everything.

`manifest.json` is written last; its presence marks a complete database. It records the
settings, the embedder fingerprint, sizes, and the sha256 of the chunk array: a model trained
with this database stores `RetrievalDatabase.identity()` and checks it with `check_identity`.

`RetrievalDatabase(out_dir)` opens the memmaps read-only; the faiss index and the embedder are
loaded only when `search` needs them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from xlab.common.errors import XLabError
from xlab.common.files import size_mismatch, write_text_, written_aside_
from xlab.retro.chunking import CHUNK_FILES, CHUNKS, chunk_tokens_, chunks_sha256, neighbour_tokens, open_chunks
from xlab.retro.embedders import Embedder, embed_chunks_, make_embedder
from xlab.retro.index import build_index_, load_index, parse_memory, report_path
from xlab.retro.neighbours import filter_neighbours, precompute_neighbours_

FORMAT_VERSION = 1
MANIFEST, STEPS = "manifest.json", "steps"
EMBEDDER_STATE, EMBEDDINGS, INDEX, NEIGHBOURS = "embedder_state.npz", "embeddings.npy", "index.faiss", "neighbours.npy"
HASH_BATCH = 1 << 24  # tokens per read while hashing the input


def build_retrieval_database_(
    tokens: np.ndarray,
    doc_offsets: np.ndarray,
    out_dir: str | Path,
    chunk_size: int = 64,
    embedder: dict | Embedder | None = None,
    index_factory: str | None = None,
    max_index_memory_usage: str | int = "1G",
    k: int = 2,
    num_extra_neighbors: int = 10,
    tokenizer: Any = None,
    progress: bool = True,
    *,
    seq_len: int = 2048,
    pad_id: int | None = None,
    metric: str = "ip",
    exact_max_vectors: int = 1 << 16,
    seed: int = 0,
    index_options: dict[str, Any] | None = None,
) -> RetrievalDatabase:
    """Build (or finish building) the database of one split in `out_dir` and open it.

    `embedder` is a spec for `make_embedder` (default: hashed n-grams) or an Embedder; `pad_id`
    defaults to tokenizer.pad_id, else 0; `index_options` go to `build_index_` (e.g.
    target_recall, search_time_budget_s, train_size). See the module docstring for the steps.
    """
    out_dir = Path(out_dir)
    (out_dir / STEPS).mkdir(parents=True, exist_ok=True)
    pad_id = pad_id if pad_id is not None else getattr(tokenizer, "pad_id", 0)
    embedder = make_embedder(embedder, tokenizer=tokenizer, pad_id=pad_id)
    budget = parse_memory(max_index_memory_usage)
    if k < 1 or num_extra_neighbors < 0:
        raise XLabError(f"need k >= 1 and num_extra_neighbors >= 0, got k={k}, "
                        f"num_extra_neighbors={num_extra_neighbors}.")

    # One builder at a time per folder: other ranks wait, then find every step done.
    with FileLock(str(out_dir / ".build.lock")), _Bars(progress) as bars:
        source = _input_signature(tokens, doc_offsets, bars)

        def chunks_step() -> dict:
            summary = chunk_tokens_(tokens, doc_offsets, out_dir, chunk_size, pad_id, seq_len,
                                    progress=bars.task("chunk", int(doc_offsets[-1])))
            summary["sha256"] = chunks_sha256(np.load(out_dir / CHUNKS, mmap_mode="r"))
            return summary

        chunk_settings = {"chunk_size": chunk_size, "seq_len": seq_len, "pad_id": pad_id, "input": source}
        chunks, chunks_id = _step(out_dir, "chunks", chunk_settings, CHUNK_FILES, chunks_step, bars)
        files = open_chunks(out_dir)
        n = len(files["chunks"])
        if k >= n:  # a chunk's own document is excluded, so fewer than n chunks can be its neighbours
            raise XLabError(f"k={k} neighbours per chunk can never be found in a database of {n:,} chunks: lower "
                            f"data k below {n:,} (RETRO used 2) or add documents.")

        def embeddings_step() -> dict:
            if embedder.needs_fit:
                embedder.fit(files["chunks"], progress=bars.task("fit embedder", n))
            _save_state_(embedder, out_dir / EMBEDDER_STATE)
            embed_chunks_(embedder, files["chunks"], out_dir / EMBEDDINGS, progress=bars.task("embed", n))
            return {"n": n, "dim": embedder.dim}

        embedded, embedded_id = _step(out_dir, "embeddings", {"embedder": embedder.fingerprint(), "chunks": chunks_id},
                                      (EMBEDDER_STATE, EMBEDDINGS), embeddings_step, bars)
        with np.load(out_dir / EMBEDDER_STATE) as state:  # the fitted state, also when the step was reused
            embedder.load_state(dict(state))
        embeddings = np.load(out_dir / EMBEDDINGS, mmap_mode="r")

        def index_step() -> dict:
            return build_index_(embeddings, out_dir / INDEX, index_factory, budget, metric,
                                exact_max_vectors=exact_max_vectors, seed=seed, progress=bars.task("index", n),
                                **(index_options or {}))

        index_settings = {"index_factory": index_factory, "budget_bytes": budget, "metric": metric,
                          "exact_max_vectors": exact_max_vectors, "seed": seed, "options": index_options or {},
                          "embeddings": embedded_id}
        indexed, indexed_id = _step(out_dir, "index", index_settings, (INDEX, report_path(INDEX).name), index_step, bars)

        def neighbours_step() -> dict:
            return precompute_neighbours_(out_dir / INDEX, embeddings, files["chunk_doc_ids"], k, num_extra_neighbors,
                                          out_dir / NEIGHBOURS, progress=bars.task("neighbours", n))

        found, _ = _step(out_dir, "neighbours", {"k": k, "num_extra_neighbors": num_extra_neighbors,
                                                 "index": indexed_id}, (NEIGHBOURS,), neighbours_step, bars)
        del files, embeddings  # unmap before the manifest marks the folder complete

        if not (out_dir / MANIFEST).exists():
            manifest = {
                "format_version": FORMAT_VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "settings": {"chunk_size": chunk_size, "seq_len": seq_len, "pad_id": pad_id, "k": k,
                             "num_extra_neighbors": num_extra_neighbors, "index_factory": index_factory,
                             "max_index_memory_usage": max_index_memory_usage, "metric": metric},
                "embedder": {"fingerprint": embedder.fingerprint(), "spec": embedder.spec(), "dim": embedded["dim"]},
                "chunks_sha256": chunks["sha256"],
                "sizes": {key: chunks[key] for key in ("n_tokens", "n_docs", "n_chunks", "n_seqs")}
                | {"dim": embedded["dim"], "index_bytes": indexed["index_bytes"]},
                "chunks": {key: chunks[key] for key in ("pad_fraction", "seq_coverage")},
                "index": {key: indexed[key] for key in ("factory", "search_params", "recall", "k", "queries_per_s",
                                                        "index_bytes", "chosen_automatically")},
                "neighbours": found,
                "input": source,
                "files": _describe_files(out_dir),
            }
            _write_json_(out_dir / MANIFEST, manifest)
    return RetrievalDatabase(out_dir, tokenizer=tokenizer, embedder=embedder)


class RetrievalDatabase:
    """A built database, opened read-only.

    `neighbours(chunk_ids)` gives the precomputed neighbours as tokens (len, k, 2 * chunk_size);
    `search(query_chunks)` retrieves for new chunks (e.g. a validation split);
    `sequence(i)` is training example i: (seq_len tokens, (m, k, 2 * chunk_size) neighbours).
    """

    def __init__(self, out_dir: str | Path, tokenizer: Any = None, embedder: Embedder | None = None):
        self.out_dir = Path(out_dir)
        path = self.out_dir / MANIFEST
        if not path.is_file():
            raise XLabError(f"{self.out_dir} is not a complete retrieval database (no {MANIFEST}): "
                            "run build_retrieval_database_ into it first.")
        self.manifest: dict[str, Any] = _read_manifest(self.out_dir)
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise XLabError(f"{self.out_dir} has database format {self.manifest.get('format_version')}, this code "
                            f"reads {FORMAT_VERSION}: rebuild the database.")
        problem = _damaged_file(self.out_dir, self.manifest.get("files", {}))
        if problem is not None:
            raise _damaged(self.out_dir, problem)
        self.tokenizer, self._embedder, self._index = tokenizer, embedder, None
        files = open_chunks(self.out_dir)
        self.chunks, self.chunk_doc_ids = files["chunks"], files["chunk_doc_ids"]
        self.doc_chunk_offsets, self.seq_starts = files["doc_chunk_offsets"], files["seq_starts"]
        self.neighbour_ids_all = np.load(self.out_dir / NEIGHBOURS, mmap_mode="r")
        settings = self.manifest["settings"]
        self.chunk_size, self.seq_len, self.pad_id = settings["chunk_size"], settings["seq_len"], settings["pad_id"]
        self.k, self.num_extra_neighbors = settings["k"], settings["num_extra_neighbors"]

    # --- identity -------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """What a model checkpoint stores to check later that it meets the same database."""
        return {"chunks_sha256": self.manifest["chunks_sha256"], "embedder": self.manifest["embedder"]["fingerprint"],
                "chunk_size": self.chunk_size, "k": self.k}

    def check_identity(self, expected: dict[str, Any]) -> None:
        mine = self.identity()
        differ = [key for key in expected if mine.get(key) != expected[key]]
        if differ:
            raise XLabError(f"retrieval database {self.out_dir} differs from the one the model was trained with "
                            f"({', '.join(differ)}): point the model at the database it was built with.")

    # --- reading --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def n_sequences(self) -> int:
        return len(self.seq_starts)

    def neighbour_ids(self, chunk_ids: np.ndarray, exclude_doc_ids: np.ndarray | int | None = None) -> np.ndarray:
        """Precomputed neighbour chunk ids (len, k), -1 where there is none.

        They never come from the query chunk's own document; `exclude_doc_ids` (one per chunk, or
        one for all) removes another document too, keeping the rest in order.
        """
        chunk_ids = np.asarray(chunk_ids, dtype=np.int64).reshape(-1)
        ids = np.asarray(self.neighbour_ids_all[chunk_ids])
        if exclude_doc_ids is not None:
            exclude = np.broadcast_to(np.asarray(exclude_doc_ids, dtype=np.int64), (len(ids),))
            ids = filter_neighbours(ids, self.chunk_doc_ids, self.k, exclude)
        return ids

    def neighbours(self, chunk_ids: np.ndarray, exclude_doc_ids: np.ndarray | int | None = None) -> np.ndarray:
        """Neighbour tokens (len, k, 2 * chunk_size) int32: each neighbour chunk plus its continuation."""
        return self.tokens_of(self.neighbour_ids(chunk_ids, exclude_doc_ids))

    def tokens_of(self, ids: np.ndarray) -> np.ndarray:
        """Chunk ids of any shape -> neighbour token arrays ids.shape + (2 * chunk_size,)."""
        return neighbour_tokens(self.chunks, self.chunk_doc_ids, ids, self.pad_id)

    def sequence(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Training example i: the seq_len tokens from seq_starts[i] and their (m, k, 2 * chunk_size) neighbours."""
        m = self.seq_len // self.chunk_size
        start = int(self.seq_starts[i])
        ids = np.arange(start, start + m)
        return np.asarray(self.chunks[start:start + m]).reshape(-1), self.neighbours(ids)

    # --- searching new chunks -------------------------------------------------------------------
    def search_ids(self, query_chunks: np.ndarray, k: int | None = None,
                   exclude_doc_ids: np.ndarray | int | None = None) -> np.ndarray:
        """Nearest database chunk ids (B, k) for (B, chunk_size) token chunks, -1 where there is none."""
        query_chunks = np.asarray(query_chunks)
        if query_chunks.ndim != 2 or query_chunks.shape[1] != self.chunk_size:
            raise XLabError(f"query chunks must have shape (B, {self.chunk_size}), got {query_chunks.shape}.")
        k = k or self.k
        vectors = self.embedder.embed(query_chunks)
        extra = self.num_extra_neighbors if exclude_doc_ids is not None else 0
        _, candidates = self.index.search(vectors, min(k + extra, len(self)))
        exclude = None
        if exclude_doc_ids is not None:
            exclude = np.broadcast_to(np.asarray(exclude_doc_ids, dtype=np.int64), (len(query_chunks),))
        return filter_neighbours(candidates, self.chunk_doc_ids, k, exclude)

    def search(self, query_chunks: np.ndarray, k: int | None = None,
               exclude_doc_ids: np.ndarray | int | None = None) -> np.ndarray:
        """Neighbour tokens (B, k, 2 * chunk_size) for (B, chunk_size) query chunks."""
        return self.tokens_of(self.search_ids(query_chunks, k, exclude_doc_ids))

    @property
    def index(self):
        if self._index is None:
            self._index = load_index(self.out_dir / INDEX)
        return self._index

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            embedder = make_embedder(self.manifest["embedder"]["spec"], tokenizer=self.tokenizer, pad_id=self.pad_id)
            if embedder.fingerprint() != self.manifest["embedder"]["fingerprint"]:
                raise XLabError(f"the embedder rebuilt from {self.out_dir / MANIFEST} is not the one that built the "
                                "database (its model changed): pass the original as embedder=.")
            with np.load(self.out_dir / EMBEDDER_STATE) as state:
                embedder.load_state(dict(state))
            self._embedder = embedder
        return self._embedder

    # Memmaps, the index and a model do not travel to DataLoader workers: reopen there instead.
    def __getstate__(self) -> dict[str, Any]:
        return {"out_dir": self.out_dir, "tokenizer": self.tokenizer}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["out_dir"], tokenizer=state["tokenizer"])


# --- build helpers ------------------------------------------------------------------------------

def _step(out_dir: Path, name: str, settings: dict, outputs: tuple[str, ...], build: Callable[[], dict],
          bars: _Bars) -> tuple[dict, str]:
    """Run `build` unless the stamp says these settings were already built and the files exist.

    Returns the step's result and its identity, a hash of settings and result that the steps
    built from it put in their own settings (so a rebuilt step invalidates what follows).
    """
    stamp = out_dir / STEPS / f"{name}.json"
    settings = json.loads(json.dumps(settings, default=str))  # compare as it will read back
    if stamp.is_file():
        saved = _stamp(stamp)
        # The outputs as the step wrote them: one cut short since (a full disk) is built again.
        if (saved.get("settings") == settings and all((out_dir / o).is_file() for o in outputs)
                and size_mismatch(out_dir, saved.get("sizes", {})) is None):
            bars.note(f"{name}: up to date, reused")
            return saved["result"], _identity(saved)
        stamp.unlink()  # stale: the outputs about to be replaced no longer match any stamp
    (out_dir / MANIFEST).unlink(missing_ok=True)  # the folder is incomplete until the end
    started = time.time()
    result = json.loads(json.dumps(build(), default=str))
    saved = {"settings": settings, "result": result, "seconds": round(time.time() - started, 2),
             "sizes": {o: (out_dir / o).stat().st_size for o in outputs}}
    _write_json_(stamp, saved)
    return result, _identity(saved)


def _identity(stamp: dict) -> str:
    return hashlib.sha256(json.dumps([stamp["settings"], stamp["result"]], sort_keys=True).encode()).hexdigest()[:16]


def _input_signature(tokens: np.ndarray, doc_offsets: np.ndarray, bars: _Bars) -> dict:
    """Sizes and a sha256 of the tokens and offsets: a changed corpus re-runs every step."""
    digest = hashlib.sha256()
    advance = bars.task("hash input", len(tokens))
    for t0 in range(0, len(tokens), HASH_BATCH):
        digest.update(np.ascontiguousarray(tokens[t0:t0 + HASH_BATCH]).tobytes())
        advance(min(HASH_BATCH, len(tokens) - t0))
    for d0 in range(0, len(doc_offsets), HASH_BATCH):
        digest.update(np.ascontiguousarray(doc_offsets[d0:d0 + HASH_BATCH], dtype=np.int64).tobytes())
    return {"n_tokens": int(len(tokens)), "n_docs": int(len(doc_offsets)) - 1, "dtype": str(tokens.dtype),
            "sha256": digest.hexdigest()}


def _save_state_(embedder: Embedder, path: Path) -> None:
    # Through a file object: given a name, np.savez would append .npz to the temporary one.
    with written_aside_(path) as tmp, open(tmp, "wb") as out:
        np.savez(out, **embedder.state())


def _write_json_(path: Path, content: dict) -> None:
    write_text_(path, json.dumps(content, indent=2, default=str))


def _describe_files(out_dir: Path) -> dict[str, dict]:
    files = {}
    for name in (*CHUNK_FILES, EMBEDDINGS, NEIGHBOURS):
        array = np.load(out_dir / name, mmap_mode="r")
        files[name] = {"dtype": array.dtype.name, "shape": list(array.shape)}
    for name in (*CHUNK_FILES, EMBEDDINGS, NEIGHBOURS, EMBEDDER_STATE, INDEX, report_path(INDEX).name):
        files.setdefault(name, {})["bytes"] = (out_dir / name).stat().st_size
    return files


# --- reading a finished database, trusting nothing that changed since ---------------------------
def _read_manifest(out_dir: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        manifest = None
    if not isinstance(manifest, dict):
        raise _damaged(out_dir, f"{MANIFEST} is not valid JSON")
    return manifest


def _stamp(path: Path) -> dict[str, Any]:
    """A step's stamp; one cut short counts as no stamp (the step runs again)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _damaged_file(out_dir: Path, files: dict[str, dict]) -> str | None:
    """What differs from the manifest's record of the files: the first one missing, of another size
    or (manifests that recorded shapes only) unreadable or of another shape; None if nothing."""
    sizes = {name: record["bytes"] for name, record in files.items() if "bytes" in record}
    problem = size_mismatch(out_dir, sizes)
    if problem is not None:
        return problem
    for name, record in files.items():
        if "shape" in record and "bytes" not in record:
            try:
                shape = list(np.load(out_dir / name, mmap_mode="r").shape)
            except (ValueError, EOFError, OSError):
                return f"{name} is unreadable"
            if shape != record["shape"]:
                return f"{name} has shape {shape}, written with {record['shape']}"
    return None


def _damaged(out_dir: Path, problem: str) -> XLabError:
    return XLabError(f"the retrieval database {out_dir} is damaged ({problem}): delete that folder and run again to "
                     "rebuild it (./manage.py build-retrieval for a database_dir).")


class _Bars:
    """One rich progress bar per step (or nothing when progress=False)."""

    def __init__(self, enabled: bool):
        self.progress = None
        if enabled:
            self.progress = Progress(TextColumn("[bold]{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn())

    def __enter__(self) -> _Bars:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def task(self, description: str, total: int) -> Callable[[int], None]:
        if self.progress is None:
            return lambda n: None
        task_id = self.progress.add_task(description, total=total)
        return lambda n: self.progress.advance(task_id, n)

    def note(self, message: str) -> None:
        if self.progress is not None:
            self.progress.console.print(f"[dim]{message}[/dim]")
