"""RetroModel: shapes, causality of the chunked cross-attention, the database identity in the
checkpoint, generation with retrieval (cached decoding equals full recomputation), the ablation margin."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from tests.helpers import load_script
from tests.helpers import retro_data as tiny_data
from tests.retro.helpers import tiny_model
from xlab import inference
from xlab.common.errors import XLabError
from xlab.interop.export import export_checkpoint_, load
from xlab.retro import RetroModel

ROOT = Path(__file__).resolve().parents[2]


def test_shapes_and_retrieval_off():
    model = tiny_model()
    ids = torch.randint(4, 60, (2, 16))
    retrieved = torch.randint(4, 60, (2, 4, 3, 8))  # any k works
    assert model(ids, retrieved).shape == (2, 16, 60)
    assert model(ids).shape == (2, 16, 60)  # retrieval off: a plain decoder
    assert not torch.allclose(model(ids, retrieved), model(ids))
    assert model(ids[:, :10], retrieved[:, :2]).shape == (2, 10, 60)  # a partial last chunk
    with pytest.raises(XLabError, match="chunk_size"):
        model(ids, torch.randint(4, 60, (2, 4, 2, 6)))
    with pytest.raises(XLabError, match="must divide max_len"):
        tiny_model(chunk_size=5)


@pytest.mark.parametrize("chunk", [0, 1, 2, 3])
def test_neighbours_of_a_chunk_never_reach_earlier_tokens(chunk):
    model = tiny_model()
    ids = torch.randint(4, 60, (2, 16))
    retrieved = torch.randint(4, 60, (2, 4, 2, 8))
    base = model(ids, retrieved)
    changed = retrieved.clone()
    changed[:, chunk] = torch.randint(4, 60, (2, 2, 8))
    diff = (model(ids, changed) - base).abs().amax(dim=(0, 2))  # (T,)
    first = (chunk + 1) * 4 - 1  # the last token of the chunk: the first one that may see its neighbours
    assert diff[:first].max() == 0
    assert diff[first] > 1e-6 and diff[first:].max() > 1e-6


def test_checkpoint_records_the_database_and_refuses_another(corpus_dir, tmp_path):
    dm = tiny_data(corpus_dir, tmp_path)
    model = tiny_model(vocab_size=dm.vocab_size).train()
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=1, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    ckpt = tmp_path / "retro.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["retro_database"] == {**dm.database.identity(), "dir": str(dm.database.out_dir)}
    exported = load(export_checkpoint_(ckpt, tmp_path / "export")).model  # an export carries the record too
    assert {**exported.database_identity, "dir": exported.database_dir} == saved["retro_database"]

    loaded = RetroModel.load_from_checkpoint(ckpt)
    assert loaded.database is None
    prompt = torch.tensor([2, 50, 60, 70, 80])
    out = inference.sample(loaded, prompt, output_length=8, seed=0)
    assert len(out) == 8 and loaded.database is not None  # opened from the checkpoint's record
    assert loaded.database.out_dir == dm.database.out_dir
    loaded.set_database(dm.database)  # the training database: accepted, and the one opened
    assert torch.equal(inference.sample(loaded, prompt, output_length=8, seed=0), out)
    loaded.set_database(tiny_data(corpus_dir, tmp_path, k=4).database)  # only k differs: accepted
    other = tiny_data(corpus_dir, tmp_path, embedder={"kind": "hashed", "dim": 64}).database
    with pytest.raises(XLabError, match="differs from the one the model was trained with"):
        loaded.set_database(other)
    loaded.set_database(other, force=True)
    with pytest.raises(XLabError, match="force_database"):
        L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, limit_val_batches=1,
                  enable_model_summary=False).validate(
            loaded, datamodule=tiny_data(corpus_dir, tmp_path, embedder={"kind": "hashed", "dim": 64}))


def test_generation_retrieves_at_chunk_boundaries(corpus_dir, tmp_path):
    dm = tiny_data(corpus_dir, tmp_path)
    model = tiny_model(vocab_size=dm.vocab_size)
    model.set_database(dm.database)
    ids = torch.as_tensor(np.asarray(dm.tokens["val"][:16], dtype=np.int64))[None]  # (1, 16)
    retrieved = torch.from_numpy(dm.database.search(ids.reshape(4, 4).numpy()).astype(np.int64))[None]
    with torch.no_grad():
        full = model(ids, retrieved)  # no cache: the batch's neighbours
        cache = model.new_cache(1)
        steps = [model(ids[:, :6], cache=cache)]  # prefill, then one token at a time
        steps += [model(ids[:, t:t + 1], cache=cache) for t in range(6, 16)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
    assert sorted(cache.encoded) == [0, 1, 2, 3]



def greedy_by_recomputation(model: RetroModel, database, prompt: torch.Tensor, steps: int) -> list[int]:
    """Greedy decoding the slow, obvious way: the whole sequence every step, with the database's
    neighbours of every finished chunk."""
    sequence, new = prompt.clone(), []
    with torch.no_grad():
        for _ in range(steps):
            n = len(sequence) // model.chunk_size
            found = None
            if n:
                chunks = sequence[: n * model.chunk_size].reshape(n, model.chunk_size).numpy()
                found = torch.from_numpy(database.search(chunks).astype(np.int64))[None]  # (1, n, k, 2L)
            token = model(sequence[None], found)[0, -1].argmax()
            new.append(int(token))
            sequence = torch.cat([sequence, token[None]])
    return new


def test_generation_equals_greedy_recomputation_and_stops_at_eos(corpus_dir, tmp_path):
    dm = tiny_data(corpus_dir, tmp_path)
    model = tiny_model(vocab_size=dm.vocab_size)
    with torch.no_grad():  # decisive, varied logits: greedy choices are no near-ties that rounding could flip
        for name, param in model.named_parameters():
            if param.dim() > 1 and name != "wte.weight":
                param.mul_(20)
    model.set_database(dm.database)
    prompt = torch.as_tensor(np.asarray(dm.tokens["val"][:3], dtype=np.int64))
    reference = greedy_by_recomputation(model, dm.database, prompt, 12)
    assert inference.sample(model, prompt, output_length=12, temperature=0).tolist() == reference  # no eos: all 12

    # eos ends the sequence and is not part of it
    stop = next(i for i in range(1, 12) if reference[i] not in reference[:i])
    assert inference.sample(model, prompt, output_length=12, temperature=0, eos_class=reference[stop]).tolist() \
        == reference[:stop]
    sampled = inference.sample(model, prompt, output_length=12, seed=0)
    assert len(sampled) == 12 and torch.equal(inference.sample(model, prompt, output_length=12, seed=0), sampled)


def test_ablation_margin():
    """bench/retro_ablation.py, small: real neighbours beat random ones and a plain decoder."""
    bench = load_script("bench/retro_ablation")
    # The thread count changes the order of float sums: one thread, so the machine does not decide.
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        losses = bench.run(bench.SMALL)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    assert losses["retro_neighbours"] < losses["retro_random"] - 1.0
    assert losses["retro_neighbours"] < losses["xlab_decoder"] - 1.0


def test_ablations_from_the_command_line(corpus_dir, tmp_path, capsys):
    from tests.helpers import tiny
    from xlab.cli import main

    args = ["fit", "-c", str(ROOT / "conf" / "retro.yaml"),
            *tiny(tmp_path, [{"kind": "text_folder", "path": str(corpus_dir)}], steps=2),
            "--model.init_args.chunk_size", "4", "--data.init_args.chunk_size", "4"]
    for ablation in (["--data.init_args.retrieval", "off"], ["--data.init_args.retrieval", "random"],
                     ["--data.init_args.k", "4"]):
        cli = main([*args, *ablation])
        assert cli.trainer.global_step == 2 and torch.isfinite(cli.trainer.callback_metrics["val/loss"])
    with pytest.raises(SystemExit):
        main([*args, "--model.init_args.chunk_size", "8"])
    assert "chunk_size" in capsys.readouterr().err
