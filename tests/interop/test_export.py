"""Exports and loading (`xlab.interop.export`): round trips, safety, model-kind checks and bad input, on a
checkpoint written by a real Lightning Trainer; and the Python API block of docs/sampling.md, read from the file."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import ROOT, TOKENIZER_SIZE
from xlab.common.checkpoint import MODEL_CLASS_RECORD
from xlab.common.errors import XLabError
from xlab.common.export_format import CONFIG, SPM_TOKENIZER, WEIGHTS
from xlab.interop.describe import describe
from xlab.interop.export import export_checkpoint_, load, load_export
from xlab.models.registry import model_class


def readme_python_api() -> str:
    """The code block under docs/sampling.md's "## Python API" heading."""
    readme = (ROOT / "docs" / "sampling.md").read_text()
    section = readme.split("\n## Python API\n", 1)[1]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_the_documented_python_api_runs_as_written(tiny_checkpoint):
    code = readme_python_api()
    # The one line a reader edits: the block's own checkpoint path becomes the test's.
    setting = next(line for line in code.splitlines() if line.startswith("ckpt, device, prompt, limit = "))
    code = code.replace(setting, f"ckpt, device, prompt, limit = {str(tiny_checkpoint)!r}, 'cpu', 'the cat sat', 12")
    # The block samples with torch's global generator: seeded just before, so the draws can be repeated.
    assert code.count("outputs = inference.sample(") == 1
    code = code.replace("outputs = inference.sample(", "torch.manual_seed(7)\noutputs = inference.sample(")
    namespace: dict = {}
    exec(compile(code, "docs/sampling.md", "exec"), namespace)
    text, outputs, tokenizer = namespace["text"], namespace["outputs"], namespace["tokenizer"]
    # The same request through `load`, drawing the same random numbers: the same tokens, token for token.
    from xlab import inference

    loaded = load(tiny_checkpoint)
    prompt = torch.tensor([loaded.tokenizer.sos_id, *loaded.tokenizer.encode("the cat sat")])
    torch.manual_seed(7)
    expected = inference.sample(loaded.model, prompt, output_length=12, block_size=32, eos_class=loaded.tokenizer.eos_id)
    assert outputs.tolist() == expected.tolist() and text == loaded.tokenizer.decode(expected)
    torch.manual_seed(8)
    other = inference.sample(loaded.model, prompt, output_length=12, block_size=32, eos_class=loaded.tokenizer.eos_id)
    assert other.tolist() != expected.tolist()  # the seed decides: the equality above is not a coincidence
    assert tokenizer.to_bytes() == loaded.tokenizer.to_bytes()
    assert tokenizer.eos_id not in expected.tolist() and 0 < len(expected) <= 12


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
    assert_same_state(from_ckpt.model.state_dict(), from_export.model.state_dict())
    assert from_ckpt.tokenizer.to_bytes() == from_export.tokenizer.to_bytes()


