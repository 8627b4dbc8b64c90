"""Exports and loading: round trips, safety, model-kind checks and bad input, on a checkpoint
written by a real Lightning Trainer; and the README sampling snippet as written."""

from __future__ import annotations

import json

import pytest
import torch

from xlab.errors import XLabError
from xlab.export import (CONFIG, MODEL_CLASS_RECORD, SPM_TOKENIZER, WEIGHTS, describe, export_checkpoint_, load, load_export,
                         model_class)

from tests.helpers import TOKENIZER_SIZE


def test_readme_snippet_runs_as_written(tiny_checkpoint):
    ckpt, device, prompt, limit = str(tiny_checkpoint), "cpu", "the cat sat", 12
    # --- README, verbatim ---
    from xlab.datamodules import XLabDataModule
    from xlab.models import XLabModel
    from xlab import inference
    tokenizer = XLabDataModule.load_from_checkpoint(ckpt, map_location=device).tokenizer
    model = XLabModel.load_from_checkpoint(ckpt, map_location=device).eval().requires_grad_(False)
    inputs = torch.tensor([tokenizer[tokenizer.sos_token]] + tokenizer.encode(prompt), device=model.device)
    outputs = inference.sample(model, inputs, output_length=limit, block_size=model.hparams['max_len'],
                               eos_class=tokenizer[tokenizer.eos_token])
    text = tokenizer.decode(outputs)
    # --- end ---
    assert isinstance(text, str) and outputs.dim() == 1 and len(outputs) <= limit
    assert tokenizer.eos_id not in outputs.tolist() and all(0 <= t < len(tokenizer) for t in outputs.tolist())


