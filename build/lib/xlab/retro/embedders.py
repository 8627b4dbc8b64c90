"""Frozen chunk embedders: token-id chunks in, L2-normalised float32 vectors out.

Two kinds, chosen by a small spec dict (`make_embedder`):

- `HashedNgramEmbedder` ({"kind": "hashed"}): the offline default. TF-IDF over the token n-grams
  (1..n) of a chunk, hashed into `dim` buckets. It reads token ids directly (no text, no model,
  no download) and needs one pass over the database to fit the IDF.
- `HFEncoderEmbedder` ({"kind": "hf", "name_or_path": ...}): a frozen Hugging Face encoder, BERT
  as in the RETRO paper (`bert-base-cased`). Chunks are decoded to text with the corpus
  tokenizer, re-tokenised for the encoder, and pooled (attention-masked mean, or CLS).

Every embedder has `fingerprint()`, a string naming the embedding function (kind + settings;
for HF also hashes of the model's config, its input embeddings and its vocabulary), so a
database records which embedder built it. Data-fitted state (the IDF) is not in the
fingerprint: it is a function of the settings and the chunks, and the database records the
chunks' hash next to it. `state()` / `load_state()` carry that fitted state.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import constants

from xlab.common.errors import XLabError
from xlab.common.files import written_aside_

Progress = Callable[[int], None]


class Embedder:
    """What the database needs from an embedder."""

    kind: str = ""
    dim: int = 0
    needs_fit: bool = False

    def fit(self, chunks: np.ndarray, progress: Progress | None = None) -> Embedder:
        """Fit data-dependent state on all database chunks (streamed); a no-op unless needs_fit."""
        return self

    def embed(self, chunks: np.ndarray) -> np.ndarray:
        """(B, chunk_size) token ids -> (B, dim) float32, rows of unit norm (or zero)."""
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """The dict `make_embedder` rebuilds this embedder from."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        pass


# --- hashed n-grams -----------------------------------------------------------------------------

_MASK_PRIME = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime: mixes one token into the running hash


