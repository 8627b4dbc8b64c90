"""xlab/retro/commands.py and xlab/retro/cli.py: `manage.py build-retrieval` reads its recipe through
the CLI's parser (-c files, --section.key overrides, the model's max_len linked into the data), -o
and --max-len stand for the data's database_dir and the model's max_len, the database it reports is
the one training then uses (in the cache where training looks, or in -o), and a recipe without a
RetroDataModule, or with a setting the data refuses, is a one-line error."""

from __future__ import annotations

import argparse
import json

import pytest

from tests.helpers import CONF, TOKENIZER_SIZE, load_script
from tests.helpers import retro_data as make
from xlab.retro.cli import COMMANDS, _overrides


@pytest.fixture(scope="module")
def manage():
    return load_script("manage")


def report(out: str) -> list[str]:
    """The command's report: its lines from "xlab: retrieval database" on (building prints progress first)."""
    lines = out.splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("xlab: retrieval database ")):]


def recipe(folder, corpus_dir, **data) -> str:
    """A RETRO recipe over the test corpus, written as a user would: shapes in YAML, the rest defaults."""
    path = folder / "retro.yaml"
    init_args = {"sources": [{"kind": "text_folder", "path": str(corpus_dir)}], "vocab_size": TOKENIZER_SIZE,
                 "chunk_size": 4, "cache_dir": str(folder / "cache"), **data}
    path.write_text(json.dumps({"model": {"class_path": "xlab.retro.RetroModel", "init_args": {"max_len": 16, "chunk_size": 4}},
                                "data": {"class_path": "xlab.retro.RetroDataModule", "init_args": init_args}}))
    return str(path)


def test_out_and_max_len_stand_for_the_recipe_settings():
    assert _overrides(argparse.Namespace(out="/db", max_len=32)) == [
        "--data.init_args.database_dir", "/db", "--model.init_args.max_len", "32"]
    assert _overrides(argparse.Namespace(out=None, max_len=None)) == []
    (command,) = COMMANDS
    assert command.name == "build-retrieval" and command.reads_config and command.overrides is _overrides


def test_manage_build_retrieval_then_train_with_it(corpus_dir, tmp_path, capsys, manage):
    out = tmp_path / "db"
    assert manage.main(["build-retrieval", "-c", recipe(tmp_path, corpus_dir), "-o", str(out)]) == 0
    printed = report(capsys.readouterr().out)
    assert "training sequences of 16 tokens" in printed[1]  # the model's max_len reached the data
    assert printed[0] == f"xlab: retrieval database {out}"
    assert printed[3] == f"train with it: --data.init_args.database_dir {out}" and len(printed) == 4
    dm = make(corpus_dir, tmp_path, database_dir=str(out))
    assert dm.database.out_dir == out and next(iter(dm.train_dataloader()))["retrieved"].shape == (4, 4, 2, 8)


def test_overrides_reach_the_database_in_the_cache_where_training_looks(corpus_dir, tmp_path, capsys, manage):
    assert manage.main(["build-retrieval", "-c", recipe(tmp_path, corpus_dir), "--max-len", "8",
                        "--data.init_args.k", "3", "--data.init_args.embedder", '{"kind": "hashed", "dim": 32}']) == 0
    printed = report(capsys.readouterr().out)
    trained = make(corpus_dir, tmp_path, max_len=8, k=3, embedder={"kind": "hashed", "dim": 32})
    db = trained.database
    sizes = db.manifest["sizes"]
    assert (db.seq_len, db.k, sizes["dim"]) == (8, 3, 32)
    assert printed[0] == f"xlab: retrieval database {db.out_dir}"  # training found the one it built
    assert printed[1] == (f"xlab:   {sizes['n_chunks']:,} chunks of 4 tokens from {sizes['n_docs']:,} documents, "
                          f"{sizes['n_seqs']:,} training sequences of 8 tokens")
    assert printed[2].startswith("xlab:   embedder hashed (dim 32), index ") and printed[2].endswith(", k=3")
    assert len(printed) == 3  # no -o: nothing more to pass to training


@pytest.mark.parametrize("arguments,message", [
    (["-c", str(CONF / "defaults.yaml")],
     "defaults.yaml does not use a RetroDataModule (data.class_path): nothing to retrieve from."),
    (["--data.init_args.chunk_size", "5"], "data chunk_size=5 must divide max_len=16"),
    (["--data.init_args.k", "0"], "data k=0 must be at least 1 neighbour per chunk."),
    (["--data.init_args.colour", "red"], "colour"),
])
def test_bad_recipes_are_one_line_errors(corpus_dir, tmp_path, capsys, manage, arguments, message):
    config = ["-c", recipe(tmp_path, corpus_dir)] if arguments[0] != "-c" else []
    with pytest.raises(SystemExit) as exit_:
        manage.main(["build-retrieval", *config, *arguments])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and error.startswith("error: ") and len(error.strip().splitlines()) == 1, error
    assert message in error
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("manifest.json"))
