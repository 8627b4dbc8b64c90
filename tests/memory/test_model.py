"""MemoryGPT2: reads, writes and decisions, the sampling protocol, checkpoints, DDP, and the
recall task on which the memory must beat the same model without one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

from tests.helpers import digest, load_script
from tests.memory.helpers import recall_data, trainer
from xlab import inference
from xlab.common.errors import XLabError
from xlab.datamodules.sources.recall import RecallSource
from xlab.datamodules.streams import StreamDataModule
from xlab.memory.access import TAG_SCORE, MemoryAccess
from xlab.memory.model import READING_RECORD, MemoryGPT2

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 48


def tiny(**settings) -> MemoryGPT2:
    torch.manual_seed(0)
    args = dict(vocab_size=VOCAB, max_len=16, n_layer=2, n_head=2, n_embd=32, memory_size=256, store_init=20.0,
                memory_device="cpu")
    return MemoryGPT2(**{**args, **settings})


def tokens(batch: int = 2, length: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def size(model: MemoryGPT2) -> int:
    return len(model.memory.entries)


# --- reading, writing, deciding ------------------------------------------------------------------
def test_reads_rescore_what_faiss_found_and_are_differentiable_in_the_query():
    model = tiny()
    ids = tokens()
    model(ids)  # fills the memory
    assert size(model) == ids.numel() - ids.shape[0]  # every token but each row's last completed an entry
    assert model.telemetry["hit_rate"] == 0.0 and model.telemetry["reliance"] == 0.0  # it read an empty memory
    hidden = model.transformer(ids).last_hidden_state
    documents = model.memory.documents(ids == model.hparams.eos_id)
    q, probes = model.access.queries(ids, hidden, documents)
    found = model.memory.search(probes.reshape(-1, probes.shape[-1]).detach(), 5)
    keys = found.vectors[..., : model.access.memory_dim]
    rescored = torch.einsum("nd,nkd->nk", q.reshape(-1, q.shape[-1]), model.access.key(keys))
    # faiss adds the document tag's score; the torch score is the rest of it.
    own = found.mask & (found.vectors[..., -1].long() == documents.reshape(-1, 1))
    torch.testing.assert_close(rescored[own], found.scores[own] - TAG_SCORE, rtol=1e-4, atol=0.1)

    labels = torch.roll(ids, -1, dims=1)
    logits = model(ids)  # the same tokens again: each finds what followed it
    assert model.telemetry["hit_rate"] > 0.5 and model.telemetry["reliance"] > 0.05
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()).backward()
    for name in ("query.weight", "context_query.weight", "key.weight", "log_sharpness", "null", "gate.weight"):
        grad = dict(model.access.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_store_and_delete_decisions_learn_from_the_language_model_loss_alone():
    model = tiny(store_init=0.0, delete_init=0.0)
    ids = tokens(batch=4)
    model(ids)  # writes
    model(ids)  # reads those entries: the tokens that read them vote on deleting them
    assert model.memory.pending is not None and len(model.memory.pending) > 0
    logits = model(ids)  # reads again, with the votes weighing what it reads
    labels = torch.roll(ids, -1, dims=1)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()).backward()  # no store / keep cost
    grads = {name: p.grad for name, p in model.access.named_parameters()}
    for name in ("store.weight", "store.bias", "delete_state.weight", "delete_entry.weight", "delete_bias"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name


def test_the_store_gate_decides_what_is_written():
    closed = tiny(store_init=-20.0)
    closed.eval()
    closed(tokens())
    assert size(closed) == 0
    opened = tiny(store_init=20.0)
    opened.eval()
    opened(tokens())
    assert size(opened) == 2 * 15  # each row's last token still waits for the token after it
    opened(tokens(seed=1))
    assert size(opened) == 2 * 15 + 2 * 16  # ... which the next pass brings


def test_delete_votes_remove_what_was_read():
    model = tiny(delete_init=20.0)
    model.eval()
    ids = tokens()
    model(ids)
    stored = size(model)
    model(ids)  # reads the entries; the votes are acted on one pass later
    read = model.memory.pending.ids
    model(tokens(seed=1))
    assert model.telemetry["delete_rate"] == 1.0
    found = model.memory.entries.search(torch.zeros(1, model.access.entry_dim), k=1)  # non-empty memory still works
    assert found.mask.any()
    remaining = set(model.memory.entries.state_dict()["ids"].tolist())
    assert not remaining & set(read.tolist()) and stored > 0


def test_forget_documents_removes_an_ended_document():
    model = tiny(forget_documents=True)
    model.eval()
    eos = model.hparams.eos_id
    first = tokens(batch=1)
    model(first)
    assert size(model) == 15
    ending = tokens(batch=1, seed=1)
    ending[0, 5] = eos  # the document ends at position 5; a new one starts after it
    model(ending)
    assert size(model) == 10  # the new document's positions 6..15; everything before the eos is gone


def test_a_memory_with_nothing_to_say_costs_nothing_and_the_gate_sets_its_share():
    ids = tokens(batch=1, length=8, seed=3)
    model = tiny().eval()
    with torch.no_grad():
        lm = model.lm_head(model.transformer(ids).last_hidden_state)
        torch.testing.assert_close(model(ids), lm)  # an empty memory: the language model exactly
        shares = []
        for gate in (-2.0, 0.0, -30.0):
            model = tiny(gate_init=gate).eval()
            model(ids)
            model(ids)  # reads the entries of the first pass
            shares.append(model.telemetry["reliance"])
    # The share is 0.99 * sigmoid(gate) of the weight on entries: an exact match takes ~all of
    # it, and 7 of the 8 tokens have one (the last token's context was never stored).
    assert shares[0] == pytest.approx(0.99 * torch.sigmoid(torch.tensor(-2.0)).item() * 7 / 8, rel=0.05)
    assert shares[1] == pytest.approx(0.99 * 0.5 * 7 / 8, rel=0.05) and shares[2] < 1e-9


def test_the_mixture_is_the_language_model_plus_the_shares_of_the_retrieved_tokens():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 11, generator=generator) * 3
    tokens = torch.tensor([2, 7, 2, 0, 5]).expand(3, 4, 5)  # token 2 found twice
    shares = torch.rand(3, 4, 5, generator=generator) * 0.19
    mixed = MemoryAccess.mix(logits, shares, tokens).softmax(-1)
    memory = torch.zeros(3, 4, 11).scatter_add(-1, tokens, shares)
    expected = (1 - shares.sum(-1, keepdim=True)) * logits.softmax(-1) + memory
    torch.testing.assert_close(mixed, expected)
    # The training loss takes the same mixture at the labels alone.
    labels = torch.randint(0, 11, (3, 4), generator=generator)
    labels[0, :2] = 2
    nll = MemoryAccess.mixture_nll(logits, logits.logsumexp(-1, keepdim=True), shares, tokens, labels)
    torch.testing.assert_close(nll, -expected.gather(-1, labels[..., None]).squeeze(-1).log())


def test_a_token_reads_only_its_own_document_unless_the_scope_is_all():
    eos = tiny().hparams.eos_id
    ids = tokens(batch=2, length=16, seed=4)
    ids[1] = ids[0]  # two rows with the same text: two documents
    ids[0, 8] = eos  # row 0's first document ends at 8
    for scope, reads_other_rows in (("document", False), ("all", True)):
        model = tiny(memory_scope=scope, forget_documents=False).eval()
        model(ids[:1])  # row 0 alone writes
        with torch.no_grad():
            hidden = model.transformer(ids).last_hidden_state
            documents = model.memory.documents(ids == eos)
            readout, _ = model._read(ids, hidden, documents, None)
        read = readout.valid.any(-1)
        assert read[1].any() == reads_other_rows  # row 1 is another document
        # Row 0 goes on with the document its eos opened, which has entries; after this eos a
        # third one opens, which has none: it finds the others' only with scope all.
        assert read[0, 9:].any() == reads_other_rows
        assert read[0, :8].any()


def test_without_memory_it_is_gpt2():
    model = tiny(use_memory=False)
    assert model.memory is None and model.access is None
    config = GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    reference = GPT2LMHeadModel(config).eval()
    reference.transformer.load_state_dict(model.transformer.state_dict())
    reference.lm_head.weight = reference.transformer.wte.weight
    ids = tokens()
    torch.testing.assert_close(model.eval()(ids), reference(ids).logits)


# --- sampling protocol ------------------------------------------------------------------------------
def test_cached_decoding_matches_full_recompute():
    model = tiny().eval()
    model(tokens(seed=3))  # something to read
    ids = tokens(batch=2, length=10)
    cache = model.new_cache(2)
    steps = [model(ids[:, :6], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(6, 10)]
    assert cache.length == 10 and cache.max_len == 16
    full = model(ids)  # reads the same memory: cached passes do not write unless asked
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)
    cache.reorder(torch.tensor([1, 1]))
    assert cache.carry is None  # nothing waits: cached passes did not write
    cache.reset()
    assert cache.length == 0


def test_sampling_reads_the_memory_and_writes_only_when_asked():
    model = tiny().eval()
    model(tokens(batch=4, seed=5))
    before = model.memory_digest()
    prompt = tokens(batch=1, length=4, seed=6)[0]
    out = inference.sample(model, prompt, output_length=20, temperature=0)
    assert model.memory_digest() == before and len(out) == 20
    model.set_generation_writes(True)
    stored = size(model)
    inference.sample(model, prompt, output_length=20, temperature=0)  # slides past max_len=16 once
    # One entry per token with a context before it: 3 from the prompt, 20 generated minus the
    # last (never fed back); the re-run of the slid window completes only its newest token's.
    assert size(model) == stored + 3 + 19


# --- checkpoints ----------------------------------------------------------------------------------------
def trained(tmp_path: Path, **settings) -> tuple[MemoryGPT2, StreamDataModule]:
    data = recall_data(tmp_path)
    data.prepare_data()
    model = MemoryGPT2(vocab_size=data.vocab_size, max_len=12, n_layer=1, n_head=2, n_embd=32, memory_size=500,
                       memory_device="cpu", **settings)
    trainer(tmp_path, val_check_interval=3).fit(model, datamodule=data)
    return model, data


def test_checkpoint_carries_the_memory(tmp_path):
    model, data = trained(tmp_path)
    assert size(model) > 0
    path = tmp_path / "memory.ckpt"
    model.trainer.save_checkpoint(path)
    assert "memory._extra_state" in torch.load(path, weights_only=True)["state_dict"]
    restored = MemoryGPT2.load_from_checkpoint(path, weights_only=True)
    assert restored.memory_digest() == model.memory_digest()
    probes = torch.randn(7, restored.access.entry_dim, generator=torch.Generator().manual_seed(0))
    a, b = model.memory.search(probes, 5), restored.memory.search(probes, 5)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.vectors, b.vectors)
    ids = tokens(batch=2, length=12) % data.vocab_size
    torch.testing.assert_close(restored.eval()(ids), model.eval()(ids))


def test_resuming_mid_epoch_keeps_the_memory_and_a_new_epoch_empties_it(tmp_path):
    data = recall_data(tmp_path)
    path, saved, resumed_with = tmp_path / "resume.ckpt", [], []

    class SaveAtStep4(L.Callback):  # a mid-epoch checkpoint, as ModelCheckpoint writes them
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 4 and not saved:
                trainer.save_checkpoint(path)
                saved.append((pl_module.memory_digest(), size(pl_module)))

    class FirstBatch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if not resumed_with:
                resumed_with.append((pl_module.memory_digest(), size(pl_module)))

    settings = dict(max_len=12, n_layer=1, n_head=2, n_embd=32, memory_size=500, memory_device="cpu")
    data.prepare_data()
    trainer(tmp_path, callbacks=[SaveAtStep4()]).fit(MemoryGPT2(vocab_size=data.vocab_size, **settings), datamodule=data)
    resumed = MemoryGPT2.load_from_checkpoint(path, weights_only=True)
    trainer(tmp_path, callbacks=[FirstBatch()]).fit(resumed, datamodule=data, ckpt_path=path)
    assert resumed_with == saved and saved[0][1] > 0
    resumed.memory.epoch = resumed.current_epoch - 1  # as if the memory were written in the epoch before
    resumed.on_train_epoch_start()
    assert size(resumed) == 0


def test_a_checkpoint_with_another_memory_is_a_clear_error(tmp_path):
    model, _ = trained(tmp_path)
    other = MemoryGPT2(**{**model.hparams, "memory_size": 501})
    with pytest.raises(XLabError, match="memory does not fit this model: .*memory_size=500"):
        other.load_state_dict(model.state_dict())


def test_export_carries_the_memory_and_infer_can_keep_writing(tmp_path, capsys):
    from xlab.interop.describe import describe
    from xlab.interop.export import export_checkpoint_, load

    model, data = trained(tmp_path)
    path = tmp_path / "memory.ckpt"
    model.trainer.save_checkpoint(path)
    out = export_checkpoint_(path, tmp_path / "export")
    loaded = load(out).model
    assert loaded.memory_digest() == model.memory_digest()
    assert describe(out)["memory_entries"] == describe(path)["memory_entries"] == size(model) > 0
    stored = size(model)
    ids = tokens(batch=2, length=12) % data.vocab_size
    torch.testing.assert_close(loaded(ids), model.eval()(ids))  # both read, then write, the same
    assert describe(out)["parameters"] == describe(path)["parameters"]
    empty = export_checkpoint_(path, tmp_path / "empty", keep_memory=False)
    assert size(load(empty).model) == 0

    infer = load_script("infer")
    assert infer.main([str(out), "k", "--limit", "4", "--greedy"]) == 0
    assert f"memory {stored:,} entries (+0)" in capsys.readouterr().err
    assert infer.main([str(out), "k", "--limit", "4", "--greedy", "--memory-writes"]) == 0
    assert f"memory {stored + 4:,} entries (+4)" in capsys.readouterr().err


def test_validation_starts_empty_and_leaves_the_training_memory_alone(tmp_path):
    model, data = trained(tmp_path)
    before = model.memory_digest()
    seen = []

    class FirstBatch(L.Callback):
        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen.append(size(pl_module))

    metrics = trainer(tmp_path, callbacks=[FirstBatch()]).validate(model, datamodule=data, verbose=False)[0]
    assert seen[0] == 0 and seen[1] > 0  # fresh, then filled by the validation documents
    assert model.memory_digest() == before

    # The accuracy is the share of answer tokens predicted right, counted by hand over the same
    # two batches, read and written in the same order from an empty memory.
    model.eval()
    model.memory.set_aside()
    correct = answers = 0
    with torch.no_grad():
        for batch, _ in zip(data.val_dataloader(), range(2)):
            hits = model.batch_logits(batch).argmax(-1) == batch["labels"]
            mask = batch["answer_mask"].bool() & (batch["labels"] != -100)
            correct, answers = correct + int((hits & mask).sum()), answers + int(mask.sum())
    model.memory.put_back()
    assert answers > 0 and model.memory_digest() == before
    assert metrics["val/answer_accuracy"] == pytest.approx(correct / answers, abs=1e-6)


def test_training_logs_the_memory_telemetry_every_n_steps(tmp_path):
    data = recall_data(tmp_path)
    data.prepare_data()
    steps, shapes = [], []

    class Record(L.Callback):  # what the model measured at each training step
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.before = size(pl_module)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            measured = {name: float(value) for name, value in pl_module.telemetry.items()}
            logged = {name: float(v) for name, v in trainer.callback_metrics.items() if name.startswith("memory/")}
            steps.append((measured, size(pl_module), logged))
            shapes.append((batch["input_ids"].shape, self.before))

    model = MemoryGPT2(vocab_size=data.vocab_size, max_len=12, n_layer=1, n_head=2, n_embd=32, memory_size=500,
                       memory_device="cpu", forget_documents=False)  # kept, so that it only fills up
    trainer(tmp_path, callbacks=[Record()], log_every_n_steps=2).fit(model, datamodule=data)
    names = {"occupancy", "store_rate", "delete_rate", "hit_rate", "mean_age", "reliance", "store_probability"}
    assert len(steps) == 6
    # The store gate starts at zero weights: every proposal's probability is sigmoid(store_init).
    assert steps[0][0]["store_probability"] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), rel=1e-6)
    for step, (telemetry, entries, logged) in enumerate(steps):
        assert set(telemetry) == names
        assert telemetry["occupancy"] == pytest.approx(entries / 500) and entries > 0
        # Every token proposes the entry it completes (the first pass: all but each row's first);
        # the store rate is the share of them stored, and what was stored is what the memory gained,
        # less what the delete votes removed (the memory never fills: nothing is evicted).
        (rows, length), before = shapes[step]
        proposals = rows * length - (rows if step == 0 else 0)
        stored = telemetry["store_rate"] * proposals
        assert stored == pytest.approx(round(stored), abs=1e-4) and entries < 500
        assert entries - before <= round(stored)
        if telemetry["delete_rate"] == 0:
            assert entries - before == round(stored), step
        if step % 2 == 0:  # not a logging step: nothing new reached the logger
            assert logged == (steps[step - 1][2] if step else {})
            continue
        for name in names:  # the means of the two passes since the last log; the memory's state now
            now, before = telemetry[name], steps[step - 1][0][name]
            want = now if name in ("occupancy", "mean_age") else (before + now) / 2
            assert float(logged[f"memory/{name}"]) == pytest.approx(want, rel=1e-6), name
    assert [entries for _, entries, _ in steps] == sorted(entries for _, entries, _ in steps)  # it fills up
    assert steps[-1][0]["hit_rate"] > 0  # later steps find what earlier ones wrote


def test_telemetry_measures_what_its_names_say():
    ids = tokens()
    proposals = ids.numel() - ids.shape[0]
    for init in (-1.0, 1.5):
        # The store gate's weights start at zero, so every proposal's store probability is the
        # sigmoid of store_init; evaluation stores the proposals above 0.5.
        model = tiny(store_init=init).eval()
        model(ids)
        opened = init > 0
        assert model.telemetry["store_probability"] == pytest.approx(torch.sigmoid(torch.tensor(init)).item())
        assert model.telemetry["store_rate"] == (1.0 if opened else 0.0)
        assert size(model) == (proposals if opened else 0)
        assert model.telemetry["occupancy"] == size(model) / 256
    model = tiny(delete_init=-20.0).train()  # stores everything, deletes nothing
    for seed in range(3):
        model(tokens(seed=seed))
    # Each training pass ages what was there before writing: ages 2, 1 and 0; the later passes
    # also complete the entry each row left waiting.
    groups = [proposals, proposals + 2, proposals + 2]
    assert size(model) == sum(groups)
    assert model.telemetry["mean_age"] == pytest.approx((2 * groups[0] + groups[1]) / sum(groups))
    assert model.telemetry["delete_rate"] == 0.0
    model.eval()(tokens(seed=0))  # evaluation writes without ageing: a fourth group, of age 0
    assert size(model) == sum(groups) + proposals + 2
    assert model.telemetry["mean_age"] == pytest.approx((2 * groups[0] + groups[1]) / (sum(groups) + proposals + 2))


# --- what the scripts ask of the model -------------------------------------------------------------
def test_state_summary_and_clear_state_speak_for_the_memory():
    model = tiny().eval()
    assert model.state_summary() == {"memory_entries": 0}
    model(tokens())
    model(tokens())  # casts delete votes on what it read
    assert len(model.memory.open_ids) > 0  # no eos yet: every entry still belongs to an open document
    assert model.state_summary() == {"memory_entries": size(model)} and size(model) > 0
    assert model.memory.pending is not None
    next_id = int(model.memory.entries.state_dict()["next_id"])
    model.clear_state()
    assert model.state_summary() == {"memory_entries": 0}
    assert model.memory.pending is None and model.memory.open_documents == {}
    assert model.memory.carry is None and len(model.memory.rows) == 0
    assert model.memory.add(torch.zeros(1, model.access.entry_dim), age=False).tolist() == [next_id]
    baseline = tiny(use_memory=False)
    assert baseline.state_summary() == {}
    baseline.clear_state()  # nothing to clear, and no error


def test_generation_writes_need_a_memory():
    baseline = tiny(use_memory=False)
    baseline.set_generation_writes(False)
    # infer.py puts the reason into its --memory-writes message (tests/test_scripts.py).
    with pytest.raises(XLabError, match=r"^trained with use_memory: false$"):
        baseline.set_generation_writes(True)


# --- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("settings, message", [
    ({"memory_dim": 33}, "memory_dim=33 must be even"),
    ({"memory_size": 0}, "num_search_results=5 exceeds memory_size=0"),
    ({"memory_size": 3}, "num_search_results=5 exceeds memory_size=3"),
    ({"index_type": "ivf", "num_clusters": 300}, "num_clusters <= memory_size"),
    ({"index_type": "IVF8,Nonsense"}, "unknown index_type"),
    ({"n_embd": 30, "n_head": 4}, "not divisible"),
])
def test_bad_settings_are_one_line_errors(settings, message):
    with pytest.raises(XLabError, match=message):
        tiny(**settings)


def test_any_even_memory_dim_is_projected_and_small_memories_still_answer():
    # k = 5 with a single stored entry, and an ivf index that has far fewer entries than
    # clusters: both search what there is (the ivf index exactly, until it can be trained).
    for settings in ({"memory_dim": 10}, {"index_type": "ivf", "num_clusters": 64, "memory_dim": 200}):
        model = tiny(**settings).eval()
        model(torch.tensor([[5, 6]]))
        assert size(model) == 1
        logits = model(torch.tensor([[5, 7, 9]]))
        assert torch.isfinite(logits).all() and model.telemetry["hit_rate"] > 0


def test_pretrained_gpt2_directory(tmp_path):
    config = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    GPT2Model(config).save_pretrained(tmp_path / "gpt2")
    model = tiny(pretrained_path=str(tmp_path / "gpt2"))
    saved = GPT2Model.from_pretrained(tmp_path / "gpt2")
    torch.testing.assert_close(model.transformer.h[1].mlp.c_fc.weight, saved.h[1].mlp.c_fc.weight)
    torch.testing.assert_close(model.transformer.wpe.weight, saved.wpe.weight[:16])
    rebuilt = MemoryGPT2(**{**model.hparams, "pretrained_path": None})
    rebuilt.load_state_dict(model.state_dict())  # a checkpoint does not need the directory
    with pytest.raises(XLabError, match="n_layer=2.*n_layer=3"):
        tiny(pretrained_path=str(tmp_path / "gpt2"), n_layer=3)
    with pytest.raises(XLabError, match="not a GPT-2 directory"):
        tiny(pretrained_path=str(tmp_path / "missing"))


# --- evidence and DDP ------------------------------------------------------------------------------------
def test_memory_beats_no_memory_on_the_recall_task(tmp_path):
    bench = load_script("bench/memory_recall")
    on = bench.recall_run(True, str(tmp_path / "cache"), steps=500)
    off = bench.recall_run(False, str(tmp_path / "cache"), steps=500)
    assert off["answer_accuracy"] < 0.15  # chance is 1/16: the questions are out of the context's reach
    assert on["answer_accuracy"] > off["answer_accuracy"] + 0.5
    assert on["loss"] < off["loss"] - 0.1


def reading_of(state: dict) -> dict:
    """A rank's own part of a memory state: its rows' documents, waiting entries and open documents."""
    return {"rows": state["rows"].tolist(), "next_serial": int(state["next_serial"]),
            "carry": digest(state["carry"]) if "carry" in state else None,
            "open": state["open_ids"].tolist() if "open_ids" in state else []}


class MemoryDigest(L.Callback):
    """Test-only: each rank writes the fingerprint of the memory it ends training with, and the
    reading state it starts a resumed run with."""

    def __init__(self, folder: str):
        self.folder = folder

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.ckpt_path:
            reading = reading_of(pl_module.memory.get_extra_state())
            Path(self.folder, f"resumed{trainer.global_rank}.json").write_text(json.dumps(reading))

    def on_train_end(self, trainer, pl_module) -> None:
        record = {"digest": pl_module.memory_digest(), "size": len(pl_module.memory.entries),
                  "adds": pl_module.memory.entries.stats()["adds"],
                  "reading": reading_of(pl_module.memory.get_extra_state())}
        Path(self.folder, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def test_ddp_ranks_hold_the_same_memory_as_the_checkpoint(tmp_path):
    source = {"kind": "recall", "documents": 400, "facts": 4, "keys": 64, "values": 8, "seed": 0}
    vocab = RecallSource(**{k: v for k, v in source.items() if k != "kind"}).tokenizer_vocab_size()
    callbacks = [{"class_path": "tests.memory.test_model.MemoryDigest", "init_args": {"folder": str(tmp_path)}}]
    args = [
        "-c", str(ROOT / "conf" / "memory.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.precision", "32-true", "--trainer.max_steps", "6", "--trainer.val_check_interval", "3",
        "--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks", json.dumps(callbacks), "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--model.init_args.n_layer", "1", "--model.init_args.n_head", "2", "--model.init_args.n_embd", "32",
        "--model.init_args.max_len", "12", "--model.init_args.dropout", "0", "--model.init_args.memory_size", "1000",
        "--model.init_args.memory_dim", "64", "--model.init_args.index_type", "flat",
        "--model.init_args.memory_device", "cpu",
        "--data.init_args.sources", json.dumps([source]), "--data.init_args.vocab_size", str(vocab),
        "--data.init_args.split_fractions", "[0.8, 0.2, 0.0, 0.0]", "--data.init_args.cache_dir", str(tmp_path / "cache"),
        "--data.init_args.batch_size", "3", "--data.init_args.eval_batch_size", "3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "xlab.py"), "fit", *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    shared = [{key: value for key, value in rank.items() if key != "reading"} for rank in ranks]
    assert shared[0] == shared[1] and ranks[0]["size"] > 0
    last = next((tmp_path / "runs").rglob("last.ckpt"))
    restored = MemoryGPT2.load_from_checkpoint(last, weights_only=True)
    assert restored.memory_digest() == ranks[0]["digest"]
    # Each rank read different blocks (3 rows of 12 tokens per step); both ranks' entries are in.
    assert ranks[0]["adds"] > 6 * 3 * 12

    # Each rank's own rows travel in the checkpoint, and a resumed rank continues with its own.
    saved = torch.load(last, weights_only=True)[READING_RECORD]
    assert [reading_of(state) for state in saved] == [rank["reading"] for rank in ranks]
    assert ranks[0]["reading"]["rows"] != ranks[1]["reading"]["rows"]
    assert {row % 2 for row in ranks[1]["reading"]["rows"]} == {1}  # rank 1's documents: odd numbers
    resume = [*args, "--trainer.max_steps", "7", "--ckpt_path", str(last)]
    run = subprocess.run([sys.executable, str(ROOT / "xlab.py"), "fit", *resume], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for r in range(2):
        assert json.loads((tmp_path / f"resumed{r}.json").read_text()) == ranks[r]["reading"]
