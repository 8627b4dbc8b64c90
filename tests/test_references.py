"""Every model family gives exactly the results recorded in `references.json`: training losses and
validation metrics through the real `xlab.py fit`, logits of a validation batch, and greedy,
sampled and beam text through the real `infer.py` (chat and image modes included).

The reference was first recorded before the package moved to one package per family, and the
moved code reproduced it bit for bit. Bits do not travel between processors, though (an AMD and an
Intel core round a few sums differently even with the kernels pinned), so numbers compare to a
relative 1e-4, and the logits through a sketch: each position's projection on two fixed random
directions. Text compares exactly. Each scenario is a complete config of its
own (not a file in conf/, whose defaults may improve), and old class paths (`xlab.models.*`,
`xlab.datamodules.*`) give the same results as the current ones.

    python -m tests.test_references --record   # re-records the reference (only on purpose)
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from tests.helpers import load_script, write_corpus, write_dialogue_episodes
from xlab.cli import main
from xlab.common.files import write_text_

REFERENCE = Path(__file__).resolve().parent / "references.json"

TRAINER = {"accelerator": "cpu", "devices": 1, "strategy": "auto", "precision": "32-true", "max_steps": 6,
           "max_epochs": -1, "val_check_interval": 3, "check_val_every_n_epoch": None, "limit_val_batches": 2,
           "num_sanity_val_steps": 0, "gradient_clip_val": 1.0, "log_every_n_steps": 1, "enable_progress_bar": False,
           "deterministic": True, "callbacks": [{"class_path": "tests.helpers.StepLosses"}]}
SHAPE = {"n_layer": 2, "n_head": 2, "n_embd": 32, "learning_rate": 0.003, "warmup_steps": 2, "compile": False}
LLAMA = {"positions": "rotary", "norm": "rmsnorm", "activation": "swiglu", "bias": False, "tie_weights": True}
TEXT = {"vocab_size": 400, "batch_size": 4, "eval_batch_size": 8, "num_workers": 0}

# Class paths as configs and checkpoints written before the move name them.
OLD = {"text": ("xlab.models.XLabModel", "xlab.datamodules.XLabDataModule"),
       "memory": ("xlab.models.MemoryGPT2", "xlab.datamodules.streams.StreamDataModule"),
       "retro": ("xlab.models.RetroModel", "xlab.datamodules.retro.RetroDataModule"),
       "dialogue": ("xlab.models.XLabModel", "xlab.datamodules.dialogue.DialogueDataModule"),
       "captions": ("xlab.models.CaptionModel", "xlab.captions.CaptionDataModule")}
CURRENT = {"text": ("xlab.models.XLabModel", "xlab.datamodules.XLabDataModule"),
           "memory": ("xlab.memory.MemoryGPT2", "xlab.datamodules.StreamDataModule"),
           "retro": ("xlab.retro.RetroModel", "xlab.retro.RetroDataModule"),
           "dialogue": ("xlab.models.XLabModel", "xlab.dialogue.DialogueDataModule"),
           "captions": ("xlab.captions.CaptionModel", "xlab.captions.CaptionDataModule")}


def scenario(name: str, data_dir: Path) -> tuple[dict, dict]:
    """(model init_args, data init_args) of a family's scenario over the test's data."""
    corpus = [{"kind": "text_folder", "path": str(data_dir / "corpus")}]
    if name == "text":
        return {**SHAPE, **LLAMA, "max_len": 32}, {**TEXT, "sources": corpus}
    if name == "memory":
        return ({**SHAPE, "max_len": 16, "memory_size": 64, "num_search_results": 4, "memory_device": "cpu",
                 "store_init": 0.5, "delete_init": -0.5, "forgetfulness_factor": 0.05, "min_weight": 0.5},
                {**TEXT, "sources": corpus})
    if name == "retro":
        return ({**SHAPE, "max_len": 16, "chunk_size": 4, "enc_dim": 16, "enc_depth": 1},
                {**TEXT, "sources": corpus, "chunk_size": 4, "k": 2})
    if name == "dialogue":
        episodes = [str(data_dir / "talks.jsonl")]
        return ({**SHAPE, **LLAMA, "max_len": 32},
                {**TEXT, "episodes": episodes, "eval_examples": 6, "candidates": 4, "reply_tokens": 6})
    if name == "captions":
        return ({**SHAPE, "max_len": 40, "conv_channels": 8, "max_caption_tokens": 8, "metric_tokenizer": "simple"},
                {**TEXT, "captions": [{"kind": "synthetic_shapes", "images": 60}], "eval_batch_size": 16,
                 "max_caption_len": 16})
    raise ValueError(name)


def write_config_(name: str, tmp: Path, data_dir: Path, paths: dict) -> Path:
    model_args, data_args = scenario(name, data_dir)
    model_path, data_path = paths[name]
    config = {"seed_everything": 7, "trainer": {**TRAINER, "logger": {
                  "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                  "init_args": {"save_dir": str(tmp / "runs"), "name": name}}},
              "model": {"class_path": model_path, "init_args": model_args},
              "data": {"class_path": data_path, "init_args": {**data_args, "cache_dir": str(tmp / "cache")}}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_data_(data_dir: Path) -> Path:
    write_corpus(data_dir / "corpus", documents=120)
    write_dialogue_episodes(data_dir / "talks.jsonl", count=120)
    from xlab.captions.synthetic import draw

    draw(5).save(data_dir / "shape.png")
    return data_dir


def run_infer(args: list[str], stdin: str = "") -> str:
    """infer.py's standard output for `args` (the speed line goes to stderr)."""
    infer = load_script("infer")
    out, saved = io.StringIO(), (sys.stdin, sys.stdout, sys.stderr)
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin), out, io.StringIO()
    try:
        assert infer.main(args) == 0
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
    return out.getvalue()


