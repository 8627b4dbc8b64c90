"""Transformer building blocks shared by the models: norms, positions, attention with a KV cache,
MLPs, the residual block and GPT-2's initialisation. Parameter names follow GPT-2 (c_attn, c_proj, c_fc, ln_1, ln_2),
so weights map one to one from `transformers` checkpoints.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NormKind = Literal["layernorm", "rmsnorm"]
Activation = Literal["gelu", "swiglu", "relu2"]


def make_norm(kind: NormKind, dim: int, bias: bool, eps: float = 1e-5) -> nn.Module:
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps)
    return nn.LayerNorm(dim, eps=eps, bias=bias)


class KVCache:
    """Keys and values of every layer, preallocated for `max_len` positions.

    `length` is how many positions are filled; a forward pass writes its new keys at
    [length, length + T) in every layer, then the model advances `length` once.
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        # Uninitialised: attention only ever reads positions below `length`, which were written.
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0
        # For document masking (`documents.py`): each cached position's document, and the position
        # each row's current document started at (what its positions count from).
        self.documents = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)
        self.document_start = torch.zeros(batch_size, dtype=torch.long, device=device)

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; writing up to {end}")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, steps: int) -> None:
        self.length += steps

    def reorder(self, index: Tensor) -> None:
        """Keep the rows named by `index` (beam search reorders hypotheses every step). Only the
        filled positions move, inside the preallocated buffers: no new cache per step."""
        filled = slice(0, self.length)
        self.k[:, :, :, filled] = self.k[:, :, :, filled].index_select(1, index)
        self.v[:, :, :, filled] = self.v[:, :, :, filled].index_select(1, index)
        self.documents[:, filled] = self.documents[:, filled].index_select(0, index)
        self.document_start = self.document_start.index_select(0, index)

    def reset(self) -> None:
        self.length = 0