def test_export_gives_the_same_logits_and_is_much_smaller(tiny_checkpoint, tiny_export):
    from xlab.models import XLabModel

    reference = XLabModel.load_from_checkpoint(tiny_checkpoint, map_location="cpu").eval()
    exported = load_export(tiny_export, expected=XLabModel)
    tokens = torch.randint(0, reference.hparams.vocab_size, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(exported.model(tokens), reference(tokens), rtol=0, atol=0)
    size = sum(p.stat().st_size for p in tiny_export.rglob("*") if p.is_file())
    assert size < tiny_checkpoint.stat().st_size / 2  # no optimizer state
    assert exported.model.lm_head.weight is exported.model.transformer.wte.weight
    assert exported.tokenizer.to_bytes() == (tiny_export / SPM_TOKENIZER).read_bytes()
    assert exported.generation.block_size == 32 and exported.generation.eos_class == exported.tokenizer.eos_id


def test_checkpoint_and_export_load_the_same_way(tiny_checkpoint, tiny_export):
    from_ckpt, from_export = load(tiny_checkpoint), load(tiny_export)
    assert from_ckpt.info["global_step"] == from_export.info["global_step"] == 2
    for a, b in zip(from_ckpt.model.state_dict().values(), from_export.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert from_ckpt.tokenizer.to_bytes() == from_export.tokenizer.to_bytes()


def lightning_cli_checkpoint_(tiny_checkpoint, folder, compiled: bool = True, class_path="xlab.models.XLabModel"):
    """The tiny checkpoint as LightningCLI and torch.compile would write it."""
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["hyper_parameters"] = {**ckpt["hyper_parameters"], "_class_path": class_path,
                                "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    if compiled:
        ckpt["state_dict"] = {f"_orig_mod.{k}": v for k, v in ckpt["state_dict"].items()}
    path = folder / "cli.ckpt"
    torch.save(ckpt, path)
    return path


def test_export_strips_compiled_prefixes_and_cli_keys(tiny_checkpoint, tmp_path):
    path = lightning_cli_checkpoint_(tiny_checkpoint, tmp_path)
    out = export_checkpoint_(path)
    assert out == tmp_path / "cli-export"
    config = json.loads((out / CONFIG).read_text())
    assert config["model"]["class_path"] == "xlab.models.XLabModel"
    assert not any(k.startswith("_") for k in config["model"]["init_args"])
    assert config["tied"] == {"lm_head.weight": "transformer.wte.weight"}
    from safetensors import safe_open

    with safe_open(out / WEIGHTS, framework="pt") as weights:
        assert not any("_orig_mod" in k for k in weights.keys()) and "lm_head.weight" not in weights.keys()
    model = load(out).model
    assert model.lm_head.weight is model.transformer.wte.weight


def test_other_model_kinds_are_refused(tiny_checkpoint, tmp_path):
    from xlab.models import LanguageModel

    foreign = lightning_cli_checkpoint_(tiny_checkpoint, tmp_path, class_path="os.system")
    with pytest.raises(XLabError, match="not an XLab model"):
        load(foreign)

    class OtherModel(LanguageModel):
        pass

    ours = lightning_cli_checkpoint_(tiny_checkpoint, tmp_path, compiled=False)
    with pytest.raises(XLabError, match="holds a model of class XLabModel, not OtherModel"):
        load(ours, expected=OtherModel)
    with pytest.raises(XLabError, match="holds a model of class XLabModel, not OtherModel"):
        load(tiny_checkpoint, expected=OtherModel)  # built in Python: the model recorded its class
    bare = torch.load(tiny_checkpoint, weights_only=True)
    del bare[MODEL_CLASS_RECORD]
    torch.save(bare, tmp_path / "bare.ckpt")
    with pytest.raises(XLabError, match="do not fit a OtherModel"):
        load(tmp_path / "bare.ckpt", expected=OtherModel)  # no class recorded at all: the caller is trusted
    with pytest.raises(XLabError, match="not an XLab model"):
        model_class("xlab.models.LanguageModel")


def test_export_refuses_a_non_empty_folder_unless_forced(tiny_checkpoint, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(XLabError, match="--force"):
        export_checkpoint_(tiny_checkpoint, out)
    assert (out / "notes.txt").exists()
    export_checkpoint_(tiny_checkpoint, out, force=True)
    assert not (out / "notes.txt").exists() and (out / WEIGHTS).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # nothing left aside


def test_broken_exports_give_one_line_errors(tiny_export, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_export, broken)
    (broken / SPM_TOKENIZER).unlink()
    with pytest.raises(XLabError, match="missing tokenizer.model"):
        load(broken)
    shutil.copy(tiny_export / SPM_TOKENIZER, broken / SPM_TOKENIZER)
    (broken / WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(XLabError, match="not readable safetensors"):
        load(broken)
    (broken / CONFIG).unlink()
    with pytest.raises(XLabError, match="not an XLab export"):
        load(broken)


def test_missing_corrupt_and_unsafe_checkpoints_give_one_line_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(XLabError, match="does not exist"):
        load(tmp_path / "nothing.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:2000])
    with pytest.raises(XLabError, match="corrupt or truncated") as error:
        load(truncated)
    assert "\n" not in str(error.value)
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"loss": torch.nn.MSELoss()}}, unsafe)
    with pytest.raises(XLabError, match="pickled objects"):
        load(unsafe)
    no_tokenizer = tmp_path / "no_tokenizer.ckpt"
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    del ckpt["XLabDataModule"]
    torch.save(ckpt, no_tokenizer)
    with pytest.raises(XLabError, match="no tokenizer"):
        load(no_tokenizer)


def test_weights_that_do_not_fit_the_settings_are_reported(tiny_checkpoint, tmp_path):
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["hyper_parameters"]["n_embd"] = 64
    path = tmp_path / "mismatch.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(XLabError, match="do not fit a XLabModel"):
        load(path)


def test_describe_reports_training_facts(tiny_checkpoint, tiny_export):
    facts = describe(tiny_checkpoint)
    assert facts["global_step"] == 2 and facts["monitor"] == "val/loss"
    assert isinstance(facts["best_score"], float) and facts["best_score"] > 0
    assert facts["tokenizer_size"] == facts["settings"]["vocab_size"] == TOKENIZER_SIZE
    exported = describe(tiny_export)
    assert exported["parameters"] == facts["parameters"] == load(tiny_export).model.num_parameters()
    assert exported["best_score"] == facts["best_score"] and exported["tokenizer_kind"] == "sentencepiece"


def test_a_checkpoint_of_the_real_cli_exports_and_samples(cli_checkpoint, tmp_path):
    facts = describe(cli_checkpoint)
    assert facts["model"] == "xlab.models.XLabModel" and facts["monitor"] == "val/loss"
    assert isinstance(facts["best_score"], float)
    out = export_checkpoint_(cli_checkpoint, tmp_path / "export")
    config = json.loads((out / CONFIG).read_text())
    assert "_instantiator" not in config["model"]["init_args"] and config["training"]["global_step"] == 2
    from_ckpt, from_export = load(cli_checkpoint), load(out)
    prompt = torch.tensor([from_export.tokenizer.sos_id] + from_export.tokenizer.encode("Document 3."))
    with torch.no_grad():
        torch.testing.assert_close(from_export.model(prompt[None]), from_ckpt.model(prompt[None]), rtol=0, atol=0)
    from xlab import inference

    tokens = inference.sample(from_export.model, prompt, output_length=20, temperature=0)
    assert len(tokens) == 20  # past the 16-token context: the window slid