def lightning_cli_checkpoint_(tiny_checkpoint, folder, class_path="xlab.models.XLabModel"):
    """The tiny checkpoint with the keys LightningCLI adds to the hyperparameters."""
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["hyper_parameters"] = {**ckpt["hyper_parameters"], "_class_path": class_path,
                                "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    path = folder / "cli.ckpt"
    torch.save(ckpt, path)
    return path


def test_export_drops_cli_keys_and_stores_tied_weights_once(tiny_checkpoint, tmp_path):
    path = lightning_cli_checkpoint_(tiny_checkpoint, tmp_path)
    out = export_checkpoint_(path)
    assert out == tmp_path / "cli-export"
    config = json.loads((out / CONFIG).read_text())
    assert config["model"]["class_path"] == "xlab.models.XLabModel"
    assert not any(k.startswith("_") for k in config["model"]["init_args"])
    assert config["tied"] == {"lm_head.weight": "transformer.wte.weight"}
    assert config["state_summary"] == {} and config["records"] == {}
    from safetensors import safe_open

    with safe_open(out / WEIGHTS, framework="pt") as weights:
        assert "lm_head.weight" not in weights.keys()
    model = load(out).model
    assert model.lm_head.weight is model.transformer.wte.weight


def test_compile_keeps_the_parameter_names(tmp_path):
    """`compile: true` compiles the bound forward, not a wrapper module: checkpoints and exports
    keep the plain names (no `_orig_mod.` level), so loaders need no renaming."""
    from xlab.interop.export import write_export_
    from xlab.models import XLabModel

    torch.manual_seed(0)
    plain = XLabModel(vocab_size=48, max_len=16, n_layer=1, n_head=2, n_embd=32)
    torch.manual_seed(0)
    compiled = XLabModel(vocab_size=48, max_len=16, n_layer=1, n_head=2, n_embd=32, compile=True)
    compiled.setup("fit")
    assert hasattr(compiled.forward, "_torchdynamo_orig_callable")  # compiling really was set up
    assert_same_state(compiled.state_dict(), plain.state_dict())
    out = write_export_(tmp_path / "export", compiled, {}, "sentencepiece", training={})
    from safetensors import safe_open

    with safe_open(out / WEIGHTS, framework="pt") as weights:
        assert set(weights.keys()) == set(plain.state_dict()) - {"lm_head.weight"}


def test_other_model_kinds_are_refused(tiny_checkpoint, tmp_path):
    from xlab.models import LanguageModel

    foreign = lightning_cli_checkpoint_(tiny_checkpoint, tmp_path, class_path="os.system")
    with pytest.raises(XLabError, match="not an XLab model"):
        load(foreign)

    class OtherModel(LanguageModel):
        pass

    ours = lightning_cli_checkpoint_(tiny_checkpoint, tmp_path)
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


def test_weights_that_do_not_fit_the_settings_are_reported(tiny_checkpoint, tmp_path):
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["hyper_parameters"]["n_embd"] = 64
    path = tmp_path / "mismatch.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(XLabError, match="do not fit a XLabModel"):
        load(path)


def test_describe_reports_training_facts(tiny_checkpoint, tiny_export, corpus_dir):
    facts = describe(tiny_checkpoint)
    assert facts["global_step"] == 2 and facts["monitor"] == "val/loss"
    # The one validation (after step 2, one batch) scored the weights last.ckpt holds: its loss,
    # counted here by hand over the same batch, is the best and the current score.
    from xlab.datamodules import XLabDataModule

    data = XLabDataModule(sources=[{"kind": "text_folder", "path": str(corpus_dir)}], vocab_size=TOKENIZER_SIZE,
                          cache_dir=str(tiny_checkpoint.parents[1] / "cache"), max_len=32, batch_size=4)
    data.setup("validate")
    batch = next(iter(data.val_dataloader()))
    with torch.no_grad():
        logits = load(tiny_checkpoint).model(batch["input_ids"])
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"], reduction="sum")
    loss = float(nll) / int((batch["labels"] != -100).sum())
    assert facts["best_score"] == pytest.approx(loss, rel=1e-5) and facts["current_score"] == facts["best_score"]
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


def test_a_checkpoint_without_a_tokenizer_is_refused(tiny_checkpoint, tmp_path):
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    del ckpt["XLabDataModule"]
    torch.save(ckpt, tmp_path / "no_tokenizer.ckpt")
    with pytest.raises(XLabError, match="no tokenizer"):
        load(tmp_path / "no_tokenizer.ckpt")
    with pytest.raises(XLabError, match="no tokenizer"):
        export_checkpoint_(tmp_path / "no_tokenizer.ckpt")


def test_describe_builds_no_model(tiny_checkpoint, tiny_export):
    import subprocess
    import sys

    probe = ("import sys\nfrom xlab.interop.describe import describe\n"
             f"describe({str(tiny_checkpoint)!r}); describe({str(tiny_export)!r})\n"
             "print(sorted(m for m in sys.modules if m.startswith(('xlab.models', 'lightning'))))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
