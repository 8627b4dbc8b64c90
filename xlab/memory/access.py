"""The learned maps between MemoryGPT2's transformer and its memory, and the entry layout they assume.

The memory is read on the output side, like a kNN-LM or a continuous cache: an entry says "after
this context came this token", and a token that finds entries for its own context adds their
tokens to the language model's next-token distribution through a learned gate. A memory with
nothing useful to say gets no weight, so it costs nothing next to the same model
without it (the input-side read this replaces cost up to 0.4 nats on plain text; see docs/memory.md).

An entry is one stored vector (`entry_dim` numbers):
  * key, `memory_dim` numbers in two halves:
      A[x_s]: a fixed random address of the token at the context's end, and
      P · LN(h_s): the model's final hidden state there, projected to memory_dim / 2;
  * the document tag: a fixed vector per document (`TAG_DIM` numbers, large), so that faiss
    ranks the reading document's own entries first;
  * the token that followed (x_{s+1}) and the document's serial number, as exact floats.
A is a fixed table of random vectors (one per token id) and P a fixed orthonormal projection.
Fixed addresses because trained embeddings of tokens that play the same part grow alike and
keep moving, so keys made from them blur and go stale, while a stored vector never changes.
A query is a learned map of the reading token's address and final state: at first it finds
the entries whose context ended in the same token, i.e. what followed the token's earlier
occurrences in the document, and learns from there which contexts predict alike. Everything
learned is applied when reading, to the retrieved vectors, so every map gets a gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlab.common.errors import XLabError

# Seed of the fixed addresses A, projection P and document tags: part of the model's definition.
PROJECTION_SEED = 0
# Initial score of an exact address match (an unrelated entry scores about 0).
INITIAL_SHARPNESS = 32.0
# Initial weight of the context half of a score next to the address half.
INITIAL_CONTEXT = 0.5
# Initial similarity an entry must beat to be read at all, on the scale where an exact address
# match scores 1: unrelated entries (about 0 plus half their context similarity) lose to it.
INITIAL_NULL = 0.5
# Orthonormal document tags: documents whose serials differ modulo TAG_DIM never compete.
TAG_DIM = 32
# Inner product of a tag with itself in faiss's scores: far above any key score, so a query's
# own document comes first; the serial number then masks other documents out exactly.
TAG_SCORE = 1e5
# The memory's largest share of a distribution: the language model always keeps 1% of it.
MAX_MEMORY_SHARE = 0.99


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

    def __init__(self, vocab_size: int, n_embd: int, memory_dim: int, store_init: float, delete_init: float,
                 gate_init: float):
        super().__init__()
        if memory_dim < 2 or memory_dim % 2:
            raise XLabError(f"memory_dim={memory_dim} must be even and >= 2: a key is a token half and a state half.")
        self.vocab_size, self.n_embd, self.memory_dim, self.half = vocab_size, n_embd, memory_dim, memory_dim // 2
        self.entry_dim = memory_dim + TAG_DIM + 2
        # Stored entries were made with these. torch's CPU generator gives the same addresses on
        # every machine, so they are rebuilt rather than saved; a QR may differ between LAPACK
        # builds, so the (small) projection is saved with the weights.
        self.register_buffer("addresses", token_addresses(vocab_size, self.half), persistent=False)
        self.register_buffer("projection", orthonormal_projection(self.half, n_embd))
        self.register_buffer("tags", _orthonormal_square(TAG_DIM) * math.sqrt(TAG_SCORE))
        self.query = nn.Linear(self.half, self.half)  # of the reading token's address
        self.context_query = nn.Linear(n_embd, self.half)  # of its final state (layer-normed)
        self.key = nn.Linear(memory_dim, memory_dim, bias=False)  # of a retrieved key
        # Scales in log space: Adam moves a parameter by about the learning rate per step,
        # which would swamp a small linear scale in a few steps but changes these by percents.
        self.log_sharpness = nn.Parameter(torch.zeros(()))  # inverse temperature of the scores
        # "Read nothing" scores like an entry of this similarity (on the scale where an exact
        # address match is 1), so it learns at the pace of the similarities.
        self.null = nn.Parameter(torch.tensor(INITIAL_NULL))
        # How much of the next-token distribution the memory gets, from the reading state.
        self.gate = nn.Linear(n_embd, 1)
        self.store = nn.Linear(memory_dim, 1)
        self.delete_state = nn.Linear(n_embd, self.half)
        self.delete_entry = nn.Linear(memory_dim, self.half, bias=False)
        self.delete_bias = nn.Parameter(torch.tensor(float(delete_init)))
        self._initialize(store_init, gate_init)

    @torch.no_grad()
    def _initialize(self, store_init: float, gate_init: float) -> None:
        # Start as a token-level cache: a query matches entries whose context ended in the
        # reading token, helped a little by similar final states. Random maps would leave
        # retrieval random, and top-k retrieval gives no gradient towards entries it did not
        # return, so the model would never find out what the memory is for.
        self.query.weight.copy_(torch.eye(self.half))
        self.query.bias.zero_()
        self.context_query.weight.copy_(self.projection * INITIAL_CONTEXT)
        self.context_query.bias.zero_()
        self.key.weight.copy_(torch.eye(self.memory_dim))
        self.log_sharpness.fill_(math.log(INITIAL_SHARPNESS))
        self.gate.weight.zero_()
        self.gate.bias.fill_(gate_init)
        self.store.weight.zero_()
        self.store.bias.fill_(store_init)
        for layer in (self.delete_state, self.delete_entry):
            nn.init.normal_(layer.weight, std=0.02)
        self.delete_state.bias.zero_()

    def cache_maps(self) -> list[nn.Parameter]:
        """The maps initialized as an exact token cache (trained at a reduced learning rate)."""
        return [*self.query.parameters(), *self.context_query.parameters(), *self.key.parameters()]

    # --- the layout -----------------------------------------------------------------------------
    def keys(self, input_ids: Tensor, hidden: Tensor, documents: Tensor) -> Tensor:
        """Entries (..., entry_dim) whose context ends at each token, the next token left at -1."""
        context = F.layer_norm(hidden.float(), (self.n_embd,)) @ self.projection.T
        tag = self.tags[documents % TAG_DIM]
        return torch.cat([self.addresses[input_ids], context, tag, torch.full_like(context[..., :1], -1.0),
                          documents[..., None].float()], dim=-1)

    @staticmethod
    def next_tokens(entries: Tensor) -> Tensor:
        return entries[..., -2].long()

    @staticmethod
    def serials(entries: Tensor) -> Tensor:
        return entries[..., -1].long()

    # --- reading ------------------------------------------------------------------------------
    def queries(self, input_ids: Tensor, hidden: Tensor, documents: Tensor | None) -> tuple[Tensor, Tensor]:
        """Queries (..., memory_dim) and the faiss probes (..., entry_dim) that rank entries as
        the query scores do, q . (W_k m) = (W_k^T q) . m, after the reading document's own
        entries (a zero tag when `documents` is None: any entry may be read)."""
        state = F.layer_norm(hidden, (self.n_embd,))
        q = torch.cat([self.query(self.addresses[input_ids].to(hidden.dtype)), self.context_query(state)], dim=-1)
        probe = q.float() @ self.key.weight.float()
        tag = self.tags[documents % TAG_DIM] if documents is not None else probe.new_zeros(*probe.shape[:-1], TAG_DIM)
        return q, torch.cat([probe, tag, probe.new_zeros(*probe.shape[:-1], 2)], dim=-1)

    def read(self, q: Tensor, hidden: Tensor, entries: Tensor, valid: Tensor, keep: Tensor
             ) -> tuple[Tensor, Tensor, Tensor]:
        """The share of the next-token distribution each retrieved entry's token gets (..., k),
        the attention over [nothing, k entries] (..., 1 + k) and each entry's weight (..., k).

        Scores are recomputed here from the retrieved vectors, so they are differentiable with
        respect to the query and every map. The store gate and the keep probability of pending
        delete votes (`keep`, 1 where none) scale each entry's weight: that is how both
        decisions learn from reading. The gate, from the reading state, scales the whole read.
        """
        sharpness = self.log_sharpness.exp() / self.half
        key = entries[..., : self.memory_dim]
        scores = torch.einsum("...d,...kd->...k", q, self.key(key)) * sharpness
        scores = scores.masked_fill(~valid, float("-inf"))
        null = (self.null * sharpness * self.half).to(scores.dtype).expand(*scores.shape[:-1], 1)
        attention = torch.cat([null, scores], dim=-1).softmax(dim=-1)
        weights = attention[..., 1:] * self.store_probability(key) * keep
        gate = MAX_MEMORY_SHARE * torch.sigmoid(self.gate(F.layer_norm(hidden, (self.n_embd,))))
        return gate * weights, attention, weights

    @staticmethod
    def mixture_nll(logits: Tensor, lse: Tensor, shares: Tensor, tokens: Tensor, labels: Tensor) -> Tensor:
        """-log of the mixture's probability of `labels` (..., ), from the k retrieved tokens and
        the language model's probability of the label alone: what `mix` gives, without a pass
        over the vocabulary (the language model's logits are not trained through it)."""
        shares = shares.float()
        label = labels.clamp(min=0)[..., None]
        p_lm = (logits.detach().float().gather(-1, label) - lse).exp().squeeze(-1)
        memory = (shares * (tokens == label)).sum(-1)
        return -((1 - shares.sum(-1)) * p_lm + memory).clamp_min(1e-30).log()

    @staticmethod
    def mix(logits: Tensor, shares: Tensor, tokens: Tensor, lse: Tensor | None = None) -> Tensor:
        """Logits whose softmax is (1 - sum(shares)) * softmax(logits) + sum_i shares_i * onehot(tokens_i).

        Only the k retrieved tokens change: each gets share * Z / (1 - sum(shares)) added to its
        exp(logit), where Z is the logits' normalizer, so the mixture costs one logsumexp and a
        scatter of k values per token. With no shares the logits come back unchanged.
        """
        shares, logits = shares.float(), logits.float()
        lse = logits.logsumexp(-1, keepdim=True) if lse is None else lse
        same = tokens[..., :, None] == tokens[..., None, :]  # entries naming the same token pool their shares
        pooled = (same * shares[..., None, :]).sum(-1)
        added = pooled.clamp_min(1e-30).log() + lse - torch.log1p(-shares.sum(-1, keepdim=True))
        before = logits.gather(-1, tokens)
        after = torch.where(pooled > 0, torch.logaddexp(before, added), before)
        return logits.scatter(-1, tokens, after)

    # --- writing ------------------------------------------------------------------------------
    def store_probability(self, keys: Tensor) -> Tensor:
        return torch.sigmoid(self.store(keys.to(self.store.weight.dtype))).squeeze(-1)

    def delete_probability(self, states: Tensor, keys: Tensor) -> Tensor:
        """How much the tokens that read an entry (their weighted mean final state) want it gone."""
        a = self.delete_state(F.layer_norm(states, (self.n_embd,)))
        b = self.delete_entry(keys)
        return torch.sigmoid((a * b).sum(-1) / math.sqrt(self.half) + self.delete_bias)


def _orthonormal_square(n: int) -> Tensor:
    generator = torch.Generator().manual_seed(PROJECTION_SEED + 1)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator))
    return q
