"""Reading checkpoints (`xlab.common.checkpoint`): one-line errors for files that are not checkpoints, the
records every LanguageModel writes, and that the module stands on the ground floor (no models)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT
from xlab.common.checkpoint import (MODEL_CLASS_RECORD, STATE_SUMMARY_RECORD, check_saved_class, read_checkpoint,
                                    saved_class_path, state_summary, tokenizer_bytes, training_info)
from xlab.common.errors import XLabError


def test_reading_a_checkpoint_imports_no_model_and_no_lightning():
    probe = ("import sys, xlab.common.checkpoint\n"
             "print(sorted(m for m in sys.modules if m.startswith(('xlab.models', 'xlab.interop.export', 'lightning'))))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_corrupt_foreign_and_unsafe_files_are_one_line_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(XLabError, match="does not exist"):
        read_checkpoint(tmp_path / "nothing.ckpt")
    with pytest.raises(XLabError, match="is a directory"):
        read_checkpoint(tmp_path)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:2000])
    with pytest.raises(XLabError, match="corrupt or truncated") as error:
        read_checkpoint(truncated)
    assert "\n" not in str(error.value)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(XLabError, match="not a zip archive"):
        read_checkpoint(text)
    foreign = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)  # a PyTorch file, but not Lightning's
    with pytest.raises(XLabError, match="not a Lightning checkpoint"):
        read_checkpoint(foreign)
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"loss": torch.nn.MSELoss()}}, unsafe)
    with pytest.raises(XLabError, match="pickled objects") as error:
        read_checkpoint(unsafe)
    assert "\n" not in str(error.value)


def test_the_records_of_a_trained_checkpoint(tiny_checkpoint):
    ckpt = read_checkpoint(tiny_checkpoint)
    assert all(t.device.type == "cpu" for t in ckpt["state_dict"].values())
    # A model built in Python has no class path in its hparams: it records its class itself.
    assert "_class_path" not in ckpt["hyper_parameters"]
    assert ckpt[MODEL_CLASS_RECORD] == "xlab.models.xlab_model.XLabModel" == saved_class_path(ckpt)
    assert ckpt[STATE_SUMMARY_RECORD] == {} == state_summary(ckpt)  # a plain network has no state
    import sentencepiece

    spm = sentencepiece.SentencePieceProcessor(model_proto=tokenizer_bytes(ckpt))
    assert spm.get_piece_size() == ckpt["hyper_parameters"]["vocab_size"]
    info = training_info(ckpt)
    assert info["global_step"] == 2 and info["monitor"] == "val/loss"
    assert isinstance(info["best_score"], float) and info["best_score"] > 0


def test_class_paths_and_their_check():
    from xlab.memory import MemoryGPT2
    from xlab.models import LanguageModel, XLabModel

    cli = {"hyper_parameters": {"_class_path": "xlab.models.MemoryGPT2"}, MODEL_CLASS_RECORD: "ignored"}
    assert saved_class_path(cli) == "xlab.models.MemoryGPT2"  # LightningCLI's path comes first
    check_saved_class(cli, MemoryGPT2)
    check_saved_class(cli, LanguageModel)  # a subclass of what is expected
    with pytest.raises(XLabError, match="holds a model of class MemoryGPT2, not XLabModel"):
        check_saved_class(cli, XLabModel)
    check_saved_class({"hyper_parameters": {}}, XLabModel)  # names no class: the caller is trusted
    assert saved_class_path({}) is None


def test_missing_tokenizer_and_summaries_of_other_shapes():
    with pytest.raises(XLabError, match="no tokenizer"):
        tokenizer_bytes({"state_dict": {}}, "old.ckpt")
    assert tokenizer_bytes({"RetroDataModule": {"tokenizer_model": b"spm"}}) == b"spm"  # any data module
    assert state_summary({STATE_SUMMARY_RECORD: {"memory_entries": torch.tensor(7)}}) == {"memory_entries": 7}
    assert state_summary({STATE_SUMMARY_RECORD: "junk"}) == {} == state_summary({})
    assert training_info({"global_step": 3}) == {"global_step": 3, "epoch": None}


def test_load_from_checkpoint_refuses_another_kind_in_one_line(tiny_checkpoint):
    from xlab.memory import MemoryGPT2
    from xlab.models import XLabModel

    with pytest.raises(XLabError, match="holds a model of class XLabModel, not MemoryGPT2"):
        MemoryGPT2.load_from_checkpoint(tiny_checkpoint)
    assert isinstance(XLabModel.load_from_checkpoint(tiny_checkpoint), XLabModel)


def test_a_class_that_is_no_xlab_model_is_named_as_such():
    from xlab.models import XLabModel

    with pytest.raises(XLabError, match="'os.system' is not an XLab model: .*xlab.models.XLabModel"):
        check_saved_class({"hyper_parameters": {"_class_path": "os.system"}}, XLabModel)
    with pytest.raises(XLabError, match="'xlab.common.errors.XLabError' is not an XLab model"):
        check_saved_class({"hyper_parameters": {"_class_path": "xlab.common.errors.XLabError"}}, XLabModel)
