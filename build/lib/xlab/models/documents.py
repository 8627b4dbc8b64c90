"""Document masking: a packed window computes what each of its documents would compute alone.

The data module writes documents as `sos text eos`, back to back, and cuts training windows out
of that stream, so most windows hold the end of one document and the start of the next. With
the switch on, a token attends only to earlier tokens of its own document, and its position
counts from that document's sos (rotary and learned positions both restart). A document starts
at each sos; the tokens a window holds before its first sos belong to a document that began
before the window and keep the window's positions, as without the switch.

With a KV cache the document of every cached position and where the current document started
live in the cache (`KVCache.documents`, `document_start`), so decoding token by token computes
what one pass over the whole sequence does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from xlab.models.blocks import KVCache


def document_layout(input_ids: Tensor, sos_id: int, positions: Tensor,
                    cache: KVCache | None) -> tuple[Tensor, Tensor]:
    """(positions (B, T) counted from each token's document start, boolean mask (B, 1, T, past + T)
    True where a query may attend: causal and inside its document) for `input_ids` (B, T) at
    `positions` (B, T) after the cache's `past` positions."""
    B, T = input_ids.shape
    device = input_ids.device
    past = cache.length if cache is not None else 0
    starts = input_ids == sos_id
    documents = starts.long().cumsum(1)  # (B, T), 0 for a document begun before these tokens
    index = torch.arange(T, device=device).expand(B, T)
    latest = torch.where(starts, index, -1).cummax(1).values  # the last sos at or before each token
    begun = positions.gather(1, latest.clamp(min=0))  # the position that sos has
    # An empty cache (a new one, or one reset when the window slid) starts as a full pass does.
    before = cache.document_start[:, None] if past else torch.zeros_like(begun)
    start = torch.where(latest >= 0, begun, before)
    keys = documents
    if cache is not None:
        if past:
            documents = documents + cache.documents[:, past - 1:past]
        cache.documents[:, past:past + T] = documents
        cache.document_start = start[:, -1].clone()
        keys = cache.documents[:, :past + T]
    causal = torch.arange(past + T, device=device)[None, :] <= torch.arange(past, past + T, device=device)[:, None]
    mask = (documents[:, :, None] == keys[:, None, :]) & causal  # (B, T, past + T)
    return positions - start, mask[:, None]