class Rotary(nn.Module):
    """Rotary position embedding (rotate-half convention), applied to queries and keys."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (max_len, hs/2)
        # Not persistent: derived from settings, so checkpoints stay small and exports clean.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        # x: (B, nh, T, hs); positions: (B, T)
        cos = self.cos[positions].unsqueeze(1).to(x.dtype)  # (B, 1, T, hs/2)
        sin = self.sin[positions].unsqueeze(1).to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def position_ids(input_ids: Tensor, past: int, max_len: int, positions: Tensor | None = None) -> Tensor:
    """Positions (B, T) of tokens that follow `past` cached ones: past..past+T-1 unless `positions`
    are given (left-padded prompts). ValueError when the sequence would not fit in `max_len`."""
    B, T = input_ids.shape
    # Default positions never exceed past + T - 1, so checking lengths (plain ints) suffices and
    # spares the host a sync with the device on every decoding step.
    if past + T > max_len:
        raise ValueError(f"sequence of {past + T} tokens exceeds the model's max_len={max_len}")
    if positions is None:
        positions = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
    return positions


def sinusoidal_table(max_len: int, dim: int) -> Tensor:
    """The original Transformer's position table: amplitude 1, root mean square 1/sqrt(2)."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div)[:, : dim // 2]
    return table


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention; with `n_kv_head` < n_head, grouped-query attention (Llama 2/3):
    each key/value head serves n_head / n_kv_head query heads, and the cache holds only those.

    `qk_norm` puts an RMS norm (per head, learned gain, as OLMo 2 and Qwen 3) on queries and keys
    before the rotary: attention logits stay bounded however large the projections grow, which
    lets a model train at higher learning rates without its attention saturating."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool, rotary: Rotary | None = None,
                 n_kv_head: int | None = None, qk_norm: bool = False, norm_eps: float = 1e-5):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        self.n_head, self.head_dim = n_head, n_embd // n_head
        self.n_kv_head = n_kv_head or n_head
        if n_head % self.n_kv_head:
            raise ValueError(f"n_head={n_head} must be a multiple of n_kv_head={self.n_kv_head}")
        self.c_attn = nn.Linear(n_embd, n_embd + 2 * self.n_kv_head * self.head_dim, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.dropout = dropout
        self.rotary = rotary
        if qk_norm:
            self.q_norm = nn.RMSNorm(self.head_dim, eps=norm_eps)
            self.k_norm = nn.RMSNorm(self.head_dim, eps=norm_eps)
        self.qk_norm = qk_norm

    def forward(self, x: Tensor, positions: Tensor, mask: Tensor | None, cache: KVCache | None, layer: int,
                value_embed: Tensor | None = None) -> Tensor:
        """`value_embed` (B, T, n_kv_head * hs), when given, is added to the values (value embeddings)."""
        B, T, C = x.shape
        kv = self.n_kv_head * self.head_dim
        q, k, v = self.c_attn(x).split([C, kv, kv], dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k, v = (t.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2) for t in (k, v))  # (B, nkv, T, hs)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if value_embed is not None:
            v = v + value_embed.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.rotary is not None:
            q, k = self.rotary(q, positions), self.rotary(k, positions)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, L + T, hs)
        # No mask: causal over a fresh sequence (SDPA's fastest path), or one new token that
        # sees every cached key.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and k.shape[2] == T,
            dropout_p=self.dropout if self.training else 0.0, enable_gqa=self.n_kv_head != self.n_head)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd: int, ffn_dim: int, activation: Activation, dropout: float, bias: bool):
        super().__init__()
        self.activation = activation
        # SwiGLU needs a gate and a value: one matmul of twice the width, split in forward.
        width = 2 * ffn_dim if activation == "swiglu" else ffn_dim
        self.c_fc = nn.Linear(n_embd, width, bias=bias)
        self.c_proj = nn.Linear(ffn_dim, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c_fc(x)
        if self.activation == "swiglu":
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        elif self.activation == "relu2":
            h = F.relu(h).square()  # the speedrun's: as good as SwiGLU at one matmul less
        else:
            h = F.gelu(h, approximate="tanh")  # GPT-2's GELU, needed for weight parity
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, ffn_dim: int, dropout: float, bias: bool, norm: NormKind,
                 norm_position: Literal["pre", "post"], activation: Activation, rotary: Rotary | None,
                 norm_eps: float = 1e-5, n_kv_head: int | None = None, qk_norm: bool = False):
        super().__init__()
        self.pre_norm = norm_position == "pre"
        self.ln_1 = make_norm(norm, n_embd, bias, norm_eps)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias, rotary, n_kv_head, qk_norm, norm_eps)
        self.ln_2 = make_norm(norm, n_embd, bias, norm_eps)
        self.mlp = MLP(n_embd, ffn_dim, activation, dropout, bias)

    def forward(self, x: Tensor, positions: Tensor, mask: Tensor | None, cache: KVCache | None, layer: int,
                value_embed: Tensor | None = None) -> Tensor:
        if self.pre_norm:
            x = x + self.attn(self.ln_1(x), positions, mask, cache, layer, value_embed)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, positions, mask, cache, layer, value_embed))
        return self.ln_2(x + self.mlp(x))


def attention_mask(T: int, past: int, padding: Tensor | None, device: torch.device) -> Tensor | None:
    """Boolean (B or 1, 1, T, past + T) mask, True where a query may attend; None for plain causal.

    `padding` (B, past + T) marks real tokens True; left-padded prompts set it False on the pads.
    """
    if padding is None and past == 0:
        return None
    if padding is None and T == 1:
        return None  # one new token sees every cached position
    keys = torch.arange(past + T, device=device)
    queries = torch.arange(past, past + T, device=device)
    mask = (keys[None, :] <= queries[:, None])[None, None]  # (1, 1, T, past + T)
    if padding is not None:
        mask = mask & padding[:, None, None, :].bool()
        # A query row with no visible key (a pad attending only to pads) would give NaN: let it
        # see itself; its output is never used.
        own = torch.zeros(T, past + T, dtype=torch.bool, device=device)
        own[torch.arange(T), past + torch.arange(T, device=device)] = True
        mask = mask | own[None, None]
    return mask


INIT_STD = 0.02  # GPT-2's weight and embedding initialisation


def init_gpt2_weights(model: nn.Module, n_layer: int) -> None:
    """GPT-2's initialisation, in place: linear and embedding weights from N(0, 0.02), zero biases,
    and residual projections (every `c_proj`) from N(0, 0.02 / sqrt(2 * n_layer)) so the residual
    stream's variance does not grow with depth. Modules are visited in registration order, so a
    seed gives the same weights whatever else the model holds."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    for name, param in model.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