class HashedNgramEmbedder(Embedder):
    """TF-IDF over hashed token n-grams.

    Each n-gram (n = 1..ngram) of non-pad tokens hashes to a bucket in [0, dim) and a sign; a
    chunk's vector is the signed bucket counts times the bucket IDF, L2-normalised. The sign
    (feature hashing) makes colliding n-grams cancel on average instead of adding a positive
    bias to every similarity. Identical chunks get identical vectors, so an exact duplicate is
    always at similarity 1.
    """

    kind = "hashed"
    needs_fit = True

    def __init__(self, dim: int = 256, ngram: int = 3, pad_id: int = 0, seed: int = 0, batch_size: int = 4096):
        if dim < 1 or ngram < 1:
            raise XLabError(f"hashed embedder needs dim >= 1 and ngram >= 1, got dim={dim}, ngram={ngram}.")
        self.dim, self.ngram, self.pad_id, self.seed = int(dim), int(ngram), int(pad_id), int(seed)
        self.batch_size = int(batch_size)
        self.idf: np.ndarray | None = None

    def fit(self, chunks: np.ndarray, progress: Progress | None = None) -> HashedNgramEmbedder:
        # Document frequency of each bucket: in how many chunks it occurs at all.
        df = np.zeros(self.dim, dtype=np.int64)
        rows = self._rows_per_batch()
        for r0 in range(0, len(chunks), rows):
            batch = np.asarray(chunks[r0:r0 + rows])
            flat, _ = self._hashed(batch)
            present = np.bincount(flat, minlength=len(batch) * self.dim).reshape(len(batch), self.dim) > 0
            df += present.sum(axis=0)
            if progress:
                progress(len(batch))
        # Smoothed IDF (as in scikit-learn): never zero, never infinite.
        self.idf = (np.log((1 + len(chunks)) / (1 + df)) + 1).astype(np.float32)
        return self

    def embed(self, chunks: np.ndarray) -> np.ndarray:
        if self.idf is None:
            raise XLabError("the hashed embedder has no IDF yet: call fit(chunks) or load_state() first.")
        out = np.empty((len(chunks), self.dim), dtype=np.float32)
        rows = self._rows_per_batch()
        for r0 in range(0, len(chunks), rows):
            batch = np.asarray(chunks[r0:r0 + rows])
            flat, signs = self._hashed(batch)
            tf = np.bincount(flat, weights=signs, minlength=len(batch) * self.dim).reshape(len(batch), self.dim)
            out[r0:r0 + len(batch)] = _l2_normalise(tf * self.idf)
        return out

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, "ngram": self.ngram, "pad_id": self.pad_id,
                "seed": self.seed, "batch_size": self.batch_size}

    def fingerprint(self) -> str:
        return f"hashed-ngram-v1(dim={self.dim},ngram={self.ngram},pad_id={self.pad_id},seed={self.seed})"

    def state(self) -> dict[str, np.ndarray]:
        return {} if self.idf is None else {"idf": self.idf}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        idf = np.asarray(state["idf"], dtype=np.float32)
        if idf.shape != (self.dim,):
            raise XLabError(f"saved IDF has shape {idf.shape}, expected ({self.dim},): "
                            "the state belongs to another embedder.")
        self.idf = idf

    def _rows_per_batch(self) -> int:
        # The (rows, dim) count matrix is the big temporary: keep it near 4M cells.
        return max(1, min(self.batch_size, (1 << 22) // self.dim))

    def _hashed(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat (row * dim + bucket) indices and +-1 signs of all valid n-grams of a batch."""
        tokens = batch.astype(np.uint64)
        valid = batch != self.pad_id
        length = batch.shape[1]
        rows = np.arange(len(batch), dtype=np.int64)[:, None] * self.dim
        flats, signs = [], []
        with np.errstate(over="ignore"):  # the hash relies on uint64 wrap-around
            for n in range(1, min(self.ngram, length) + 1):
                width = length - n + 1
                h = np.full((len(batch), width), np.uint64(self.seed * 1_000_003 + n), dtype=np.uint64)
                ok = np.ones((len(batch), width), dtype=bool)
                for j in range(n):
                    h = (h ^ (tokens[:, j:j + width] + np.uint64(1))) * _MASK_PRIME
                    ok &= valid[:, j:j + width]
                h = _splitmix64(h)
                bucket = (h % np.uint64(self.dim)).astype(np.int64)
                flats.append((rows + bucket)[ok])
                signs.append(np.where((h >> np.uint64(63)).astype(bool), -1.0, 1.0)[ok])
        return np.concatenate(flats), np.concatenate(signs)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    # Finaliser of splitmix64: spreads every input bit over all output bits, so `% dim` and the
    # top bit (the sign) are both well distributed.
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


# --- Hugging Face encoder -----------------------------------------------------------------------

class HFEncoderEmbedder(Embedder):
    """A frozen HF encoder (`AutoModel`) over chunks decoded to text.

    `tokenizer` is the corpus tokenizer (anything with `decode(list[int]) -> str`); it is needed
    to embed, not to construct. Loading happens in the constructor so a missing model fails
    before any work: a local directory is used as is; a hub name is looked up in the local
    cache first and downloaded only when online.
    """

    kind = "hf"

    def __init__(self, name_or_path: str, pooling: str = "mean", batch_size: int = 64, device: str = "auto",
                 max_length: int = 128, tokenizer: Any = None, pad_id: int | None = None,
                 local_files_only: bool = False):
        # Start-up cost: transformers takes a second and ~60 MB, and only this embedder needs it.
        from transformers import AutoModel, AutoTokenizer

        if pooling not in ("mean", "cls"):
            raise XLabError(f"pooling={pooling!r} is not supported: use 'mean' or 'cls'.")
        self.name_or_path, self.pooling = str(name_or_path), pooling
        self.batch_size, self.max_length = int(batch_size), int(max_length)
        self.local_files_only = bool(local_files_only)
        self.tokenizer = tokenizer
        self.pad_id = pad_id if pad_id is not None else getattr(tokenizer, "pad_id", 0)
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self.hf_tokenizer = _load_pretrained(AutoTokenizer, self.name_or_path, self.local_files_only)
        self.model = _load_pretrained(AutoModel, self.name_or_path, self.local_files_only)
        self.model.requires_grad_(False).eval().to(self.device)
        self.dim = int(self.model.config.hidden_size)

    def embed(self, chunks: np.ndarray) -> np.ndarray:
        if self.tokenizer is None:
            raise XLabError("the HF embedder needs the corpus tokenizer to decode chunks: pass tokenizer=.")
        texts = [self.tokenizer.decode([int(t) for t in row if t != self.pad_id]) for row in np.asarray(chunks)]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Similar lengths in one batch waste less compute on padding; results go back in order.
        order = np.argsort([len(t) for t in texts], kind="stable")
        for b0 in range(0, len(texts), self.batch_size):
            idx = order[b0:b0 + self.batch_size]
            encoded = self.hf_tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                        max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.no_grad():
                hidden = self.model(**encoded).last_hidden_state.float()
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return out

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "name_or_path": self.name_or_path, "pooling": self.pooling,
                "batch_size": self.batch_size, "max_length": self.max_length, "pad_id": self.pad_id,
                "local_files_only": self.local_files_only}

    def fingerprint(self) -> str:
        # The name is left out on purpose: the same model by hub name or from a local copy must
        # give the same fingerprint. What defines the function is config, weights and vocabulary.
        config = self.model.config.to_dict()
        for volatile in ("_name_or_path", "transformers_version", "torch_dtype", "dtype"):
            config.pop(volatile, None)
        config_hash = _sha(json.dumps(config, sort_keys=True, default=str).encode())
        weights = self.model.get_input_embeddings().weight.detach().float().cpu().numpy()
        vocab = json.dumps(sorted(self.hf_tokenizer.get_vocab().items())).encode()
        return (f"hf-encoder-v1(model_type={config.get('model_type')},pooling={self.pooling},"
                f"max_length={self.max_length},pad_id={self.pad_id},config={config_hash},"
                f"embeddings={_sha(weights.tobytes())},vocab={_sha(vocab)})")


def _load_pretrained(auto_class: Any, name_or_path: str, local_files_only: bool) -> Any:
    """Load from a directory, else from the HF cache, else from the hub; XLabError if none works."""
    is_dir = Path(name_or_path).is_dir()
    try:
        # The cache first: it needs no network, and an offline machine fails here fast instead
        # of after the hub client's retries.
        return auto_class.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError) as error:
        if is_dir or local_files_only or _hub_offline():
            raise XLabError(_cannot_load(name_or_path, error, is_dir)) from None
    try:
        return auto_class.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise XLabError(_cannot_load(name_or_path, error, is_dir)) from None


def _hub_offline() -> bool:
    """True when the hub surely cannot be reached: offline mode, or its host does not resolve.

    Behind a proxy the host may not resolve locally and still be reachable, so then we let the
    hub client try.
    """
    if constants.HF_HUB_OFFLINE:
        return True
    proxies = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    if any(os.environ.get(v) for v in proxies):
        return False
    host = constants.ENDPOINT.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return True
    return False


def _cannot_load(name_or_path: str, error: Exception, is_dir: bool) -> str:
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    if is_dir:
        if not (Path(name_or_path) / "config.json").is_file():
            first = "it has no config.json"
        return (f"cannot load the HF encoder from directory {name_or_path!r} ({first}): it must hold the "
                "files of save_pretrained (config.json, weights, tokenizer files).")
    return (f"cannot load the HF encoder {name_or_path!r}: it is not cached here and the hub cannot be "
            f"reached ({first[:160]}); download it once where there is internet "
            f"(`hf download {name_or_path} --local-dir DIR`) and pass that local DIR as name_or_path.")


def _sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()[:16]


# --- factory ------------------------------------------------------------------------------------

_KINDS: dict[str, tuple[type[Embedder], set[str], set[str]]] = {
    # kind: (class, required keys, optional keys)
    "hashed": (HashedNgramEmbedder, set(), {"dim", "ngram", "pad_id", "seed", "batch_size"}),
    "hf": (HFEncoderEmbedder, {"name_or_path"},
           {"pooling", "batch_size", "device", "max_length", "pad_id", "local_files_only"}),
}


def make_embedder(spec: dict[str, Any] | Embedder | None = None, tokenizer: Any = None,
                  pad_id: int | None = None) -> Embedder:
    """Build an embedder from a spec such as {"kind": "hashed", "dim": 256} or
    {"kind": "hf", "name_or_path": "bert-base-cased"}; None means the hashed default.

    `tokenizer` (the corpus tokenizer) goes to embedders that decode text; `pad_id` (defaults to
    tokenizer.pad_id) is used when the spec does not set one. An Embedder is returned as is.
    """
    if isinstance(spec, Embedder):
        return spec
    spec = dict(spec or {"kind": "hashed"})
    kind = spec.pop("kind", None)
    if kind not in _KINDS:
        raise XLabError(f"unknown embedder kind {kind!r}: use one of {sorted(_KINDS)} "
                        "(e.g. {'kind': 'hashed', 'dim': 256}).")
    cls, required, optional = _KINDS[kind]
    unknown = set(spec) - required - optional
    missing = required - set(spec)
    if unknown:
        raise XLabError(f"unknown key(s) {sorted(unknown)} for embedder kind {kind!r}: "
                        f"allowed are {sorted(required | optional)}.")
    if missing:
        raise XLabError(f"embedder kind {kind!r} needs {sorted(missing)}.")
    if "pad_id" not in spec:
        spec["pad_id"] = pad_id if pad_id is not None else getattr(tokenizer, "pad_id", 0)
    if kind == "hf":
        spec["tokenizer"] = tokenizer
    return cls(**spec)


def embed_chunks_(embedder: Embedder, chunks: np.ndarray, out_path: str | Path, batch_size: int = 4096,
                  progress: Progress | None = None) -> Path:
    """Embed all chunks in batches into an (N, dim) float32 `.npy` memmap, written aside then renamed."""
    out_path = Path(out_path)
    with written_aside_(out_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(chunks), embedder.dim))
        for r0 in range(0, len(chunks), batch_size):
            batch = np.asarray(chunks[r0:r0 + batch_size])
            out[r0:r0 + len(batch)] = embedder.embed(batch)
            if progress:
                progress(len(batch))
        out.flush()
        del out  # unmapped before it is renamed into place
    return out_path
