"""MemoryGPT2: GPT-2 with a FAISS associative memory of what came after which context.

The memory is read at the output, as a kNN-LM or a continuous cache: every token searches the
memory with a learned query of its final state, rescores the top-k entries in torch (so the read
is differentiable with respect to the query and every map), attends over them together with a
"read nothing" slot, and moves a learned, context-dependent share of the next-token distribution
onto the tokens those entries recorded. A memory with nothing to offer gets no share, so it costs
nothing. By default (`memory_scope: document`) a token reads only entries of its own document,
written by earlier passes: never anything ahead of it, never another document.

After the forward pass the final states decide what is written:

* store: every token proposes an entry (its context's key, and later the token that follows);
  a store gate on the key decides, sampled during training so that rarely stored kinds of
  entries still get tried, thresholded at 0.5 otherwise. The same gate weights retrieved
  entries when they are read, so entries that reading finds useful raise the gate for their
  kind, and `store_cost` charges for every proposal.
* delete: the tokens that read an entry vote on it from their final hidden states. The vote
  is acted on one forward pass later; until then it weights reads of that entry, so keeping an
  entry that the next pass reads usefully lowers the loss, and `keep_cost` rewards deleting
  entries nothing reads. Votes above 0.5 remove their entries.

`access.py` gives the entry layout and why, and holds every learned map between the
transformer and the memory. The memory itself, its waiting votes, open documents and reading
rows belong to `xlab.memory.MemoryStore`, which keeps every DDP rank's copy identical and
travels in checkpoints as extra state (tensors only) and in exports as safetensors.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

from xlab.common.errors import XLabError
from xlab.common.tokenizer import IGNORE_INDEX
from xlab.memory.access import MemoryAccess
from xlab.memory.decode_cache import MemoryCache
from xlab.memory.gpt2_backbone import gpt2_transformer
from xlab.memory.store import MemoryStore, every_ranks_reading, with_this_ranks_reading
from xlab.memory.telemetry import MemoryTelemetry
from xlab.models.blocks import position_ids
from xlab.models.lm import LanguageModel

# A token votes on an entry only if it gave the entry at least this weight when reading.
VOTE_THRESHOLD = 0.1
# Where a checkpoint keeps the memory, and every data-parallel rank's own rows beside it.
MEMORY_STATE = "memory._extra_state"
READING_RECORD = "memory_reading_by_rank"


class Readout(NamedTuple):
    ids: Tensor  # (B, T, k) retrieved entry ids
    valid: Tensor  # (B, T, k) which of them are real
    entries: Tensor  # (B, T, k, D) their vectors
    attention: Tensor  # (B, T, 1 + k), column 0 = read nothing
    weights: Tensor  # (B, T, k) attention x store gate x keep probability
    shares: Tensor  # (B, T, k) the share of the next-token distribution each entry's token gets


class MemoryGPT2(LanguageModel):
    """GPT-2 with an associative memory read at its output.

    Args:
        vocab_size, sos_id, eos_id, pad_id: Linked from the data module.
        max_len: Context length in tokens (linked into the data module's block size).
        n_layer, n_head, n_embd, dropout: GPT-2 shape; must match `pretrained_path` if given.
        pretrained_path: A local `save_pretrained` GPT-2 directory to start from (its
            vocabulary must be the data's); its position table is cut to max_len.
            `load_from_checkpoint(ckpt, pretrained_path=None)` rebuilds without the directory.
        use_memory: False gives the same transformer with no memory (the baseline).
        memory_size: Entries held; when full the `eviction` rule makes room.
        memory_dim: Key size, even; None means 2 * n_embd. Half is a fixed random address of
            the token that ends the context, half the final hidden state there, through a fixed
            orthonormal projection. A stored entry adds a document tag and the next token.
        index_type, num_clusters, nprobe: flat, ivf, hnsw or a faiss factory string. An ivf
            index searches exactly until min(memory_size, 39 * num_clusters) entries are stored,
            then trains on them; num_clusters must be <= memory_size.
        num_search_results: Entries retrieved per token (k).
        forgetfulness_factor, min_weight, eviction: Each training step multiplies entry weights
            by 1 - forgetfulness_factor and drops those under min_weight.
        memory_device: auto or cuda: a model on a GPU keeps a flat memory there (a DeviceMemory:
            no pass waits for the device) and searches others through a faiss GPU copy when faiss
            sees a GPU; cpu: always the host memory and its faiss index.
        memory_scope: document (a token reads only entries of its own document, written before
            it: what an honest evaluation needs) or all (any entry, e.g. the training memory
            read when sampling).
        gate_init: Initial logit of the gate that gives the memory its share of the next-token
            distribution (-2: about 10% for an exact match); learned per context from there.
        store_init, delete_init: Initial logits of the store gate and the delete vote.
        store_cost, keep_cost: Loss per unit of store probability and of keep probability.
        memory_lr_scale: Learning rate of the query and key maps relative to the rest.
            They start as an exact token cache; at the full rate Adam's steps (about one learning
            rate per weight per step, whatever the gradient's size) scramble that faster than
            the gradient can teach them anything better.
        reset_each_epoch: Empty the memory when a new training epoch starts.
        eval_memory: fresh (validation, test and predict start empty; the training memory is
            put back afterwards) or continue (they read and write the training memory).
        forget_documents: Remove a document's entries when its eos goes by (with memory_scope
            document nothing could read them again).
        learning_rate, ..., compile: as LanguageModel's (compile leaves the memory calls eager).
    """

    def __init__(
        self,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 256,
        dropout: float = 0.0,
        pretrained_path: str | None = None,
        use_memory: bool = True,
        memory_size: int = 10000,
        memory_dim: int | None = None,
        index_type: str = "flat",
        num_clusters: int = 64,
        nprobe: int = 8,
        num_search_results: int = 5,
        forgetfulness_factor: float = 0.0,
        min_weight: float = 0.01,
        eviction: Literal["lowest_weight", "oldest"] = "lowest_weight",
        memory_device: Literal["auto", "cpu", "cuda"] = "auto",
        memory_scope: Literal["document", "all"] = "document",
        gate_init: float = -2.0,
        store_init: float = 2.0,
        delete_init: float = -2.0,
        store_cost: float = 0.01,
        keep_cost: float = 0.01,
        memory_lr_scale: float = 0.1,
        reset_each_epoch: bool = True,
        eval_memory: Literal["fresh", "continue"] = "fresh",
        forget_documents: bool = True,
        learning_rate: float = 6e-4,
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, **kwargs)
        vocab_size = self.hparams.vocab_size
        if n_embd % n_head:
            raise XLabError(f"model n_embd={n_embd} is not divisible by n_head={n_head}: change one of them.")
        self.transformer = gpt2_transformer(self.hparams)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight
        self.access: MemoryAccess | None = None
        self.memory: MemoryStore | None = None
        if use_memory:
            if num_search_results > memory_size:
                raise XLabError(f"num_search_results={num_search_results} exceeds memory_size={memory_size}: "
                                "retrieve fewer entries or hold more.")
            with torch.random.fork_rng(devices=[]):  # leaves the global draws (dropout) as without a memory
                self.access = MemoryAccess(vocab_size, n_embd, memory_dim or 2 * n_embd, store_init, delete_init,
                                           gate_init)
            self.memory = MemoryStore(
                memory_size=memory_size, memory_dim=self.access.entry_dim, index_type=index_type,
                num_search_results=num_search_results, forgetfulness_factor=forgetfulness_factor,
                min_weight=min_weight, eviction=eviction, num_clusters=num_clusters, nprobe=nprobe,
                device=memory_device, metric="ip")
        self._generation_writes = False
        # The store and keep costs of the last forward pass that wrote; training adds them to the loss.
        self.memory_loss: Tensor | None = None
        self.lm_logits: Tensor | None = None  # the last forward pass's language-model logits ...
        self.mixture: tuple[Tensor, Tensor, Tensor] | None = None  # ... and its read (normalizer, shares, tokens)
        self.memory_telemetry = MemoryTelemetry()

    @property
    def telemetry(self) -> dict[str, Tensor | float]:
        """The last pass's store, delete and hit rates (device tensors) and the memory's
        occupancy and mean age now; training logs their means every `log_every_n_steps`."""
        return self.memory_telemetry.last_pass(self.memory.entries) if self.memory is not None else {}

    def compile_target(self) -> nn.Module:
        return self.transformer  # the memory's faiss calls stay eager

    # --- the protocol the sampler uses ------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> MemoryCache:
        """An empty KV cache for `batch_size` sequences (dtype follows the weights)."""
        return MemoryCache(self.transformer.config, batch_size, max_len or self.hparams.max_len, self.device)

    def memory_digest(self) -> str:
        """Fingerprint of the stored entries ("" without a memory): equal when two memories are."""
        return self.memory.digest() if self.memory is not None else ""

    def forward(self, input_ids: Tensor, cache: MemoryCache | None = None, positions: Tensor | None = None,
                padding_mask: Tensor | None = None, previous_ids: Tensor | None = None) -> Tensor:
        """Next-token scores (B, T, vocab) for `input_ids` (B, T), reading the memory and then
        writing to it. With a memory they are log-probabilities of the mixture of the language
        model and the memory; without one, GPT-2's logits.

        `cache`, `positions` and `padding_mask` (B, past + T; True at real tokens) follow the
        XLabModel protocol. `previous_ids` is accepted for the data's batches and not needed:
        each row's last entry waits in the memory (or the cache) for the token that follows it.
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        # Default positions (none given, no cache) are left to GPT2Model, which makes the same ones:
        # given them, it checks them for packed sequences, which makes the host wait for the device.
        default = positions is None and cache is None
        positions = position_ids(input_ids, past, self.hparams.max_len, positions)
        out = self.transformer(input_ids=input_ids, position_ids=None if default else positions,
                               attention_mask=padding_mask, past_key_values=cache.layers if cache is not None else None,
                               use_cache=cache is not None)
        logits = self.lm_head(out.last_hidden_state)
        if self.memory is None:
            return logits
        # The memory sits on top of the language model and never changes how it learns: the
        # transformer is trained on its own loss (`lm_loss`), exactly as without a memory, and
        # the read learns from the mixture through detached states and logits.
        self.lm_logits = logits
        hidden = out.last_hidden_state.detach()
        real = padding_mask[:, -T:].bool() if padding_mask is not None else None
        ends = input_ids == self.hparams.eos_id
        documents = self.memory.documents(ends)
        readout, votes = self._read(input_ids, hidden, documents, real)
        tokens = self.access.next_tokens(readout.entries).clamp(0, self.hparams.vocab_size - 1)
        lse = logits.detach().float().logsumexp(-1, keepdim=True)
        self.mixture = (lse, readout.shares, tokens)
        scores = self.access.mix(logits.detach(), readout.shares, tokens, lse)
        if cache is None or self._generation_writes:
            replay = False
            if cache is not None:
                replay, cache.replaying = cache.replaying, False
            self._write(input_ids, hidden, documents, ends, real, readout, votes, replay, cache)
        return scores

    # --- reading and writing --------------------------------------------------------------------
    def _read(self, input_ids: Tensor, hidden: Tensor, documents: Tensor, real: Tensor | None
              ) -> tuple[Readout, Tensor]:
        B, T, _ = hidden.shape
        k = self.hparams.num_search_results
        own = self.hparams.memory_scope == "document"
        q, probes = self.access.queries(input_ids, hidden, documents if own else None)
        found = self.memory.search(probes.reshape(B * T, -1).detach(), k)
        entries = found.vectors.to(hidden.device).view(B, T, k, -1)
        ids, valid = found.ids.view(B, T, k).to(hidden.device), found.mask.view(B, T, k).to(hidden.device)
        if own:  # the tag ranks a document's own entries first; the serial number decides
            valid = valid & (self.access.serials(entries) == documents[..., None])
        if real is not None:
            valid = valid & real[..., None]
        keys = entries[..., : self.access.memory_dim].to(hidden.dtype)
        # With no votes yet the delete head still runs, on nothing: DDP wants every parameter used.
        pending = self.memory.waiting_votes(hidden, keys)
        votes = self.access.delete_probability(pending.states.to(hidden), pending.entries.to(hidden))  # (P,)
        keep = torch.ones_like(ids, dtype=hidden.dtype)
        if len(votes):
            index, voted = pending.lookup(ids)
            keep = torch.where(voted & valid, 1 - votes[index], keep)
        shares, attention, weights = self.access.read(q, hidden, keys, valid, keep)
        return Readout(ids, valid, entries, attention, weights, shares), votes

    def _write(self, input_ids: Tensor, hidden: Tensor, documents: Tensor, ends: Tensor, real: Tensor | None,
               readout: Readout, votes: Tensor, replay: bool, cache: MemoryCache | None) -> None:
        hp = self.hparams
        B, T = input_ids.shape
        # The previous pass's delete votes: act on them now, and pay for what they keep.
        counted = self.memory.counted_votes()
        voters = counted.sum().clamp(min=1)
        deleted = (votes.detach() > 0.5) & counted
        cast = self.memory.cast_votes(readout.ids, readout.weights, readout.valid,
                                      readout.entries[..., : self.access.memory_dim], hidden.detach(), VOTE_THRESHOLD)
        removals = [self.memory.settle_votes(deleted, cast)]
        cost = hp.keep_cost * torch.where(counted, 1 - votes, 0.0).sum() / voters
        delete_rate = deleted.sum() / voters

        # The entry at position t: the context ending at t - 1 and the token t that followed;
        # position 0 completes the row's last entry of the previous pass.
        keys = self.access.keys(input_ids, hidden.detach(), documents)  # (B, T, D), next token unknown
        carried = cache.take_carry(B) if cache is not None else self.memory.take_carry(B)
        waiting = carried if carried is not None else keys.new_zeros(B, keys.shape[-1])
        entries = torch.cat([waiting[:, None].to(keys), keys[:, :-1]], dim=1)
        entries[..., -2] = input_ids.float()
        proposes = torch.ones_like(input_ids, dtype=torch.bool)
        proposes[:, 0] = carried is not None
        if real is not None:  # a pad neither proposes an entry nor ends a context
            proposes &= real & torch.cat([real.new_ones(B, 1), real[:, :-1]], dim=1)
        if replay:  # a re-run of tokens already written: only the newest one completes an entry
            proposes[:, :-1] = False
            entries[:, -1] = waiting.to(keys)
            entries[:, -1, -2] = input_ids[:, -1].float()
            proposes[:, -1] = carried is not None
        last = keys[:, -1]
        (cache if cache is not None else self.memory).keep_carry(last)
        p = self.access.store_probability(entries[..., : self.access.memory_dim])  # (B, T)
        if self.training:
            draws = self.memory.store_draws(p.shape)
            if p.device.type == "cuda":  # a pinned copy goes over without waiting for the device's queue
                draws = draws.pin_memory().to(p.device, non_blocking=True)
            stores = (draws < p.detach()) & proposes
        else:
            stores = (p.detach() > 0.5) & proposes
        # The mean store probability of the proposals (none: 0), without asking whether any.
        proposed = proposes.sum()
        store_probability = torch.where(proposes, p, 0.0).sum() / proposed.clamp(min=1)
        cost = cost + hp.store_cost * store_probability
        removals.append(self.memory.write(entries, stores, ends if hp.forget_documents else None, age=self.training))
        self.memory.remove(torch.cat(removals))
        self.memory.advance(documents, ends)
        self.memory_loss = cost

        attention, valid = readout.attention, readout.valid
        reading = valid.any(-1)
        on_memory = attention[..., 1:].amax(-1) > attention[..., 0]
        self.memory_telemetry.record(
            self.training, store_rate=stores.sum() / proposed.clamp(min=1), store_probability=store_probability,
            delete_rate=delete_rate, hit_rate=(on_memory & reading).sum() / max(1, reading.numel()),
            reliance=readout.shares.detach().sum(-1).mean())

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip the transformer's and the memory's gradient norms apart, so that the memory never
        changes how the transformer learns (its updates are those of the same model without one)."""
        if self.access is None or not gradient_clip_val or gradient_clip_algorithm not in (None, "norm"):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        mine = {id(p) for p in self.access.parameters()}
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        for part in ([p for p in params if id(p) not in mine], [p for p in params if id(p) in mine]):
            if part:
                torch.nn.utils.clip_grad_norm_(part, gradient_clip_val)

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        groups = super().parameter_groups(weight_decay)
        if self.access is None:
            return groups
        mine = {id(p) for p in self.access.cache_maps()}
        scaled = self.hparams.learning_rate * self.hparams.memory_lr_scale
        split = []
        for group in groups:
            split.append({**group, "params": [p for p in group["params"] if id(p) not in mine]})
            split.append({**group, "params": [p for p in group["params"] if id(p) in mine], "lr": scaled,
                          "optimizer": "adamw"})  # whatever the optimizer: Muon's full-size steps would scramble the cache
        return [g for g in split if g["params"]]

    # --- steps ------------------------------------------------------------------------------------
    def batch_logits(self, batch: dict[str, Tensor]) -> Tensor:
        return self(batch["input_ids"], previous_ids=batch.get("previous_ids"))

    def lm_loss(self, labels: Tensor) -> Tensor:
        """The language model's own loss on the last forward pass (what trains the transformer
        when there is a memory: the mixture's loss trains only the read)."""
        return F.cross_entropy(self.lm_logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)

    def loss_and_stats(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """As LanguageModel's, with the mixture's loss taken at the labels alone (the same value as
        the cross-entropy of the returned scores, without a backward pass over the vocabulary)."""
        if self.memory is None:
            return super().loss_and_stats(batch)
        scores = self.batch_logits(batch)
        labels = batch["labels"]
        valid = labels != IGNORE_INDEX
        nll = self.access.mixture_nll(self.lm_logits, *self.mixture, labels)
        nll = torch.where(valid, nll, torch.zeros_like(nll)).sum()
        tokens = valid.sum()
        hits = (scores.argmax(-1) == labels) & valid
        stats = {"nll_sum": nll.detach(), "tokens": tokens, "correct": hits.sum(),
                 "num_bytes": batch["num_bytes"].sum()}
        if "answer_mask" in batch:
            answers = batch["answer_mask"].bool() & valid
            stats["answers"], stats["answers_correct"] = answers.sum(), (hits & answers).sum()
        return nll / tokens.clamp(min=1), stats

    def _common_step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        self.memory_loss = None
        loss = super()._common_step(batch, stage)
        if stage == "train" and self.memory is not None:
            size = batch["input_ids"].shape[0]
            if self._logs_this_step():
                telemetry = self.memory_telemetry.drain(self.memory.entries)
                self.log_dict({f"memory/{name}": value for name, value in telemetry.items()}, batch_size=size)
            self.log("train/lm_loss", lm := self.lm_loss(batch["labels"]), batch_size=size)
            loss = loss + lm + (self.memory_loss if self.memory_loss is not None else 0.0)
        return loss

    # --- when the memory starts over --------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        if self.memory is not None:
            self.memory.begin_epoch(self.current_epoch, empty_if_new=self.hparams.reset_each_epoch)

    def _fresh_memory(self, evaluating: bool) -> None:
        """With eval_memory fresh, evaluation starts empty and the training memory is put back after."""
        if self.memory is None or self.hparams.eval_memory != "fresh":
            return
        if evaluating:
            self.memory.set_aside()
        else:
            self.memory.put_back()

    def on_validation_epoch_start(self) -> None:
        self._fresh_memory(True)

    def on_validation_epoch_end(self) -> None:
        self._fresh_memory(False)  # before on_validation_end, where checkpoints are written
        super().on_validation_epoch_end()

    def on_test_epoch_start(self) -> None:
        self._fresh_memory(True)

    def on_test_epoch_end(self) -> None:
        self._fresh_memory(False)
        super().on_test_epoch_end()

    def on_predict_epoch_start(self) -> None:
        self._fresh_memory(True)

    def on_predict_epoch_end(self) -> None:
        self._fresh_memory(False)

    # --- checkpoints: each data-parallel rank's own reading state ---------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        # Every rank holds the same entries but its own rows; rank 0 writes the file, so the
        # other ranks' rows travel beside its state (Lightning calls this hook on every rank).
        state = checkpoint.get("state_dict", {}).get(MEMORY_STATE)
        ranks = every_ranks_reading(state) if state is not None else None
        if ranks is not None:
            checkpoint[READING_RECORD] = ranks

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        ranks, state = checkpoint.get(READING_RECORD), checkpoint.get("state_dict", {}).get(MEMORY_STATE)
        if ranks and state is not None:
            checkpoint["state_dict"][MEMORY_STATE] = with_this_ranks_reading(state, ranks)

    # --- what the scripts ask of every model ------------------------------------------------------
    def state_summary(self) -> dict[str, int]:
        """The memory's size, beside the weights ({} for the baseline without a memory)."""
        return {"memory_entries": len(self.memory.entries)} if self.memory is not None else {}

    def clear_state(self) -> None:
        """Empty the memory, with its waiting delete votes and open documents."""
        if self.memory is not None:
            self.memory.reset()

    def set_generation_writes(self, enabled: bool) -> None:
        """Whether passes with a KV cache (sampling) also write to and delete from the memory.
        Off by default: sampling reads the checkpoint's memory and leaves it as it was. Passes
        without a cache (training, evaluation) always write."""
        if enabled and self.memory is None:
            raise XLabError("trained with use_memory: false")
        self._generation_writes = bool(enabled)

    def fsdp_units(self) -> set[type[nn.Module]]:
        return {GPT2Block}

    def hf_export(self) -> tuple[dict, dict[str, Tensor]]:
        if self.memory is not None:
            raise XLabError("a MemoryGPT2 with a memory cannot be exported to transformers: its predictions depend "
                            "on the memory's entries, which a transformers model cannot hold (a model trained "
                            "with use_memory: false exports as GPT-2).")
        # The backbone's config names no pad token (see gpt2_backbone); the export names the data's.
        config = {**self.transformer.config.to_dict(), "architectures": ["GPT2LMHeadModel"],
                  "tie_word_embeddings": True, "pad_token_id": self.hparams.get("pad_id")}
        return config, {k: v for k, v in self.state_dict().items() if k.startswith("transformer.")}
