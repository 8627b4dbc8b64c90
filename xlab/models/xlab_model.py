"""XLabModel: a configurable decoder-only transformer language model.

GPT-2 is one point in its space (learned positions, LayerNorm, pre-norm, GELU, tied head, biases);
Llama-like models are another (rotary, RMSNorm, SwiGLU, no biases). Every switch is a typed
constructor argument, so YAML, `--help` and `save_hyperparameters()` all see it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from xlab.common.errors import XLabError
from xlab.models.blocks import (INIT_STD, Activation, Block, KVCache, NormKind, Rotary, attention_mask,
                                init_gpt2_weights, make_norm, position_ids, sinusoidal_table)
from xlab.models.decode_head import DecodeHead
from xlab.models.documents import document_layout
from xlab.models.hf_weights import hf_config_from_xlab, hf_state_from_xlab
from xlab.models.lm import LanguageModel
from xlab.models.pretrained import architecture_of, load_starting_weights, read_starting_point


class XLabModel(LanguageModel):
    """Decoder-only transformer.

    Args:
        vocab_size: Tokens in the vocabulary (linked from the data module).
        sos_id, eos_id, pad_id: Special token ids (linked from the data module).
        max_len: Context length in tokens (linked into the data module's block size).
        n_layer, n_head, n_embd: Depth, attention heads, width.
        n_kv_head: Key/value heads; fewer than n_head is grouped-query attention (None: n_head).
        ffn_dim: Hidden width of the MLP; default 4 * n_embd (GELU, ReLU²) or ~8/3 * n_embd (SwiGLU).
        dropout: Dropout on attention weights, residual branches and embeddings.
        positions: learned (GPT-2), sinusoidal (original Transformer) or rotary (RoPE).
        rope_base: Base of the rotary frequencies.
        norm: layernorm or rmsnorm; norm_position: pre (GPT-2) or post (original Transformer).
        norm_eps: The norms' epsilon (1e-5 as GPT-2; Llama folders often say 1e-6).
        activation: gelu, swiglu or relu2 (ReLU squared, the GPT-2 speedrun's).
        bias: Biases in linear layers and LayerNorm.
        tie_weights: Share the token embedding with the output head.
        qk_norm: RMS-normalise queries and keys (per head, learned gain) before the rotary.
        logit_softcap: Cap the logits smoothly at +-this value (cap * tanh(logits / cap), as
            Gemma 2 and the speedrun; None: no cap).
        zero_init: Start every block's output projection (attention's and the MLP's c_proj) at
            zero, so each block starts as the identity and learns its way in.
        value_embeddings: Every layer adds a token embedding of its own to its attention values
            (the speedrun's value embeddings; n_layer more embedding tables).
        document_mask: Attention stays inside each document of a packed window (a document starts
            at each sos token) and positions restart at each document (`documents.py`).
        learning_rate, weight_decay, betas, optimizer, muon_lr, muon_momentum, embedding_lr,
            head_lr: AdamW, or Muon on the hidden matrices; see LanguageModel.
        warmup_steps, min_lr_ratio, lr_decay_steps, lr_schedule, cooldown_fraction: Linear
            warmup, then cosine (or the trapezoid's flat top and linear cooldown) down to
            min_lr_ratio * the peak at lr_decay_steps (default: the run's total steps).
        compile: Run the forward pass through torch.compile.
        init_from: Start from pretrained weights: an XLab export folder or checkpoint (.ckpt), or a
            local Hugging Face GPT-2 or Llama folder (save_pretrained). The architecture is read from the folder;
            settings above that contradict it are an error. max_len may be shorter than the
            folder's. The data's tokenizer must be the folder's (data tokenizer_path); the
            special tokens the data adds grow the embedding (new rows: the mean of the others).
    """

    def __init__(
        self,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 256,
        ffn_dim: int | None = None,
        dropout: float = 0.0,
        positions: Literal["learned", "sinusoidal", "rotary"] = "learned",
        rope_base: float = 10000.0,
        norm: NormKind = "layernorm",
        norm_position: Literal["pre", "post"] = "pre",
        activation: Activation = "gelu",
        bias: bool = True,
        tie_weights: bool = True,
        norm_eps: float = 1e-5,
        n_kv_head: int | None = None,
        qk_norm: bool = False,
        logit_softcap: float | None = None,
        zero_init: bool = False,
        value_embeddings: bool = False,
        document_mask: bool = False,
        init_from: str | None = None,
        **kwargs,
    ):
        start = None
        if init_from is not None:
            start = read_starting_point(init_from, type(self))
            # Rebinding the arguments before the base saves them: hparams hold the folder's values.
            (n_layer, n_head, n_embd, ffn_dim, positions, rope_base, norm, norm_position, activation, bias,
             tie_weights, norm_eps, n_kv_head, qk_norm, logit_softcap, value_embeddings) = architecture_of(
                start, type(self), dict(
                n_layer=n_layer, n_head=n_head, n_embd=n_embd, ffn_dim=ffn_dim, positions=positions,
                rope_base=rope_base, norm=norm, norm_position=norm_position, activation=activation, bias=bias,
                tie_weights=tie_weights, norm_eps=norm_eps, n_kv_head=n_kv_head, qk_norm=qk_norm,
                logit_softcap=logit_softcap, value_embeddings=value_embeddings))
        super().__init__(**kwargs)
        vocab_size, max_len = self.hparams.vocab_size, self.hparams.max_len
        if n_embd % n_head:
            raise XLabError(f"model n_embd={n_embd} is not divisible by n_head={n_head}: change one of them.")
        if positions == "rotary" and (n_embd // n_head) % 2:
            raise XLabError(f"rotary positions need an even head size; n_embd/n_head={n_embd // n_head}.")
        if n_kv_head is not None and (n_kv_head < 1 or n_head % n_kv_head):
            raise XLabError(f"model n_head={n_head} is not a multiple of n_kv_head={n_kv_head}: change one of them.")
        if logit_softcap is not None and logit_softcap <= 0:
            raise XLabError(f"model logit_softcap={logit_softcap} must be positive: a cap of 0 leaves no logits; "
                            "null turns the cap off.")
        if ffn_dim is None:
            ffn_dim = 64 * math.ceil(8 * n_embd / 3 / 64) if activation == "swiglu" else 4 * n_embd
        rotary = Rotary(n_embd // n_head, max_len, rope_base) if positions == "rotary" else None

        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd),
            drop=nn.Dropout(dropout),
            h=nn.ModuleList(Block(n_embd, n_head, ffn_dim, dropout, bias, norm, norm_position, activation, rotary,
                                  norm_eps, n_kv_head, qk_norm) for _ in range(n_layer)),
            # Post-norm blocks end in a norm already; pre-norm needs one before the head.
            ln_f=make_norm(norm, n_embd, bias, norm_eps) if norm_position == "pre" else nn.Identity(),
        ))
        if value_embeddings:
            values = (n_kv_head or n_head) * (n_embd // n_head)
            self.transformer["vte"] = nn.ModuleList(nn.Embedding(vocab_size, values) for _ in range(n_layer))
        if positions == "learned":
            self.transformer["wpe"] = nn.Embedding(max_len, n_embd)
        elif positions == "sinusoidal":
            # Scaled to the token embeddings' size (N(0, INIT_STD) per component). The table as
            # published has 35x their size here, so the sum was nearly all position and token identity
            # reached the blocks as noise: training stalled (the original Transformer instead scales
            # embeddings up by sqrt(n_embd), which GPT-2's initialisation does not).
            scale = INIT_STD * math.sqrt(2)
            self.register_buffer("sinusoids", sinusoidal_table(max_len, n_embd) * scale, persistent=False)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        if tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        self._decode_head = DecodeHead()
        init_gpt2_weights(self, n_layer)
        if zero_init:
            for block in self.transformer.h:
                nn.init.zeros_(block.attn.c_proj.weight)
                nn.init.zeros_(block.mlp.c_proj.weight)
        if start is not None:
            load_starting_weights(self, start)
            # LightningCLI saves the settings as configured, not as rebound above: record the
            # folder's. The weights now live in this model's checkpoints: rebuilding needs no folder.
            self.hparams.update(n_layer=n_layer, n_head=n_head, n_embd=n_embd, ffn_dim=ffn_dim, positions=positions,
                                rope_base=rope_base, norm=norm, norm_position=norm_position, activation=activation,
                                bias=bias, tie_weights=tie_weights, norm_eps=norm_eps, n_kv_head=n_kv_head,
                                qk_norm=qk_norm, logit_softcap=logit_softcap, value_embeddings=value_embeddings,
                                init_from=None)

    def fsdp_units(self) -> set[type[nn.Module]]:
        return {Block}

    def hf_export(self) -> tuple[dict, dict[str, Tensor]]:
        """GPT-2 when GPT-2-shaped, Llama when rotary / RMSNorm / SwiGLU, Qwen3 with qk_norm too, Arcee
        with ReLU² instead (`hf_weights.hf_kind` names a setting that none can express)."""
        hp = self.hparams
        config = hf_config_from_xlab(hp, self.transformer.h[0].mlp.c_proj.in_features)
        return config, hf_state_from_xlab(config["model_type"], self.state_dict(), hp["n_layer"], bool(hp["tie_weights"]))

    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for incremental decoding of `batch_size` sequences."""
        hp = self.hparams
        return KVCache(hp.n_layer, batch_size, hp.get("n_kv_head") or hp.n_head, max_len or hp.max_len,
                       hp.n_embd // hp.n_head,
                       device=self.device, dtype=dtype or self.lm_head.weight.dtype)

    def forward(self, input_ids: Tensor | None, cache: KVCache | None = None, positions: Tensor | None = None,
                padding_mask: Tensor | None = None, inputs_embeds: Tensor | None = None) -> Tensor:
        """Logits (B, T, vocab) for `input_ids` (B, T).

        With a `cache`, the tokens continue what the cache holds: their keys are appended and
        they attend to every cached position. `positions` (B, T) overrides the default
        positions past..past+T-1 (for left-padded prompts); `padding_mask` (B, past + T) is
        True at real tokens and False at pads, which no query attends to. `inputs_embeds`
        (B, T, C) replaces the token embeddings (a CaptionModel's image prefix).
        """
        x = self.transformer.wte(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        T = x.shape[1]
        past = cache.length if cache is not None else 0
        positions = position_ids(x[..., 0], past, self.hparams.max_len, positions)
        for setting in ("document_mask", "value_embeddings"):
            if self.hparams.get(setting, False) and input_ids is None:
                raise XLabError(f"{setting} reads the tokens: it cannot run on inputs_embeds; set model {setting} false.")
        if self.hparams.get("document_mask", False):
            positions, mask = document_layout(input_ids, self.hparams.sos_id, positions, cache)
            padding = attention_mask(T, past, padding_mask, x.device)
            mask = mask if padding is None else mask & padding
        else:
            mask = attention_mask(T, past, padding_mask, x.device)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(positions)
        elif self.hparams.positions == "sinusoidal":
            x = x + self.sinusoids[positions]
        x = self.transformer.drop(x)
        values = self.transformer["vte"] if "vte" in self.transformer else None
        for layer, block in enumerate(self.transformer.h):
            x = block(x, positions, mask, cache, layer, None if values is None else values[layer](input_ids))
        x = self.transformer.ln_f(x)
        if cache is not None:
            cache.advance(T)
            logits = self._decode_head(self.lm_head, x)
        else:
            logits = self.lm_head(x)
        cap = self.hparams.get("logit_softcap")
        return logits if cap is None else cap * torch.tanh(logits / cap)