def sketch(logits: torch.Tensor) -> list[str]:
    """Each position's logits projected on two fixed random directions: any change to any logit
    moves it, and it compares with a tolerance where a hash of the bytes could not."""
    directions = torch.randn(logits.shape[-1], 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return [value.hex() for value in (logits.double() @ directions).flatten().tolist()]


def close(found, expected) -> bool:
    """Hex floats within a relative 1e-4 (lists and dicts elementwise); anything else equal."""
    if isinstance(expected, dict):
        return found.keys() == expected.keys() and all(close(found[k], v) for k, v in expected.items())
    if isinstance(expected, list):
        return len(found) == len(expected) and all(close(f, e) for f, e in zip(found, expected))
    if isinstance(expected, str) and expected.startswith(("0x", "-0x")):
        return math.isclose(float.fromhex(found), float.fromhex(expected), rel_tol=1e-4, abs_tol=1e-4)
    return found == expected


def facts(name: str, tmp: Path, data_dir: Path, paths: dict) -> dict:
    config = write_config_(name, tmp, data_dir, paths)
    cli = main(["fit", "-c", str(config)])
    losses = next(c for c in cli.trainer.callbacks if type(c).__name__ == "StepLosses").losses
    metrics = {k: float(v).hex() for k, v in sorted(cli.trainer.callback_metrics.items()) if k.startswith("val/")}
    ckpt = str(next((tmp / "runs").rglob("last.ckpt")))
    model = cli.model.eval()
    batch = next(iter(cli.datamodule.val_dataloader()))
    with torch.no_grad():
        logits = model.batch_logits(batch)
    out = {"losses": losses, "val": metrics, "logits": sketch(logits)}
    if name == "captions":
        image = str(data_dir / "shape.png")
        out["greedy"] = run_infer([ckpt, "--image", image, "--greedy", "--device", "cpu"])
        out["sampled"] = run_infer([ckpt, "--image", image, "--style", "happy", "--seed", "3", "--num-samples", "2",
                                    "--device", "cpu"])
        out["beam"] = run_infer([ckpt, "--image", image, "--beams", "3", "--device", "cpu"])
        return out
    if name == "dialogue":
        turns = "kalo mine?\nruta\n"
        out["greedy"] = run_infer([ckpt, "--chat", "--greedy", "--limit", "8", "--device", "cpu"], stdin=turns)
        out["sampled"] = run_infer([ckpt, "--chat", "--seed", "3", "--limit", "8", "--device", "cpu"], stdin=turns)
        out["beam"] = run_infer([ckpt, "--chat", "--beams", "3", "--limit", "8", "--device", "cpu"], stdin=turns)
        return out
    prompt = "Document 7. Kalo"
    out["greedy"] = run_infer([ckpt, prompt, "--greedy", "--limit", "20", "--device", "cpu"])
    out["sampled"] = run_infer([ckpt, prompt, "--seed", "3", "--top-k", "20", "--temperature", "0.8",
                                "--num-samples", "2", "--limit", "20", "--device", "cpu"])
    out["beam"] = run_infer([ckpt, prompt, "--beams", "3", "--limit", "12", "--device", "cpu"])
    return out


FAMILIES = ("text", "memory", "retro", "dialogue", "captions")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_data_(tmp_path_factory.mktemp("reference-data"))


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())


def recorded(found: dict, expected: dict) -> dict:
    """`found` with the validation metrics the reference recorded (metrics added since are not in it)."""
    assert set(expected["val"]) <= set(found["val"])
    return {**found, "val": {name: found["val"][name] for name in expected["val"]}}


@pytest.mark.parametrize("name", FAMILIES)
def test_family_matches_the_reference(name, tmp_path, data_dir, reference):
    found = recorded(facts(name, tmp_path, data_dir, CURRENT), reference[name])
    assert close(found, reference[name]), {k: v for k, v in found.items() if not close(v, reference[name][k])}


def test_old_class_paths_give_the_same_results(tmp_path, data_dir, reference):
    found = recorded(facts("retro", tmp_path, data_dir, OLD), reference["retro"])
    assert close(found, reference["retro"])


def test_the_comparison_sees_a_change_beyond_rounding():
    assert close(["0x1.8p+2", "text"], [(6.0 * (1 + 1e-6)).hex(), "text"])
    assert not close(["0x1.8p+2"], [(6.0 * (1 + 1e-3)).hex()]) and not close(["text"], ["test"])


def record_() -> None:
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        data_dir = write_data_(root / "data")
        results = {}
        for name in FAMILIES:
            (root / name).mkdir()
            L.seed_everything(0, verbose=False)
            results[name] = facts(name, root / name, data_dir, CURRENT)
    write_text_(REFERENCE, json.dumps(results, indent=1) + "\n")


if __name__ == "__main__" and "--record" in sys.argv:
    record_()
