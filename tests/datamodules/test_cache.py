"""xlab/datamodules/cache.py: a cache folder is built once, keyed by its settings, and never trusted half-built."""

import json
import shutil

import pytest
import torch

from tests.helpers import cut_short_, one_line_error, write_corpus
from tests.helpers import xlab_data as make
from xlab.cli import main


def test_cache_is_reused_then_rebuilt_when_a_setting_changes(corpus_dir, tmp_path, monkeypatch):
    first = make(corpus_dir, tmp_path)
    first.prepare_data()
    meta = first.cache_folder / "meta.json"
    stamp = meta.stat().st_mtime_ns
    again = make(corpus_dir, tmp_path)
    again.prepare_data()
    assert again.cache_folder == first.cache_folder and meta.stat().st_mtime_ns == stamp
    # Batch size and block size do not change the cache; the vocabulary and the sources do.
    assert make(corpus_dir, tmp_path, batch_size=8, max_len=8).cache_folder == first.cache_folder
    assert make(corpus_dir, tmp_path, vocab_size=420).cache_folder != first.cache_folder
    (corpus_dir.parent / "grown").mkdir()
    grown = write_corpus(corpus_dir.parent / "grown", documents=201)
    assert make(grown, tmp_path).cache_folder != first.cache_folder
    monkeypatch.setenv("REPROCESS", "1")
    rebuilt = make(corpus_dir, tmp_path)
    rebuilt.prepare_data()
    assert meta.stat().st_mtime_ns != stamp


def test_interrupted_build_leaves_nothing_trusted(corpus_dir, tmp_path, monkeypatch):
    dm = make(corpus_dir, tmp_path)
    calls = {"n": 0}

    class Interrupted(Exception):
        pass

    real_iter = type(dm.sources[0]).__iter__

    def dying_iter(self):
        for i, doc in enumerate(real_iter(self)):
            calls["n"] += 1
            if calls["n"] > 250:  # in the second pass, while encoding
                raise Interrupted
            yield doc

    monkeypatch.setattr(type(dm.sources[0]), "__iter__", dying_iter)
    with pytest.raises(Interrupted):
        dm.prepare_data()
    assert not dm.cache_folder.exists()
    assert not list(dm.cache_folder.parent.glob("*.tmp-*"))
    monkeypatch.setattr(type(dm.sources[0]), "__iter__", real_iter)
    fresh = make(corpus_dir, tmp_path)
    fresh.setup()
    assert json.loads((fresh.cache_folder / "meta.json").read_text())["splits"]["train"]["documents"] > 150


@pytest.mark.parametrize("name", ["val.bin", "meta.json", "tokenizer.model", "val.offsets.npy"])
def test_a_cache_file_cut_short_is_refused_until_reprocessed(cli_checkpoint, tmp_path, capsys, name):
    """A finished cache whose file was cut short since (a copy, a sync, a full disk) is never read as
    it is: validate names the file and the fix, and the fix works."""
    cache = tmp_path / "cache"
    shutil.copytree(cli_checkpoint.parents[4] / "cache", cache)
    cut_short_(next(cache.glob(f"corpus/*/{name}")), 0.5)
    args = ["validate", "--ckpt_path", cli_checkpoint, "--data.init_args.cache_dir", cache,
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]"]
    error = one_line_error(main, args, capsys)
    assert "is damaged" in error and name in error and "--data.init_args.reprocess true" in error
    cli = main([str(a) for a in args] + ["--data.init_args.reprocess", "true"])
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
