"""`manage.py inspect` (xlab/interop/describe.py): the facts of a checkpoint or an export, read from
the files alone; the last validation is the last one run, not the last that entered the top k."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import CONF, cut_short_, load_script, one_line_error, tiny
from xlab.cli import main
from xlab.interop.describe import describe


def test_the_last_validation_is_reported_even_when_it_was_not_the_best(tmp_path, corpus_dir, capsys):
    # The checkpoint keeps the highest validation loss as its best, so a loss that falls as it
    # trains leaves the last validation short of the best.
    args = ["-c", str(CONF / "defaults.yaml"), *tiny(tmp_path, [{"kind": "text_folder", "path": str(corpus_dir)}], steps=6),
            "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "2", "--checkpoint.mode", "max"]
    cli = main(["fit", *args])
    last_loss = float(cli.trainer.callback_metrics["val/loss"])
    best = float(cli.trainer.checkpoint_callback.best_model_score)
    assert last_loss < best  # the run this test needs: the last validation is not the best one
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    facts = describe(ckpt)
    assert facts["best_score"] == best and facts["current_score"] == last_loss
    assert facts["last_validation"]["val/loss"] == last_loss and "val/perplexity" in facts["last_validation"]
    capsys.readouterr()
    assert load_script("manage").main(["inspect", str(ckpt)]) == 0
    assert f"val/loss best {best:.4f}, last {last_loss:.4f}" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["model.safetensors", "generation.json", "config.json"])
@pytest.mark.parametrize("fraction", [0.0, 0.5])
def test_inspect_names_an_export_file_cut_short(tiny_export, tmp_path, capsys, name, fraction):
    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    cut_short_(export / name, fraction)
    error = one_line_error(load_script("manage").main, ["inspect", export], capsys)
    assert f"{export / name} is not" in error
    # infer.py reads the same files and names the same one.
    assert f"{export / name} is not" in one_line_error(load_script("infer").main, [export, "hi"], capsys)
