"""RetroDataModule: batch shapes, no same-document neighbours, cache reuse, ablations, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import retro_data as make
from xlab.common.errors import XLabError
from xlab.common.tokenizer import IGNORE_INDEX
from xlab.retro.datamodule import RetroDataModule


def test_batches_carry_chunked_neighbours(corpus_dir, tmp_path):
    dm = make(corpus_dir, tmp_path)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        batch = next(iter(loader))
        B, T = batch["input_ids"].shape
        assert batch["labels"].shape == (B, T) and batch["num_bytes"].shape == (B,)
        assert batch["retrieved"].shape == (B, T // 4, 2, 8)
    train = next(iter(dm.train_dataloader()))
    valid = train["labels"] != IGNORE_INDEX
    assert (train["labels"][:, :-1][valid[:, :-1]] == train["input_ids"][:, 1:][valid[:, :-1]]).all()
    assert (train["num_bytes"] > 0).all()


def test_training_neighbours_never_come_from_the_same_document(corpus_dir, tmp_path):
    dm = make(corpus_dir, tmp_path)
    db, data = dm.database, dm._dataset("train")
    m = 16 // 4
    for i in range(0, len(data), 7):
        start = int(db.seq_starts[i])
        ids = db.neighbour_ids(np.arange(start, start + m))
        assert (ids >= 0).any()
        own = db.chunk_doc_ids[start]
        assert (db.chunk_doc_ids[start:start + m] == own).all()  # a sequence stays inside one document
        assert not (np.asarray(db.chunk_doc_ids)[ids[ids >= 0]] == own).any()
        item = data[i]
        np.testing.assert_array_equal(item["retrieved"].numpy(), db.tokens_of(ids))


def test_database_is_built_once_and_reused(corpus_dir, tmp_path, capsys):
    first = make(corpus_dir, tmp_path)
    assert "building the retrieval database" in capsys.readouterr().out
    stamp = (first.database_folder / "manifest.json").stat().st_mtime_ns
    again = make(corpus_dir, tmp_path)
    assert "building the retrieval database" not in capsys.readouterr().out
    assert again.database_folder == first.database_folder
    assert (again.database_folder / "manifest.json").stat().st_mtime_ns == stamp
    other = make(corpus_dir, tmp_path, k=1)  # a retrieval setting: another database beside it
    assert other.database_folder != first.database_folder and other.database.k == 1


def test_ablations_random_and_off(corpus_dir, tmp_path):
    real = make(corpus_dir, tmp_path)
    rand = make(corpus_dir, tmp_path, retrieval="random")
    off = make(corpus_dir, tmp_path, retrieval="off")
    a, b = real._dataset("val")[0], rand._dataset("val")[0]
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    assert b["retrieved"].shape == a["retrieved"].shape and not np.array_equal(a["retrieved"], b["retrieved"])
    assert "retrieved" not in off._dataset("val")[0] and "retrieved" not in next(iter(off.train_dataloader()))
    four = make(corpus_dir, tmp_path, k=4)
    assert next(iter(four.val_dataloader()))["retrieved"].shape[2] == 4


def test_chunk_size_must_divide_max_len(corpus_dir, tmp_path):
    with pytest.raises(XLabError, match="chunk_size=5 must divide max_len=16"):
        RetroDataModule(sources=[{"kind": "text_folder", "path": str(corpus_dir)}], max_len=16, chunk_size=5)


def test_no_training_sequence_is_a_clear_error(corpus_dir, tmp_path):
    with pytest.raises(XLabError, match="no training sequence"):
        make(corpus_dir, tmp_path, max_len=4096, chunk_size=64)


def test_more_neighbours_than_the_database_holds_is_refused_before_any_work(corpus_dir, tmp_path):
    with pytest.raises(XLabError, match=r"k=9999 neighbours per chunk can never be found in a database of [\d,]+ chunks"):
        make(corpus_dir, tmp_path, k=9999)
    assert not list((tmp_path / "cache").rglob("embeddings.npy"))  # stopped before embedding a chunk


def test_missing_neighbours_are_reported_once_with_their_count(corpus_dir, tmp_path, capsys):
    """Chunks whose candidates all come from their own document get padding for neighbours: a
    database searched with no extra candidates leaves some rows short, and says how many."""
    data = make(corpus_dir, tmp_path, k=4, num_extra_neighbors=0)
    found = data.database.manifest["neighbours"]
    out = capsys.readouterr().out
    assert found["missing_neighbours"] > 0
    assert out.count("neighbour slots in") == 1
    assert f"{found['missing_neighbours']:,} of {found['n'] * 4:,} neighbour slots" in out


def test_embedder_not_loadable_offline(corpus_dir, tmp_path):
    with pytest.raises(XLabError, match="no-such-org/no-such-bert"):
        make(corpus_dir, tmp_path, embedder={"kind": "hf", "name_or_path": "no-such-org/no-such-bert"})


def test_database_of_another_tokenizer_is_refused(corpus_dir, tmp_path):
    built = make(corpus_dir, tmp_path)
    with pytest.raises(XLabError, match="other tokens"):
        make(corpus_dir, tmp_path, vocab_size=380, database_dir=str(built.database_folder))
    same = make(corpus_dir, tmp_path, database_dir=str(built.database_folder))  # the right corpus is accepted
    assert len(same.database) == len(built.database)


def test_a_database_cut_short_is_refused_by_fit_with_the_fix(corpus_dir, tmp_path, capsys):
    import yaml

    from tests.helpers import CONF, cut_short_, load_script, one_line_error, tiny
    from xlab.cli import main

    config = tmp_path / "retro.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load((CONF / "retro.yaml").read_text()), "seed_everything": 0}))
    shrink = [*tiny(tmp_path, [{"kind": "text_folder", "path": str(corpus_dir)}], steps=1),
              "--model.init_args.chunk_size", "4", "--data.init_args.chunk_size", "4"]
    out = tmp_path / "db"
    assert load_script("manage").main(["build-retrieval", "-c", str(config), "-o", str(out), *shrink]) == 0
    cut_short_(out / "neighbours.npy", 0.5)
    error = one_line_error(main, ["fit", "-c", config, *shrink, "--data.init_args.database_dir", out], capsys)
    assert f"the retrieval database {out} is damaged (neighbours.npy holds" in error and "delete that folder" in error
