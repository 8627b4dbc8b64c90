"""MemoryGPT2's transformer: GPT-2 blocks from `transformers`, built from the model's settings or
from a local pretrained GPT-2 directory (`pretrained_path`)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import GPT2Config, GPT2Model

from xlab.common.errors import XLabError


def gpt2_transformer(hp) -> GPT2Model:
    """GPT2Model for hyperparameters `hp` (vocab_size, max_len, n_layer, n_head, n_embd, dropout,
    special ids, pretrained_path and the data's added_tokens).

    The config names no pad token: MemoryGPT2 masks pads itself (`padding_mask`), and with a pad
    id transformers looks for pads in every batch, which makes the host wait for the device."""
    if hp.pretrained_path is None:
        config = GPT2Config(vocab_size=hp.vocab_size, n_positions=hp.max_len, n_embd=hp.n_embd, n_layer=hp.n_layer,
                            n_head=hp.n_head, resid_pdrop=hp.dropout, embd_pdrop=hp.dropout, attn_pdrop=hp.dropout,
                            bos_token_id=hp.sos_id, eos_token_id=hp.eos_id)
        return GPT2Model(config)
    try:
        model = GPT2Model.from_pretrained(hp.pretrained_path, attn_implementation="sdpa")
    except (OSError, ValueError) as error:
        raise XLabError(f"pretrained_path {hp.pretrained_path} is not a GPT-2 directory: "
                        f"{str(error).splitlines()[0]}") from None
    c = model.config
    # The data's special tokens added to GPT-2's tokenizer (added_tokens) grow the embedding.
    added = int(hp.get("added_tokens", 0))
    mine = (hp.vocab_size - added, hp.n_layer, hp.n_head, hp.n_embd)
    if (c.vocab_size, c.n_layer, c.n_head, c.n_embd) != mine or c.n_positions < hp.max_len:
        raise XLabError(
            f"pretrained GPT-2 at {hp.pretrained_path} has vocab_size={c.vocab_size}, n_layer={c.n_layer}, "
            f"n_head={c.n_head}, n_embd={c.n_embd}, n_positions={c.n_positions}; the model asks for "
            f"vocab_size={hp.vocab_size}, n_layer={hp.n_layer}, n_head={hp.n_head}, n_embd={hp.n_embd}, "
            f"max_len={hp.max_len}" + (f" with {added} added special tokens" if added else "")
            + ": set them to match (the data's tokenizer must be the model's).")
    if added:
        rows = model.wte.weight.detach()
        grown = torch.cat([rows, rows.mean(0, keepdim=True).expand(added, -1)])
        model.wte = nn.Embedding.from_pretrained(grown.clone(), freeze=False)
        c.vocab_size = hp.vocab_size
    # Cut positions to max_len so a checkpoint rebuilds from hparams alone, with no directory.
    model.wpe = nn.Embedding.from_pretrained(model.wpe.weight[: hp.max_len].clone(), freeze=False)
    c.n_positions = hp.max_len
    c.pad_token_id = None  # see above
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = hp.dropout
    return model
