"""xlab/common/legacy.py: the module paths and class paths written before the family packages keep
working. Every old module path imports as today's module (in a fresh interpreter too), the classes
the core packages once exported are found in their families, old class paths resolve to today's
classes (and nothing outside xlab resolves), a checkpoint naming `xlab.models.RetroModel` or
`xlab.models.retro.RetroModel` and an export naming `xlab.models.CaptionModel` load with their
weights, and the CLI reads a recipe whose data is `xlab.datamodules.dialogue.DialogueDataModule`.
(tests/test_references.py trains RETRO through its old class paths against the recorded numbers.)"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT, WORDS, tiny, write_dialogue_episodes
from xlab.common.checkpoint import MODEL_CLASS_RECORD, resolve_class_path
from xlab.common.errors import XLabError
from xlab.common.legacy import ABSORBED, MOVED, absorbed, current_module
from xlab.common.tokenizer import Tokenizer
from xlab.datamodules.base import DataModule
from xlab.models import LanguageModel


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train([" ".join(WORDS[i:i + 10]) for i in range(300)], vocab_size=300)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_old_module_path_is_todays_module(old):
    assert current_module(old) == MOVED[old]
    assert importlib.import_module(old) is importlib.import_module(MOVED[old])


def test_old_imports_in_a_fresh_interpreter():
    probe = """
import sys
import xlab.datamodules.retro as old_data
from xlab.export import load as old_load
from xlab.models import MemoryGPT2
from xlab.models.caption import CaptionModel
import xlab.retro.datamodule, xlab.interop.export, xlab.memory.model, xlab.captions.model
assert old_data is sys.modules["xlab.retro.datamodule"] and old_data.RetroDataModule is xlab.retro.datamodule.RetroDataModule
assert old_load is xlab.interop.export.load
assert MemoryGPT2 is xlab.memory.model.MemoryGPT2 and CaptionModel is xlab.captions.model.CaptionModel
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_an_old_retrieval_module_imported_first_is_not_a_second_copy():
    # `xlab.retrieval` is the package `xlab.retro` now, whose folder holds index.py: the old path
    # must still give the one module, not execute the file again under its old name.
    probe = """
from xlab.retrieval.index import build_index_
from xlab.retrieval.database import RetrievalDatabase
import xlab.retro.index, xlab.retro.database
print(build_index_ is xlab.retro.index.build_index_, RetrievalDatabase is xlab.retro.database.RetrievalDatabase)
"""
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True"]


@pytest.mark.parametrize("package,name,today", [
    ("xlab.models", "MemoryGPT2", "xlab.memory.model"), ("xlab.models", "RetroModel", "xlab.retro.model"),
    ("xlab.models", "CaptionModel", "xlab.captions.model"),
    ("xlab.datamodules", "RetroDataModule", "xlab.retro.datamodule"),
    ("xlab.datamodules", "DialogueDataModule", "xlab.dialogue.datamodule"),
    ("xlab.datamodules", "CaptionDataModule", "xlab.captions.datamodule"),
])
def test_classes_the_core_packages_once_exported_come_from_their_families(package, name, today):
    found = getattr(importlib.import_module(package), name)
    assert found is getattr(importlib.import_module(today), name) and found is absorbed(package, name)
    assert package in ABSORBED


def test_a_name_no_family_holds_is_still_an_attribute_error():
    import xlab.models

    with pytest.raises(AttributeError, match="module 'xlab.models' has no attribute 'GPT5'"):
        xlab.models.GPT5  # noqa: B018
    with pytest.raises(ImportError, match="cannot import name 'Nothing' from 'xlab.datamodules'"):
        from xlab.datamodules import Nothing  # noqa: F401
    with pytest.raises(AttributeError, match="module 'xlab.memory' has no attribute 'XLabModel'"):
        absorbed("xlab.memory", "XLabModel")  # only the core packages absorbed anything


@pytest.mark.parametrize("class_path,today", [
    ("xlab.models.RetroModel", "xlab.retro.model.RetroModel"),
    ("xlab.models.retro.RetroModel", "xlab.retro.model.RetroModel"),
    ("xlab.models.MemoryGPT2", "xlab.memory.model.MemoryGPT2"),
    ("xlab.models.memory_gpt2.MemoryGPT2", "xlab.memory.model.MemoryGPT2"),
    ("xlab.models.caption.CaptionModel", "xlab.captions.model.CaptionModel"),
    ("xlab.models.CaptionModel", "xlab.captions.model.CaptionModel"),
    ("xlab.models.XLabModel", "xlab.models.xlab_model.XLabModel"),
])
def test_old_checkpoint_class_paths_resolve_to_todays_classes(class_path, today):
    module, _, name = today.rpartition(".")
    assert resolve_class_path(class_path, LanguageModel) is getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("class_path,today", [
    ("xlab.datamodules.retro.RetroDataModule", "xlab.retro.datamodule.RetroDataModule"),
    ("xlab.datamodules.dialogue.DialogueDataModule", "xlab.dialogue.datamodule.DialogueDataModule"),
    ("xlab.datamodules.datamodule.XLabDataModule", "xlab.datamodules.text.XLabDataModule"),
    ("xlab.datamodules.CaptionDataModule", "xlab.captions.datamodule.CaptionDataModule"),
])
def test_old_data_module_paths_resolve_too(class_path, today):
    module, _, name = today.rpartition(".")
    assert resolve_class_path(class_path, DataModule) is getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("class_path", ["os.system", "xlab.models.retro.Nope", "xlab.common.errors.XLabError",
                                        "xlab.models.LanguageModel", "xlabx.models.XLabModel", "xlab.retrieval.Retro"])
