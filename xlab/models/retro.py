"""RetroModel: a decoder with causal chunked cross-attention (CCA) to retrieved neighbours (RETRO).

The input of T = m * L tokens is cut into m chunks of L = chunk_size tokens. Chunk i comes with
k retrieved neighbours, each 2L tokens (the neighbour chunk and its continuation), from a
`RetrievalDatabase` that never returns the query's own document during training.

    decoder layer l:  x += attn(norm(x));  x += cca(norm(x), E) if l in dec_cross_attn_layers;  x += mlp(norm(x))
    encoder (run once, at the first CCA layer, on the decoder's states H there):
        neighbour tokens (B, m, k, 2L) -> embed (shared with the decoder, projected to enc_dim)
        -> enc_depth x [bidirectional self-attn, cross-attn to H of the neighbour's chunk, mlp]
        -> E (B, m, k * 2L, enc_dim)

Causality (the paper's shift): the neighbours of chunk i are attended from the LAST token of
chunk i onwards, i.e. by positions (i+1)L - 1 ... (i+2)L - 2. The CCA drops the first L - 1
positions, regroups the rest into chunks of L queries and lets query chunk i attend to E[:, i];
the first L - 1 tokens get no CCA. Chunk i's neighbours (and the encoder, which reads H of
chunk i only) thus never change a logit before position (i+1)L - 1.

Batches carry `retrieved` (B, m, k, 2L) int tokens; without it (retrieval "off") the CCA layers
are skipped and the model is a plain decoder. With a KV cache (generation), the model retrieves
by itself at chunk boundaries from the database set with `set_database` (see `RetroCache`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlab.errors import XLabError
from xlab.models.blocks import MLP, CausalSelfAttention, KVCache, Rotary, attention_mask
from xlab.models.lm import LanguageModel


class CrossAttention(nn.Module):
    """Queries from `x` (N, Tq, C) attend to every position of `context` (N, Tk, Cc); rotary on both."""

    def __init__(self, dim: int, context_dim: int, n_head: int, dropout: float, rotary: Rotary | None,
                 key_period: int = 1 << 30):
        super().__init__()
        self.n_head, self.head_dim = n_head, dim // n_head
        self.key_period = key_period  # context position = index % key_period (k neighbours of 2L tokens each)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.c_proj = nn.Linear(dim, dim, bias=False)
        self.dropout, self.rotary = dropout, rotary

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        N, Tq, C = x.shape
        Tk = context.shape[1]
        q = self.q(x).view(N, Tq, self.n_head, self.head_dim).transpose(1, 2)  # (N, nh, Tq, hs)
        k, v = (t.view(N, Tk, self.n_head, self.head_dim).transpose(1, 2) for t in self.kv(context).split(C, dim=2))
        if self.rotary is not None:
            # Positions inside the query chunk and inside the neighbour: relative order is what matters.
            q = self.rotary(q, torch.arange(Tq, device=x.device).expand(N, Tq))
            k = self.rotary(k, torch.arange(Tk, device=x.device).remainder(self.key_period).expand(N, Tk))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.c_proj(y.transpose(1, 2).reshape(N, Tq, C))


class EncoderLayer(nn.Module):
    """Bidirectional self-attention over one neighbour, cross-attention to its chunk's decoder states, MLP."""

    def __init__(self, dim: int, dec_dim: int, n_head: int, dropout: float, rotary: Rotary | None):
        super().__init__()
        self.ln_1, self.ln_2, self.ln_3 = nn.RMSNorm(dim), nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.attn = CrossAttention(dim, dim, n_head, dropout, rotary)  # attends to itself: no mask
        self.cross = CrossAttention(dim, dec_dim, n_head, dropout, None)
        self.mlp = MLP(dim, 4 * dim, "gelu", dropout, bias=False)

    def forward(self, e: Tensor, h: Tensor) -> Tensor:
        # e: (B*m*k, 2L, enc_dim) neighbour tokens; h: (B*m*k, L, dec_dim) the decoder's chunk
        x = self.ln_1(e)
        e = e + self.attn(x, x)
        e = e + self.cross(self.ln_2(e), h)
        return e + self.mlp(self.ln_3(e))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, enc_dim: int, n_head: int, dropout: float, rotary: Rotary, cross: bool,
                 chunk_size: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.attn = CausalSelfAttention(dim, n_head, dropout, bias=False, rotary=rotary)
        self.mlp = MLP(dim, 4 * dim, "gelu", dropout, bias=False)
        self.ln_cca = nn.RMSNorm(dim) if cross else None
        self.cca = CrossAttention(dim, enc_dim, n_head, dropout, rotary, 2 * chunk_size) if cross else None


