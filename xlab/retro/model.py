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

Batches carry `retrieved` (B, m, k, 2L) int tokens (`BatchNeighbours`); without it (retrieval
"off") the CCA layers are skipped and the model is a plain decoder. With a KV cache (generation),
the model retrieves at chunk boundaries from the database set with `set_database` and keeps the
encoded neighbours in the `RetroCache` (`DecodingNeighbours`). Either way `DecoderLayer` does the
attention: one batched call per layer in training, one call per chunk a decoding step touches.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlab.common.errors import XLabError
from xlab.models.blocks import (MLP, CausalSelfAttention, KVCache, Rotary, attention_mask, init_gpt2_weights,
                                position_ids)
from xlab.models.lm import LanguageModel
from xlab.retro.database import RetrievalDatabase
from xlab.retro.fitting import fit_decoder_, read_decoder
from xlab.retro.training import RetrievalTraining


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

    def forward(self, x: Tensor, context: Tensor, offset: int = 0) -> Tensor:
        """`offset`: position of the first query inside its chunk (decoding continues a chunk)."""
        return self.attend(x, *self.keys_values(context), offset)

    def keys_values(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Keys (rotated) and values (N, nh, Tk, hs) of `context`: what decoding caches per chunk."""
        N, Tk, _ = context.shape
        C = self.n_head * self.head_dim
        k, v = (t.view(N, Tk, self.n_head, self.head_dim).transpose(1, 2) for t in self.kv(context).split(C, dim=2))
        if self.rotary is not None:
            # Positions inside the neighbour: relative order is what matters.
            k = self.rotary(k, torch.arange(Tk, device=context.device).remainder(self.key_period).expand(N, Tk))
        return k, v

    def attend(self, x: Tensor, k: Tensor, v: Tensor, offset: int = 0) -> Tensor:
        N, Tq, C = x.shape
        q = self.q(x).view(N, Tq, self.n_head, self.head_dim).transpose(1, 2)  # (N, nh, Tq, hs)
        if self.rotary is not None:
            q = self.rotary(q, torch.arange(offset, offset + Tq, device=x.device).expand(N, Tq))
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
    """Pre-norm self-attention, chunked cross-attention to the neighbours (CCA layers only), MLP."""

    def __init__(self, dim: int, enc_dim: int, n_head: int, dropout: float, rotary: Rotary, cross: bool,
                 chunk_size: int, norm_eps: float | None = None):
        super().__init__()
        self.chunk_size = chunk_size
        self.ln_1, self.ln_2 = nn.RMSNorm(dim, eps=norm_eps), nn.RMSNorm(dim, eps=norm_eps)
        self.attn = CausalSelfAttention(dim, n_head, dropout, bias=False, rotary=rotary)
        self.mlp = MLP(dim, 4 * dim, "gelu", dropout, bias=False)
        self.ln_cca = nn.RMSNorm(dim, eps=norm_eps) if cross else None
        self.cca = CrossAttention(dim, enc_dim, n_head, dropout, rotary, 2 * chunk_size) if cross else None

    def forward(self, x: Tensor, positions: Tensor, mask: Tensor | None, cache: KVCache | None, index: int,
                neighbours: BatchNeighbours | DecodingNeighbours | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), positions, mask, cache, index)
        if self.cca is not None and neighbours is not None:
            x = x + neighbours.cross_attend(self, x, index)
        return x + self.mlp(self.ln_2(x))

    def chunked_cross_attention(self, x: Tensor, encoded: Tensor) -> Tensor:
        """CCA output (B, T, C) for states x (B, T, C) at positions 0..T-1 and E (B, n, k * 2L, enc_dim),
        n >= T // L. Position p >= L - 1 attends to the neighbours of chunk (p - L + 1) // L; earlier
        positions get 0."""
        B, T, C = x.shape
        L = self.chunk_size
        n = T // L  # chunks whose last token is inside the input
        out = x.new_zeros(B, T, C)
        if n == 0:
            return out
        shifted = x[:, L - 1:]  # (B, T - L + 1, C)
        shifted = F.pad(shifted, (0, 0, 0, n * L - shifted.shape[1]))  # (B, n * L, C)
        q = shifted.reshape(B * n, L, C)
        y = self.cca(self.ln_cca(q), encoded[:, :n].reshape(B * n, encoded.shape[2], encoded.shape[3]))
        out[:, L - 1:] = y.reshape(B, n * L, C)[:, : T - L + 1]
        return out

    def cached_cross_attention(self, x: Tensor, keys_values, past: int) -> Tensor:
        """The same for states x (B, T, C) at positions past..past+T-1, with `keys_values(chunk)` giving
        this layer's CCA keys and values of an encoded chunk (None if it has none): the positions
        that attend to one chunk go in one call, at their offset."""
        B, T, C = x.shape
        L = self.chunk_size
        out = x.new_zeros(B, T, C)
        begin, end = max(past - L + 1, 0), past + T - L + 1  # shifted positions p - L + 1 in the input
        for chunk in range(begin // L, (end - 1) // L + 1 if end > 0 else 0):
            kv = keys_values(chunk)
            if kv is None:
                continue
            start, stop = max(begin, chunk * L), min(end, (chunk + 1) * L)
            t0, t1 = start + L - 1 - past, stop + L - 1 - past  # back to indices of x
            out[:, t0:t1] = self.cca.attend(self.ln_cca(x[:, t0:t1]), *kv, offset=start - chunk * L)
        return out


class RetroCache(KVCache):
    """The KV cache plus what generation-time retrieval needs: the tokens and the decoder states at
    the first CCA layer seen so far, the encoded neighbours of every finished chunk, and each CCA
    layer's keys and values of them (computed once per chunk, not once per new token)."""

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int, dim: int,
                 device, dtype):
        super().__init__(n_layer, batch_size, n_head, max_len, head_dim, device=device, dtype=dtype)
        self.tokens = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)
        self.hidden = torch.zeros(batch_size, max_len, dim, device=device, dtype=dtype)
        self.encoded: dict[int, Tensor] = {}  # chunk index -> (B, k * 2L, enc_dim)
        self.cross: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}  # (layer, chunk) -> CCA keys, values

    def cross_keys_values(self, layer: DecoderLayer, index: int, chunk: int) -> tuple[Tensor, Tensor] | None:
        """Layer `index`'s CCA keys and values of `chunk`'s neighbours, None before it is encoded."""
        if chunk not in self.encoded:
            return None
        if (index, chunk) not in self.cross:
            self.cross[index, chunk] = layer.cca.keys_values(self.encoded[chunk])
        return self.cross[index, chunk]

    def reorder(self, index: Tensor) -> None:
        super().reorder(index)
        filled = slice(0, self.length)
        self.tokens[:, filled] = self.tokens[:, filled].index_select(0, index)
        self.hidden[:, filled] = self.hidden[:, filled].index_select(0, index)
        self.encoded = {i: e.index_select(0, index) for i, e in self.encoded.items()}
        self.cross = {key: (k.index_select(0, index), v.index_select(0, index)) for key, (k, v) in self.cross.items()}

    def reset(self) -> None:
        super().reset()
        self.encoded, self.cross = {}, {}