def test_other_paths_are_refused(class_path):
    with pytest.raises(XLabError, match=f"model class '{class_path}' is not an XLab model"):
        resolve_class_path(class_path, LanguageModel)


def retro_model():
    from xlab.retro import RetroModel

    torch.manual_seed(0)
    return RetroModel(vocab_size=300, max_len=16, n_layer=2, n_head=2, n_embd=32, chunk_size=4, enc_dim=16,
                      enc_depth=1, dec_cross_attn_layers=[1]).eval()


@pytest.mark.parametrize("record", ["cli", "model"])
@pytest.mark.parametrize("class_path", ["xlab.models.RetroModel", "xlab.models.retro.RetroModel"])
def test_a_retro_checkpoint_naming_an_old_class_path_loads(tmp_path, tokenizer, class_path, record):
    from xlab.interop.export import load
    from xlab.retro import RetroModel

    model = retro_model()
    hparams = dict(model.hparams)
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": hparams, "global_step": 3,
            "RetroDataModule": {"tokenizer_model": tokenizer.to_bytes()},
            "retro_database": {"chunk_size": 4, "dir": str(tmp_path / "gone")}}
    if record == "cli":  # LightningCLI's record, or the class the model recorded itself (built in Python)
        hparams["_class_path"] = class_path
    else:
        ckpt[MODEL_CLASS_RECORD] = class_path
    torch.save(ckpt, tmp_path / "old.ckpt")
    loaded = load(tmp_path / "old.ckpt")
    assert type(loaded.model) is RetroModel and loaded.info["class_path"] == class_path
    assert loaded.model.database_dir == str(tmp_path / "gone")  # its records were read as before
    mine, theirs = model.state_dict(), loaded.model.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert loaded.tokenizer.to_bytes() == tokenizer.to_bytes()
    with pytest.raises(XLabError, match="holds a model of class RetroModel, not XLabModel"):
        from xlab.models import XLabModel

        load(tmp_path / "old.ckpt", expected=XLabModel)


@pytest.mark.parametrize("class_path", ["xlab.models.CaptionModel", "xlab.models.caption.CaptionModel"])
def test_an_export_naming_an_old_caption_class_path_loads(tmp_path, tokenizer, class_path):
    from xlab.captions import CaptionModel
    from xlab.interop.export import SPM_TOKENIZER, load, write_export_

    torch.manual_seed(0)
    model = CaptionModel(vocab_size=300, max_len=24, n_layer=1, n_head=2, n_embd=32, image_size=16, prefix_grid=2,
                         conv_channels=8).eval()
    folder = write_export_(tmp_path / "export", model, {SPM_TOKENIZER: tokenizer.to_bytes()}, "sentencepiece", {})
    config = json.loads((folder / "config.json").read_text())
    assert config["model"]["class_path"] == "xlab.captions.CaptionModel"  # today's, as written now
    config["model"]["class_path"] = class_path
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load(folder)
    assert type(loaded.model) is CaptionModel
    mine, theirs = model.state_dict(), loaded.model.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    model.requires_grad_(False)  # as loaded models are: the convolutions then take the same kernels
    pixels = torch.randint(0, 256, (2, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(loaded.model.encode({"pixels": pixels}), model.encode({"pixels": pixels}))
        ids = torch.tensor([[2, 17, 40]])
        prefix = model.encode({"pixels": pixels[:1]})
        assert torch.equal(loaded.model.prefixed_logits(prefix, ids), model.prefixed_logits(prefix, ids))


def test_the_cli_reads_a_recipe_with_the_old_dialogue_class_path(tmp_path):
    from xlab.cli import data_module_from_config, main
    from xlab.dialogue import DialogueDataModule

    episodes = write_dialogue_episodes(tmp_path / "talks.jsonl", count=120)
    recipe = tmp_path / "old.yaml"
    recipe.write_text(json.dumps({
        "trainer": {"logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs")}}},
        "model": {"class_path": "xlab.models.XLabModel", "init_args": {"max_len": 32}},
        "data": {"class_path": "xlab.datamodules.dialogue.DialogueDataModule",
                 "init_args": {"episodes": [str(episodes)], "eval_examples": 4, "candidates": 3, "reply_tokens": 4}},
    }))
    data = data_module_from_config(["-c", str(recipe), "--data.init_args.cache_dir", str(tmp_path / "cache")])
    assert type(data) is DialogueDataModule and data.hparams.candidates == 3
    cli = main(["fit", "-c", str(recipe), *tiny(tmp_path, None, steps=2), "--model.init_args.max_len", "32",
                "--trainer.limit_val_batches", "1"])
    assert type(cli.datamodule) is DialogueDataModule and cli.trainer.global_step == 2
    assert {"val/loss", "val/hits@1", "val/f1"} <= set(cli.trainer.callback_metrics)  # its evaluator ran