class RetroCache(KVCache):
    """The KV cache plus what generation-time retrieval needs: the tokens and the decoder states at
    the first CCA layer seen so far, and the encoded neighbours of every finished chunk."""

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int, dim: int,
                 device, dtype):
        super().__init__(n_layer, batch_size, n_head, max_len, head_dim, device=device, dtype=dtype)
        self.tokens = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)
        self.hidden = torch.zeros(batch_size, max_len, dim, device=device, dtype=dtype)
        self.encoded: dict[int, Tensor] = {}  # chunk index -> (B, k * 2L, enc_dim)

    def reorder(self, index: Tensor) -> None:
        super().reorder(index)
        self.tokens, self.hidden = self.tokens.index_select(0, index), self.hidden.index_select(0, index)
        self.encoded = {i: e.index_select(0, index) for i, e in self.encoded.items()}

    def reset(self) -> None:
        super().reset()
        self.encoded = {}


class RetroModel(LanguageModel):
    """RETRO: decoder with chunked cross-attention to an encoder over retrieved neighbours.

    Args:
        vocab_size, sos_id, eos_id, pad_id: From the data module.
        max_len: Context length; a multiple of chunk_size.
        n_layer, n_head, n_embd: Decoder depth, heads (also the encoder's), width (dec_dim).
        chunk_size: Tokens per chunk (L); neighbours are 2L tokens. Must match the data's.
        enc_dim, enc_depth: Encoder width and depth.
        dec_cross_attn_layers: 0-based decoder layers with CCA; null: every 3rd from layer 5
            (the paper's 6, 9, 12, ...), or the last layer of a shallower decoder.
        dropout, rope_base: Dropout everywhere; base of the rotary frequencies.
        force_database: Accept a retrieval database other than the one the checkpoint was trained with.
        learning_rate, weight_decay, betas, warmup_steps, min_lr_ratio, lr_decay_steps: As XLabModel.
        compile: torch.compile the forward pass.
    """

    def __init__(
        self,
        n_layer: int = 6,
        n_head: int = 4,
        n_embd: int = 256,
        chunk_size: int = 16,
        enc_dim: int = 128,
        enc_depth: int = 2,
        dec_cross_attn_layers: list[int] | None = None,
        dropout: float = 0.0,
        rope_base: float = 10000.0,
        force_database: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        vocab_size, max_len = self.hparams.vocab_size, self.hparams.max_len
        for name, dim in (("n_embd", n_embd), ("enc_dim", enc_dim)):
            if dim % n_head or (dim // n_head) % 2:
                raise XLabError(f"model {name}={dim} must split into n_head={n_head} heads of even size (rotary).")
        if chunk_size < 1 or max_len % chunk_size:
            raise XLabError(f"model chunk_size={chunk_size} must divide max_len={max_len}.")
        layers = dec_cross_attn_layers
        if layers is None:
            layers = list(range(5, n_layer, 3)) if n_layer > 5 else [n_layer - 1]
        if not layers or any(not 0 <= l < n_layer for l in layers):
            raise XLabError(f"dec_cross_attn_layers={layers} must be a non-empty list of layers in [0, {n_layer}).")
        self.cross_layers = sorted(set(layers))
        self.chunk_size = chunk_size
        rotary = Rotary(n_embd // n_head, max(max_len, 2 * chunk_size), rope_base)
        enc_rotary = Rotary(enc_dim // n_head, 2 * chunk_size, rope_base)

        self.wte = nn.Embedding(vocab_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(DecoderLayer(n_embd, enc_dim, n_head, dropout, rotary, l in self.cross_layers,
                                                 chunk_size)
                                    for l in range(n_layer))
        self.ln_f = nn.RMSNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        # The encoder shares the token embedding (as in the paper), projected to its own width.
        self.enc_in = nn.Linear(n_embd, enc_dim, bias=False)
        self.encoder = nn.ModuleList(EncoderLayer(enc_dim, n_embd, n_head, dropout, enc_rotary) for _ in range(enc_depth))
        self.enc_ln = nn.RMSNorm(enc_dim)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
        self.database = None  # set_database: for generation-time retrieval
        self.database_identity: dict | None = None  # of the database trained with (from the checkpoint)
        self.database_dir: str | None = None  # where that database was

    # --- the network --------------------------------------------------------------------------
    def encode(self, retrieved: Tensor, h: Tensor) -> Tensor:
        """Neighbours (B, m, k, 2L) with decoder states h (B, m, L, C) -> E (B, m, k * 2L, enc_dim)."""
        B, m, k, R = retrieved.shape
        L, C = h.shape[2], h.shape[3]
        e = self.enc_in(self.wte(retrieved.long().reshape(B * m * k, R)))  # (B*m*k, 2L, enc_dim)
        hk = h.unsqueeze(2).expand(B, m, k, L, C).reshape(B * m * k, L, C)  # each neighbour sees its chunk
        for layer in self.encoder:
            e = layer(e, hk)
        return self.enc_ln(e).reshape(B, m, k * R, -1)

    def chunked_cross_attention(self, layer: DecoderLayer, x: Tensor, encoded: Tensor) -> Tensor:
        """CCA output (B, T, C) for states x (B, T, C) and E (B, n, k * 2L, enc_dim), n >= T // L.

        Position p >= L - 1 attends to the neighbours of chunk (p - L + 1) // L; earlier positions get 0.
        """
        B, T, C = x.shape
        L = self.chunk_size
        n = T // L  # chunks whose last token is inside the input
        out = x.new_zeros(B, T, C)
        if n == 0:
            return out
        shifted = x[:, L - 1:]  # (B, T - L + 1, C)
        shifted = F.pad(shifted, (0, 0, 0, n * L - shifted.shape[1]))  # (B, n * L, C)
        q = shifted.reshape(B * n, L, C)
        y = layer.cca(layer.ln_cca(q), encoded[:, :n].reshape(B * n, encoded.shape[2], encoded.shape[3]))
        out[:, L - 1:] = y.reshape(B, n * L, C)[:, : T - L + 1]
        return out

    def forward(self, input_ids: Tensor, retrieved: Tensor | None = None, cache: KVCache | None = None,
                positions: Tensor | None = None, padding_mask: Tensor | None = None) -> Tensor:
        """Logits (B, T, vocab). `retrieved` (B, >= T // L, k, 2L): neighbours of each chunk; None
        skips the CCA (retrieval off), unless a `RetroCache` and a database are given (generation)."""
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.hparams.max_len:
            raise ValueError(f"sequence of {past + T} tokens exceeds the model's max_len={self.hparams.max_len}")
        if retrieved is not None and retrieved.shape[-1] != 2 * self.chunk_size:
            raise XLabError(f"retrieved neighbours have {retrieved.shape[-1]} tokens, the model expects "
                            f"2 * chunk_size = {2 * self.chunk_size}: the data's chunk_size differs from the model's.")
        if positions is None:
            positions = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
        incremental = isinstance(cache, RetroCache) and self.database is not None
        if incremental and padding_mask is not None:
            raise XLabError("RetroModel retrieves for chunks at the same positions in every row: generate from "
                            "prompts of equal length (or one at a time), not a left-padded batch.")
        x = self.drop(self.wte(input_ids))
        mask = attention_mask(T, past, padding_mask, input_ids.device)
        encoded = None
        for i, layer in enumerate(self.layers):
            x = x + layer.attn(layer.ln_1(x), positions, mask, cache, i)
            if layer.cca is not None and incremental:
                x = x + self._incremental_cca(layer, x, input_ids, cache, first=i == self.cross_layers[0])
            elif layer.cca is not None and retrieved is not None:
                if encoded is None:  # the encoder runs once, on the states of the first CCA layer
                    n = T // self.chunk_size
                    encoded = self.encode(retrieved[:, :n], x[:, : n * self.chunk_size].reshape(B, n, self.chunk_size, -1))
                x = x + self.chunked_cross_attention(layer, x, encoded)
            x = x + layer.mlp(layer.ln_2(x))
        if cache is not None:
            cache.advance(T)
        return self.lm_head(self.ln_f(x))

    # --- generation: retrieval at chunk boundaries --------------------------------------------
    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> RetroCache:
        """An empty cache; decoding retrieves from the database given to `set_database`, if any."""
        hp = self.hparams
        return RetroCache(hp.n_layer, batch_size, hp.n_head, max_len or hp.max_len, hp.n_embd // hp.n_head,
                          hp.n_embd, device=self.device, dtype=dtype or self.lm_head.weight.dtype)

    def sampling_resources(self) -> dict[str, str]:
        """The training database recorded in the checkpoint, until a database is set."""
        if self.database is None and self.database_dir:
            return {"retrieval_database": self.database_dir}
        return {}

    def attach_sampling_resource(self, kind: str, resource) -> None:
        if kind != "retrieval_database":
            super().attach_sampling_resource(kind, resource)
        self.set_database(resource)

    def set_database(self, database, force: bool | None = None) -> None:
        """Retrieve from `database` (a RetrievalDatabase) when decoding with a cache; refuse one
        other than the training database unless forced."""
        force = self.hparams.force_database if force is None else force
        if database is not None:
            check_database(self, database, force)
        self.database = database

    def _incremental_cca(self, layer: DecoderLayer, x: Tensor, input_ids: Tensor, cache: RetroCache,
                         first: bool) -> Tensor:
        """CCA for tokens at cache positions [past, past + T), retrieving for chunks they finish.

        Rows share positions (equal-length prompts); left-padded batches are not supported."""
        B, T, C = x.shape
        L, past = self.chunk_size, cache.length
        if first:
            cache.tokens[:, past:past + T] = input_ids
            cache.hidden[:, past:past + T] = x
            for chunk in range(past // L, (past + T) // L):  # chunks whose last token is new
                if chunk in cache.encoded:
                    continue
                tokens = cache.tokens[:, chunk * L:(chunk + 1) * L].cpu().numpy()
                found = torch.from_numpy(self.database.search(tokens)).to(x.device)  # (B, k, 2L)
                h = cache.hidden[:, chunk * L:(chunk + 1) * L].unsqueeze(1)  # (B, 1, L, C)
                cache.encoded[chunk] = self.encode(found.unsqueeze(1), h)[:, 0]
        out = x.new_zeros(B, T, C)
        for t in range(T):
            chunk = (past + t - L + 1) // L
            if past + t >= L - 1 and chunk in cache.encoded:
                # Query position inside the shifted chunk, as in training.
                q = layer.ln_cca(x[:, t:t + 1])
                out[:, t:t + 1] = self._cca_at(layer, q, cache.encoded[chunk], (past + t - L + 1) % L)
        return out

    def _cca_at(self, layer: DecoderLayer, q: Tensor, encoded: Tensor, offset: int) -> Tensor:
        """One query (B, 1, C) at `offset` inside its shifted chunk attending to E (B, k*2L, enc_dim)."""
        cca = layer.cca
        B, _, C = q.shape
        Tk = encoded.shape[1]
        qh = cca.q(q).view(B, 1, cca.n_head, cca.head_dim).transpose(1, 2)
        k, v = (t.view(B, Tk, cca.n_head, cca.head_dim).transpose(1, 2) for t in cca.kv(encoded).split(C, dim=2))
        qh = cca.rotary(qh, torch.full((B, 1), offset, device=q.device))
        k = cca.rotary(k, torch.arange(Tk, device=q.device).remainder(cca.key_period).expand(B, Tk))
        y = F.scaled_dot_product_attention(qh, k, v)
        return cca.c_proj(y.transpose(1, 2).reshape(B, 1, C))

    # --- steps: pass the neighbours -----------------------------------------------------------
    def batch_logits(self, batch: dict[str, Tensor]) -> Tensor:
        return self(batch["input_ids"], batch.get("retrieved"))

    # --- which database the weights belong to -------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        database = getattr(getattr(self, "_trainer", None) and self.trainer.datamodule, "database", None)
        database = database if database is not None else self.database
        identity = database.identity() if database is not None else self.database_identity
        if identity is not None:
            # Where it was, too: generation from the checkpoint alone opens it from there.
            folder = str(database.out_dir) if database is not None else self.database_dir
            checkpoint["retro_database"] = {**identity, "dir": folder}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = dict(checkpoint.get("retro_database") or {})
        self.database_dir = saved.pop("dir", None)
        self.database_identity = saved or None

    def _check_trainer_database(self) -> None:
        database = getattr(self.trainer.datamodule, "database", None)
        if database is not None:
            check_database(self, database, self.hparams.force_database)

    def on_fit_start(self) -> None:
        self._check_trainer_database()

    def on_validation_start(self) -> None:
        self._check_trainer_database()

    def on_test_start(self) -> None:
        self._check_trainer_database()

    def on_predict_start(self) -> None:
        self._check_trainer_database()


def check_database(model: RetroModel, database, force: bool) -> None:
    """XLabError unless `database` is the one `model` was trained with (chunks, embedder, chunk size).

    k may differ: the CCA attends to any number of neighbours (the k ablation)."""
    if database.chunk_size != model.chunk_size:
        raise XLabError(f"the retrieval database has chunk_size={database.chunk_size}, the model "
                        f"{model.chunk_size}: build the database with the model's chunk size.")
    if model.database_identity is None or force:
        return
    expected = {key: value for key, value in model.database_identity.items() if key != "k"}
    try:
        database.check_identity(expected)
    except XLabError as error:
        raise XLabError(f"{error} (or set model.init_args.force_database true to use it anyway)") from None