class BatchNeighbours:
    """Neighbours that come with the batch (B, >= T // L, k, 2L), encoded once, from the decoder
    states of the first CCA layer (positions 0..T-1, no cache)."""

    def __init__(self, model: RetroModel, retrieved: Tensor):
        self.model, self.retrieved, self.encoded = model, retrieved, None

    def cross_attend(self, layer: DecoderLayer, x: Tensor, index: int) -> Tensor:
        if self.encoded is None:
            B, T, _ = x.shape
            L = self.model.chunk_size
            n = T // L
            self.encoded = self.model.encode(self.retrieved[:, :n], x[:, : n * L].reshape(B, n, L, -1))
        return layer.chunked_cross_attention(x, self.encoded)


class DecodingNeighbours:
    """Generation: neighbours retrieved from the database for every chunk the tokens finish, encoded
    from the first CCA layer's states and kept in the `RetroCache` for the steps after.

    Rows share positions (equal-length prompts); left-padded batches are not supported."""

    def __init__(self, model: RetroModel, input_ids: Tensor, cache: RetroCache):
        self.model, self.input_ids, self.cache, self.stored = model, input_ids, cache, False

    def cross_attend(self, layer: DecoderLayer, x: Tensor, index: int) -> Tensor:
        if not self.stored:
            self._retrieve(x)
            self.stored = True
        cache = self.cache
        return layer.cached_cross_attention(x, lambda chunk: cache.cross_keys_values(layer, index, chunk), cache.length)

    def _retrieve(self, x: Tensor) -> None:
        """Retrieve and encode every chunk whose last token is new, all in one search and one
        encoder pass (a prompt or a window rebuilt after a slide finishes many at once)."""
        cache, L, T = self.cache, self.model.chunk_size, x.shape[1]
        past = cache.length
        cache.tokens[:, past:past + T] = self.input_ids
        cache.hidden[:, past:past + T] = x
        chunks = [c for c in range(past // L, (past + T) // L) if c not in cache.encoded]
        if not chunks:
            return
        B, n = x.shape[0], len(chunks)
        rows = torch.cat([torch.arange(c * L, (c + 1) * L, device=x.device) for c in chunks])
        tokens = cache.tokens[:, rows].reshape(B * n, L).cpu().numpy()
        found = torch.from_numpy(self.model.database.search(tokens)).to(x.device)  # (B * n, k, 2L)
        h = cache.hidden[:, rows].reshape(B, n, L, -1)
        encoded = self.model.encode(found.reshape(B, n, *found.shape[1:]), h)  # (B, n, k * 2L, enc_dim)
        for i, chunk in enumerate(chunks):
            cache.encoded[chunk] = encoded[:, i]


class RetroModel(RetrievalTraining, LanguageModel):
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
        cca_zero_init: Start every CCA output projection at zero, so the untrained retrieval path adds
            nothing and the model starts as its plain decoder (noise from neighbours would otherwise
            hit the residual stream from step 0).
        retrieval_lr_scale: Learning rate of the retrieval parts (encoder, its input projection and
            every CCA) as a multiple of learning_rate.
        clip_retrieval_apart: Clip the gradient norms of the retrieval parts and of the decoder
            apart (gradient_clip_val each), so large early gradients of the untrained retrieval
            path do not shrink the decoder's updates through one global norm.
        learning_rate, weight_decay, betas, warmup_steps, min_lr_ratio, lr_decay_steps: As XLabModel.
        init_from: RETRO-fitting: start the decoder from a trained one of the same shape (`fitting.py`).
        freeze_decoder: Train only the retrieval parts (null: when init_from is given).
        norm_eps: The decoder norms' epsilon (null: torch's default; init_from: the decoder's).
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
        cca_zero_init: bool = False,
        retrieval_lr_scale: float = 1.0,
        clip_retrieval_apart: bool = False,
        init_from: str | None = None,
        freeze_decoder: bool | None = None,
        norm_eps: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        vocab_size, max_len = self.hparams.vocab_size, self.hparams.max_len
        decoder = read_decoder(init_from, self.hparams, norm_eps) if init_from is not None else None
        norm_eps = decoder.settings["norm_eps"] if decoder is not None else norm_eps
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
        if retrieval_lr_scale <= 0:
            raise XLabError(f"model retrieval_lr_scale={retrieval_lr_scale} must be positive.")
        self.cross_layers = sorted(set(layers))
        self.chunk_size = chunk_size
        rotary = Rotary(n_embd // n_head, max(max_len, 2 * chunk_size), rope_base)
        enc_rotary = Rotary(enc_dim // n_head, 2 * chunk_size, rope_base)

        self.wte = nn.Embedding(vocab_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(DecoderLayer(n_embd, enc_dim, n_head, dropout, rotary, l in self.cross_layers,
                                                 chunk_size, norm_eps)
                                    for l in range(n_layer))
        self.ln_f = nn.RMSNorm(n_embd, eps=norm_eps)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        # The encoder shares the token embedding (as in the paper), projected to its own width.
        self.enc_in = nn.Linear(n_embd, enc_dim, bias=False)
        self.encoder = nn.ModuleList(EncoderLayer(enc_dim, n_embd, n_head, dropout, enc_rotary) for _ in range(enc_depth))
        self.enc_ln = nn.RMSNorm(enc_dim)
        init_gpt2_weights(self, n_layer)
        if cca_zero_init:
            for l in self.cross_layers:
                nn.init.zeros_(self.layers[l].cca.c_proj.weight)
        fit_decoder_(self, decoder, freeze_decoder)
        self.database = None  # set_database: for generation-time retrieval
        self.training_database = None  # the data module's, while a Trainer runs (`use_resource`)
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

    def forward(self, input_ids: Tensor, retrieved: Tensor | None = None, cache: KVCache | None = None,
                positions: Tensor | None = None, padding_mask: Tensor | None = None) -> Tensor:
        """Logits (B, T, vocab). `retrieved` (B, >= T // L, k, 2L): neighbours of each chunk; None
        skips the CCA (retrieval off), unless a `RetroCache` and a database are given (generation)."""
        T = input_ids.shape[1]
        past = cache.length if cache is not None else 0
        positions = position_ids(input_ids, past, self.hparams.max_len, positions)
        if retrieved is not None and retrieved.shape[-1] != 2 * self.chunk_size:
            raise XLabError(f"retrieved neighbours have {retrieved.shape[-1]} tokens, the model expects "
                            f"2 * chunk_size = {2 * self.chunk_size}: the data's chunk_size differs from the model's.")
        neighbours = None  # retrieval off: the CCA layers are skipped
        if isinstance(cache, RetroCache) and self.database is not None:
            if padding_mask is not None:
                raise XLabError("RetroModel retrieves for chunks at the same positions in every row: generate from "
                                "prompts of equal length (or one at a time), not a left-padded batch.")
            neighbours = DecodingNeighbours(self, input_ids, cache)
        elif retrieved is not None:
            neighbours = BatchNeighbours(self, retrieved)
        x = self.drop(self.wte(input_ids))
        mask = attention_mask(T, past, padding_mask, input_ids.device)
        for i, layer in enumerate(self.layers):
            x = layer(x, positions, mask, cache, i, neighbours)
        if cache is not None:
            cache.advance(T)
        return self.lm_head(self.ln_f(x))

    # --- generation: retrieval at chunk boundaries --------------------------------------------
    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> RetroCache:
        """An empty cache; decoding retrieves from the database given to `set_database`, if any."""
        hp = self.hparams
        return RetroCache(hp.n_layer, batch_size, hp.n_head, max_len or hp.max_len, hp.n_embd // hp.n_head,
                          hp.n_embd, device=self.device, dtype=dtype or self.lm_head.weight.dtype)

    def prepare_sampling(self) -> None:
        """Open the training database the checkpoint recorded, unless a database is set; a folder
        that is gone leaves the model decoding without retrieval, as when it was saved."""
        if self.database is None and self.database_dir and (Path(self.database_dir) / "manifest.json").is_file():
            self.set_database(RetrievalDatabase(self.database_dir))

    def use_resource(self, kind: str, resource) -> None:
        if kind == "retrieval_database":
            self.training_database = resource

    def set_database(self, database, force: bool | None = None) -> None:
        """Retrieve from `database` (a RetrievalDatabase) when decoding with a cache; refuse one
        other than the training database unless forced."""
        force = self.hparams.force_database if force is None else force
        if database is not None:
            check_database(self, database, force)
        self.database = database

    # --- steps: pass the neighbours -----------------------------------------------------------
    def batch_logits(self, batch: dict[str, Tensor]) -> Tensor:
        return self(batch["input_ids"], batch.get("retrieved"))

    # --- what the scripts ask -------------------------------------------------------------------
    def fsdp_units(self) -> set[type[nn.Module]]:
        return {DecoderLayer, EncoderLayer}

    def hf_export(self):
        raise XLabError("a RetroModel cannot be exported to transformers: its chunked cross-attention to retrieved "
                        "neighbours has no transformers equivalent.")

    # --- which database the weights belong to -------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        database = self.training_database if self.training_database is not None else self.database
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
        if self.training_database is not None:
            check_database(self, self.training_database, self.hparams.force_database)

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
        raise XLabError(f"{str(error).rstrip('.')}, or set model.init_args.force_database true to use it "
                        "anyway.") from None

