"""The learned maps between MemoryGPT2's transformer and its memory, and the entry layout they assume.

`MemoryAccess` holds every learned map: the query, the key and value maps applied to retrieved
entries, the read's sharpness and gain, the store gate and the delete head.

An entry is one vector of `memory_dim` numbers made of two halves:
  * the key half, A[token before]: a fixed random address of the token that came before, and
  * the value half, P · (LN(e[t]) + LN(h[t])) / sqrt(2): the token's embedding and the model's
    final hidden state there,
where A is a fixed table of random vectors of size memory_dim / 2 (one per token id) and P a
fixed orthonormal projection from n_embd to memory_dim / 2. A query is a learned map of the
reading token's address, so at first a token finds what followed its earlier occurrences.
Why fixed addresses and not the learned embeddings: trained embeddings of tokens that play the
same part grow alike (cosine ~0.6 within a few hundred steps) and keep moving, so keys taken
from them blur into their look-alikes and go stale in the memory, while a stored vector can
never be updated. Everything learned is applied when reading, to the retrieved vectors: a map
applied before a vector went into faiss would be frozen there and never get a gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlab.errors import XLabError

# Seed of the fixed addresses A and projection P: part of the model's definition, like its shapes.
PROJECTION_SEED = 0
# Initial score of an exact key match (an unrelated entry scores about 0). A soft start averages
# the right entry with whatever else came back into noise, which the model learns to ignore.
INITIAL_SHARPNESS = 32.0
# Initial similarity an entry must beat to be read at all (an exact match is 1, an unrelated
# entry about 0). Higher starts gate out too much: the store gate then sees no useful reads,
# pays only the store cost, and closes for good.
INITIAL_NULL = 0.0


def token_addresses(vocab_size: int, dim: int, seed: int = PROJECTION_SEED) -> Tensor:
    """A fixed random vector per token id, of squared norm `dim` (so distinct ids are nearly
    orthogonal and an exact match scores `dim`)."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab_size, dim, generator=generator)
    return table * (math.sqrt(dim) / table.norm(dim=1, keepdim=True))


def orthonormal_projection(rows: int, cols: int, seed: int = PROJECTION_SEED) -> Tensor:
    """(rows, cols) with orthonormal rows (or columns when rows > cols); the identity if square."""
    if rows == cols:
        return torch.eye(rows)
    generator = torch.Generator().manual_seed(seed)
    tall = torch.randn(max(rows, cols), min(rows, cols), generator=generator)
    q, _ = torch.linalg.qr(tall)  # orthonormal columns
    return q if rows > cols else q.T.contiguous()


