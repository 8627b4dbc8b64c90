"""The real CLI, in-process, end to end: every recipe in conf/ shrunk to a tiny model on local data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import pytest
import torch
import yaml

from tests.helpers import CONF, load_script, tiny, write_dialogue_episodes
from xlab.cli import main

# finetune-gpt2.yaml, dialogue-gpt2.yaml and finetune.yaml need a pretrained folder, retro-fit.yaml
# a trained decoder (tests/interop/test_finetune.py, tests/dialogue/test_gpt2.py and the README's
# quick starts in tests/test_docs.py run them end to end on one); caption recipes need image data
# and a caption model (tests/captions/test_recipes.py runs them).
RECIPES = sorted(p.name for p in CONF.glob("*.yaml")
                 if p.name not in ("finetune-gpt2.yaml", "dialogue-gpt2.yaml", "finetune.yaml", "retro-fit.yaml")
                 and not p.name.startswith("caption"))


def local_wikitext(tmp_path: Path, corpus_dir: Path) -> Path:
    rows = []
    for i, file in enumerate(sorted(corpus_dir.glob("*.txt"))):
        rows += [f" = Article {i} = \n", *[line + "\n" for line in file.read_text().splitlines()]]
    path = tmp_path / "wikitext-local"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": rows})}).save_to_disk(str(path))
    return path


def sources_for(recipe: str, tmp_path: Path, corpus_dir: Path) -> list[dict] | None:
    """The recipe's own source kind, pointed at local data the test writes (None: its data reads
    no text corpus)."""
    data = yaml.safe_load((CONF / recipe).read_text())["data"]["init_args"]
    if "sources" not in data:
        return None
    source = (data.get("sources") or [{"kind": None}])[0]
    if source["kind"] == "huggingface":
        group = source.get("group", "row")
        return [{**source, "name": None, "path": str(local_wikitext(tmp_path, corpus_dir)), "split": "train",
                 "group": "wikitext_articles", "id_field": None} if group == "wikitext_articles" else
                {"kind": "huggingface", "path": str(local_wikitext(tmp_path, corpus_dir)), "split": "train"}]
    return [{"kind": "text_folder", "path": str(corpus_dir)}]


def last_checkpoint(tmp_path: Path) -> Path:
    found = sorted((tmp_path / "runs").rglob("last.ckpt"))
    assert found, "fit wrote no last.ckpt"
    return found[-1]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_end_to_end(recipe, tmp_path, corpus_dir, capsys):
    args = ["-c", str(CONF / recipe), *tiny(tmp_path, sources_for(recipe, tmp_path, corpus_dir))]
    if "chunk_size" in yaml.safe_load((CONF / recipe).read_text())["model"]["init_args"]:  # RETRO: chunks fit max_len 16
        args += ["--model.init_args.chunk_size", "4", "--data.init_args.chunk_size", "4",
                 "--model.init_args.dec_cross_attn_layers", "null"]  # the one layer of the tiny model
    if "eval_batch_size" in yaml.safe_load((CONF / recipe).read_text())["data"]["init_args"]:
        # memory.yaml's 8 test streams need 8 x 17 tokens; the tiny test split has ~130, give or take a
        # few between tokenizer builds: 4 streams leave room.
        args += ["--data.init_args.eval_batch_size", "4"]
    if "episodes" in yaml.safe_load((CONF / recipe).read_text())["data"]["init_args"]:  # dialogue: an episode file
        args += ["--data.init_args.episodes", json.dumps([str(write_dialogue_episodes(tmp_path / "talks.jsonl"))])]
    cli = main(["fit", *args])
    assert cli.trainer.global_step == 4
    ckpt = last_checkpoint(tmp_path)
    assert (ckpt.parent.parent / "config.yaml").exists()
    assert list(ckpt.parent.parent.glob("events.out.tfevents.*")), "no TensorBoard events"
    out = capsys.readouterr().out
    assert "xlab: checkpoints in" in out and "unigram baseline" in out

    if 0 in (yaml.safe_load((CONF / recipe).read_text())["data"]["init_args"].get("split_fractions") or []):
        args += ["--data.init_args.split_fractions", "[0.85, 0.05, 0.05, 0.05]"]  # a recipe may keep no test split
    for stage in ("validate", "test"):
        cli = main([stage, *args, "--ckpt_path", str(ckpt)])
        prefix = "val" if stage == "validate" else "test"
        metrics = cli.trainer.callback_metrics
        for name in ("loss", "accuracy", "perplexity", "bpb"):
            assert torch.isfinite(metrics[f"{prefix}/{name}"])
        assert torch.allclose(metrics[f"{prefix}/perplexity"], metrics[f"{prefix}/loss"].exp(), rtol=1e-4)

    output = tmp_path / "scores.jsonl"
    main(["predict", *args, "--ckpt_path", str(ckpt), "--predictions.output_path", str(output)])
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert rows and all(row["tokens"] > 0 and row["loss"] > 0 for row in rows)
    assert len(rows) == len(cli.datamodule.document_ids("predict"))


def test_validate_from_checkpoint_alone_matches_fit(tmp_path, corpus_dir):
    args = tiny(tmp_path, [{"kind": "text_folder", "path": str(corpus_dir)}], steps=4)
    fit = main(["fit", "-c", str(CONF / "defaults.yaml"), *args, "--trainer.limit_val_batches", "1.0"])
    fit_loss = fit.trainer.callback_metrics["val/loss"]
    # No -c: the model and the data settings come from the checkpoint.
    again = main(["validate", "--ckpt_path", str(last_checkpoint(tmp_path)), "--trainer.enable_progress_bar", "false",
                  "--trainer.callbacks", "[]", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    assert again.model.hparams.n_embd == 32
    torch.testing.assert_close(again.trainer.callback_metrics["val/loss"], fit_loss)
    # Data settings on the command line still win over the checkpoint's.
    smaller = main(["validate", "--ckpt_path", str(last_checkpoint(tmp_path)), "--data.init_args.eval_batch_size=1",
                    "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
                    "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    assert smaller.datamodule.eval_batch_size == 1 and smaller.datamodule.hparams.vocab_size == fit.datamodule.hparams.vocab_size


def test_resume_continues_from_the_saved_step(tmp_path, corpus_dir):
    args = ["-c", str(CONF / "defaults.yaml"), *tiny(tmp_path, [{"kind": "text_folder", "path": str(corpus_dir)}])]
    first = main(["fit", *args, "--trainer.max_steps", "5", "--trainer.val_check_interval", "2"])
    ckpt = last_checkpoint(tmp_path)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == 5  # the last step, although validation last ran at step 4
    assert saved["XLabDataModule"]["tokenizer_model"] == first.datamodule.tokenizer.to_bytes()
    resumed = main(["fit", *args, "--trainer.max_steps", "8", "--ckpt_path", str(ckpt)])
    assert resumed.trainer.global_step == 8
    assert resumed.trainer.lr_scheduler_configs[0].scheduler.last_epoch == 8


def test_defaults_used_without_config(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["class_path"] == "xlab.models.XLabModel"
    assert config["data"]["init_args"]["sources"] == [{"kind": "embedded"}]


@pytest.mark.parametrize("args, message", [
    (["fit", "--model.init_args.n_layerz", "2"], "n_layerz"),
    (["fit", "--model.init_args.n_layer", "two"], "n_layer"),
    (["validate", "--ckpt_path", "/no/such.ckpt"], "does not exist"),
    (["fit", "-c", "/no/such.yaml"], "does not exist"),
    (["fit", "--data.init_args.sources", "[{kind: text_folder, path: /no/such/folder}]"], "does not exist"),
])
def test_bad_arguments_are_short_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("error:") and len(err.splitlines()) == 1


def test_unknown_key_in_a_config_file_is_named(tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text((CONF / "defaults.yaml").read_text().replace("n_layer: 4", "n_layers: 4"))
    with pytest.raises(SystemExit):
        main(["fit", "-c", str(config)])
    err = capsys.readouterr().err.strip()
    assert "n_layers" in err and len(err.splitlines()) == 1


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit):
        main(["validate", "--ckpt_path", str(bad)])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not a readable PyTorch checkpoint" in err and len(err.splitlines()) == 1


def test_validate_reads_the_checkpoint_once(tmp_path, corpus_dir, monkeypatch):
    args = tiny(tmp_path, [{"kind": "text_folder", "path": str(corpus_dir)}], steps=2)
    main(["fit", "-c", str(CONF / "defaults.yaml"), *args])
    ckpt = last_checkpoint(tmp_path)
    reads = []
    load = torch.load

    def counting_load(f, *a, **kw):
        if isinstance(f, (str, Path)) and Path(f).resolve() == ckpt.resolve():
            reads.append(f)
        return load(f, *a, **kw)

    monkeypatch.setattr(torch, "load", counting_load)
    cli = main(["validate", "--ckpt_path", str(ckpt), "--trainer.enable_progress_bar", "false",
                "--trainer.callbacks", "[]", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])  # the weights were restored from it
    assert len(reads) == 1


def test_no_run_config_is_saved_without_a_logger(tmp_path, corpus_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where Lightning would put it: its log_dir falls back to the cwd
    args = tiny(tmp_path, [{"kind": "text_folder", "path": str(corpus_dir)}], steps=2)
    args = [a for a in args if "logger" not in a and a != str(tmp_path / "runs")]
    cli = main(["fit", "-c", str(CONF / "defaults.yaml"), *args, "--trainer.logger", "false",
                "--checkpoint.dirpath", str(tmp_path / "ckpts")])
    assert cli.trainer.global_step == 2 and (tmp_path / "ckpts" / "last.ckpt").exists()
    assert not list(tmp_path.rglob("config.yaml"))


def retro_checkpoint(tmp_path: Path, corpus_dir: Path) -> tuple[Path, list[str], Path]:
    args = ["-c", str(CONF / "retro.yaml"), *tiny(tmp_path, [{"kind": "text_folder", "path": str(corpus_dir)}], steps=2),
            "--model.init_args.chunk_size", "4", "--data.init_args.chunk_size", "4", "--model.init_args.n_layer", "2"]
    fit = main(["fit", *args])
    return last_checkpoint(tmp_path), args, fit.datamodule.database.out_dir


def test_a_checkpoint_alone_takes_its_own_data_settings_from_the_command_line(tmp_path, corpus_dir):
    """Without -c, data keys of the checkpoint's data class (a RETRO database_dir) are accepted, and
    model keys given on the command line (force_database) win over the checkpoint's."""
    ckpt, args, database = retro_checkpoint(tmp_path, corpus_dir)
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
             "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    again = main(["validate", "--ckpt_path", str(ckpt), "--data.init_args.database_dir", str(database), *quiet])
    assert again.datamodule.database.out_dir == database and torch.isfinite(again.trainer.callback_metrics["val/loss"])

    other = ["--data.init_args.embedder", "{kind: hashed, dim: 64}"]  # another database than the checkpoint's
    with pytest.raises(SystemExit):
        main(["validate", *args, "--ckpt_path", str(ckpt), *other])
    forced = main(["validate", *args, "--ckpt_path", str(ckpt), *other, "--model.init_args.force_database", "true"])
    assert forced.model.hparams.force_database and forced.datamodule.database.out_dir != database


def test_prepare_data_builds_what_fit_then_only_opens(tmp_path, corpus_dir, capsys):
    manage = load_script("manage")
    args = tiny(tmp_path, [{"kind": "text_folder", "path": str(corpus_dir)}], steps=2)
    data_args = [a for i, a in enumerate(args) if a.startswith("--data.") or (i and args[i - 1].startswith("--data."))]
    model_args = ["--model.init_args.max_len", "16"]
    assert manage.main(["prepare-data", "-c", str(CONF / "defaults.yaml"), *data_args, *model_args]) == 0
    out = capsys.readouterr().out
    assert "building the corpus cache" in out and re.search(r"xlab: train +\d+", out) and "ready:" in out
    main(["fit", "-c", str(CONF / "defaults.yaml"), *args])
    assert "building the corpus cache" not in capsys.readouterr().out  # fit found it built
    assert manage.main(["prepare-data", "-c", str(CONF / "defaults.yaml"), *data_args, *model_args]) == 0
    again = capsys.readouterr().out
    assert "building" not in again and re.search(r"xlab: val +\d+", again)  # the table, from the cache