class MemoryAccess(nn.Module):
    """Learned maps for reading, storing and deleting; see the module docstring for the layout."""

    def __init__(self, vocab_size: int, n_embd: int, memory_dim: int, embedding_scale: float, store_init: float,
                 delete_init: float, read_gain: float):
        super().__init__()
        if memory_dim < 2 or memory_dim % 2:
            raise XLabError(f"memory_dim={memory_dim} must be even and >= 2: an entry is a key half and a value half.")
        self.n_embd, self.memory_dim, self.half = n_embd, memory_dim, memory_dim // 2
        # Stored entries were made with these. torch's CPU generator gives the same addresses on
        # every machine, so they are rebuilt rather than saved; a QR may differ between LAPACK
        # builds, so the (small) projection is saved with the weights.
        self.register_buffer("addresses", token_addresses(vocab_size, self.half), persistent=False)
        self.register_buffer("projection", orthonormal_projection(self.half, n_embd))
        self.query = nn.Linear(self.half, self.half)
        self.key = nn.Linear(memory_dim, self.half, bias=False)
        self.value = nn.Linear(memory_dim, n_embd, bias=False)
        # Scales in log space: Adam moves a parameter by about the learning rate per step,
        # which would swamp a small linear scale in a few steps but changes these by percents.
        self.log_gain = nn.Parameter(torch.zeros(n_embd))  # the read's size next to the embedding
        self.log_sharpness = nn.Parameter(torch.zeros(()))  # inverse temperature of the scores
        # "Read nothing" scores like an entry of this similarity (on the scale where an exact
        # match is 1), so it learns at the pace of the similarities, not of the sharpness.
        self.null = nn.Parameter(torch.tensor(INITIAL_NULL))
        self.store = nn.Linear(memory_dim, 1)
        self.delete_state = nn.Linear(n_embd, self.half)
        self.delete_entry = nn.Linear(memory_dim, self.half, bias=False)
        self.delete_bias = nn.Parameter(torch.tensor(float(delete_init)))
        self._initialize(embedding_scale * read_gain, store_init)

    @torch.no_grad()
    def _initialize(self, read_scale: float, store_init: float) -> None:
        # Start as a token-level cache: a query matches entries whose previous token is the
        # reading token and reads their value half back at `read_gain` times the embedding's scale. Random maps
        # would leave retrieval random, and top-k retrieval gives no gradient towards entries it
        # did not return, so the model would never find out what the memory is for.
        P, half = self.projection, self.half
        self.query.weight.copy_(torch.eye(half))
        self.query.bias.zero_()
        self.key.weight.zero_()
        self.key.weight[:, :half] = torch.eye(half)
        self.value.weight.zero_()
        self.value.weight[:, half:] = P.T
        self.log_gain.fill_(math.log(read_scale))
        self.log_sharpness.fill_(math.log(INITIAL_SHARPNESS))
        self.store.weight.zero_()
        self.store.bias.fill_(store_init)
        for layer in (self.delete_state, self.delete_entry):
            nn.init.normal_(layer.weight, std=0.02)
        self.delete_state.bias.zero_()

    def cache_maps(self) -> list[nn.Parameter]:
        """The maps initialized as an exact token cache (trained at a reduced learning rate)."""
        return [*self.query.parameters(), *self.key.parameters(), *self.value.parameters()]

    # --- reading ------------------------------------------------------------------------------
    def queries(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Queries (..., half) and the faiss probes (..., memory_dim) that rank entries exactly
        as the query scores do: q . (W_k m) = (W_k^T q) . m."""
        q = self.query(self.addresses[input_ids])
        return q, q @ self.key.weight

    def read(self, q: Tensor, entries: Tensor, valid: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Attend over [nothing, k entries]; returns the update for the token representation
        (..., n_embd), the attention (..., 1 + k; column 0 is "nothing") and the weight each
        entry's value finally gets (..., k).

        Scores are recomputed here from the retrieved vectors, so they are differentiable with
        respect to the query and every map. The store gate and the keep probability of pending
        delete votes (`keep`, 1 where none) scale each entry's value: that is how both decisions
        learn from reading. They scale values rather than scores because a clear winner's
        softmax is saturated, so a score term would get no gradient from the entries that
        matter most.
        """
        sharpness = self.log_sharpness.exp() / self.half
        # Addresses have squared norm `half` and the maps start as identities, so an exact
        # match scores the sharpness and an unrelated entry about zero.
        scores = torch.einsum("...d,...kd->...k", q, self.key(entries)) * sharpness
        scores = scores.masked_fill(~valid, float("-inf"))
        null = (self.null * sharpness * self.half).to(scores.dtype).expand(*scores.shape[:-1], 1)
        attention = torch.cat([null, scores], dim=-1).softmax(dim=-1)
        weights = attention[..., 1:] * self.store_probability(entries) * keep
        mixed = torch.einsum("...k,...kd->...d", weights, entries)  # the value map is linear: mix first
        return self.value(mixed) * self.log_gain.exp(), attention, weights

    # --- writing ------------------------------------------------------------------------------
    def entries(self, previous_ids: Tensor, embeddings: Tensor, hidden: Tensor) -> Tensor:
        """Storable vectors (..., memory_dim) for tokens, given their predecessors' ids."""
        n = (self.n_embd,)
        key = self.addresses[previous_ids]
        value = (F.layer_norm(embeddings, n) + F.layer_norm(hidden, n)) @ self.projection.T / math.sqrt(2)
        return torch.cat([key, value.float()], dim=-1)  # faiss stores float32 anyway

    def store_probability(self, entries: Tensor) -> Tensor:
        return torch.sigmoid(self.store(entries)).squeeze(-1)

    def delete_probability(self, states: Tensor, entries: Tensor) -> Tensor:
        """How much the tokens that read an entry (their weighted mean final state) want it gone."""
        a = self.delete_state(F.layer_norm(states, (self.n_embd,)))
        b = self.delete_entry(entries)
        return torch.sigmoid((a * b).sum(-1) / math.sqrt(self.half) + self.delete_bias)
