"""Helpers shared by the tests: corpora the tests write, tiny CLI settings, the scripts as modules,
models with decisive logits. Tests import them from here, never from another test module."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import platform
import random
import re
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
TOKENIZER_SIZE = 400  # the test corpus's characters plus 256 byte pieces, with room for merges

SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "shi", "vo", "pe", "da", "gri", "zu", "an", "el", "or")
WORDS = sorted({a + b + c for a in SYLLABLES for b in SYLLABLES for c in ("", "n", "s", "ta")})[:600]


def write_corpus(folder: Path, documents: int = 200, seed: int = 0, words: int = 60) -> Path:
    """`documents` small text files of pseudo-sentences: enough documents that every split gets some."""
    rng = random.Random(seed)
    # A skewed word distribution, like real text: frequent words give the tokenizer merges to learn.
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(documents):
        sentences = [" ".join(rng.choices(WORDS, weights, k=rng.randint(5, 12))).capitalize() + "."
                     for _ in range(words // 8)]
        (folder / f"doc{i:04d}.txt").write_text(f"Document {i}.\n" + " ".join(sentences) + "\n", encoding="utf-8")
    return folder


def tiny(tmp_path: Path, sources: list[dict] | None, steps: int = 4) -> list[str]:
    """Overrides that shrink any XLabModel recipe to seconds on a CPU (`sources`: None for data
    modules that read no text corpus, such as dialogue)."""
    corpus = ["--data.init_args.sources", json.dumps(sources)] if sources is not None else []
    return [
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
        "--trainer.precision", "32-true", "--trainer.max_steps", str(steps), "--trainer.val_check_interval", "2",
        "--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--model.init_args.n_layer", "1", "--model.init_args.n_head", "2", "--model.init_args.n_embd", "32",
        "--model.init_args.max_len", "16", "--model.init_args.compile", "false",
        *corpus, "--data.init_args.vocab_size", "400",
        "--data.init_args.cache_dir", str(tmp_path / "cache"), "--data.init_args.batch_size", "4",
        "--data.init_args.num_workers", "0", "--data.init_args.max_documents", "null",
    ]


def one_line_error(main, args: list[str], capsys) -> str:
    """The refusal a script's `main` (xlab.cli.main, infer.py's, manage.py's) gives `args`: exit
    status 2, no traceback, and exactly one `error: ...` line, the last on stderr (progress lines of
    a data build may come before it). Returns that line."""
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert exit_.value.code == 2 and "Traceback" not in err, err
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    return errors[0]


def cut_short_(path: Path, fraction: float) -> Path:
    """Keep the first `fraction` of the file's bytes, as a copy or a write that stopped half way."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    return path


def load_script(name: str):
    """A script as a module, wherever pytest runs from: "infer", "manage", "bench/memory_recall"."""
    module_name = "xlab_script_" + name.replace("/", "_")
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def sharp_model(vocab_size: int = 48, max_len: int = 16, positions: str = "learned", seed: int = 0, **kwargs):
    """A random XLabModel whose logits are far from uniform, so greedy choices are not near-ties
    that rounding differences between equivalent computations could flip."""
    from xlab.models import XLabModel

    torch.manual_seed(seed)
    model = XLabModel(vocab_size=vocab_size, max_len=max_len, n_layer=2, n_head=2, n_embd=32,
                      positions=positions, **kwargs).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(8)
    return model


def retro_data(corpus_dir: Path, tmp_path: Path, **overrides):
    """A RetroDataModule over the test corpus, prepared and set up for fit: chunks of 4, k=2."""
    from xlab.retro.datamodule import RetroDataModule

    settings = dict(sources=[{"kind": "text_folder", "path": str(corpus_dir)}], vocab_size=TOKENIZER_SIZE,
                    max_len=16, chunk_size=4, k=2, batch_size=4, cache_dir=str(tmp_path / "cache"))
    dm = RetroDataModule(**(settings | overrides))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def xlab_data(corpus_dir: Path, tmp_path: Path, **overrides):
    """An XLabDataModule over the test corpus with a cache of its own: blocks of 16, batches of 4."""
    from xlab.datamodules import XLabDataModule

    settings = dict(sources=[{"kind": "text_folder", "path": str(corpus_dir)}], cache_dir=str(tmp_path / "cache"),
                    vocab_size=TOKENIZER_SIZE, max_len=16, batch_size=4)
    return XLabDataModule(**(settings | overrides))


def write_dialogue_episodes(path: Path, count: int = 200, seed: int = 0) -> Path:
    """`count` short two-party conversations as a built episode file (the dialogue recipe's data)."""
    rng = random.Random(seed)
    lines = []
    for i in range(count):
        a, b, c = rng.sample(WORDS[:60], 3)
        turns = [{"speaker": "User", "text": f"{a} {b}?", "train": False}, {"speaker": "Bot", "text": f"{b} {c}.", "train": True},
                 {"speaker": "User", "text": f"{c}?", "train": False}, {"speaker": "Bot", "text": f"{a}.", "train": True}]
        lines.append(json.dumps({"id": f"talk-{i}", "source": "test", "context": "", "personas": {}, "turns": turns}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def cpu_vendor() -> str:
    """The processor's maker as the kernel names it (GenuineIntel, AuthenticAMD): exact float
    references hold only among processors of one maker."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    found = re.search(r"^vendor_id\s*:\s*(\S+)", text, re.M)
    return found.group(1) if found else platform.processor() or "unknown"


def digest(tensor: torch.Tensor) -> str:
    """A short fingerprint of a tensor's exact bytes."""
    return hashlib.sha256(tensor.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


class StepLosses(L.Callback):
    """A Lightning callback that records each training step's loss as an exact hex float."""

    def __init__(self):
        super().__init__()
        self.losses: list[str] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach()).hex())


class FailAt(L.Callback):
    """Raises an exception when training step `step` begins: a run that dies half way."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step + 1 == self.step:
            raise RuntimeError(f"stopped on purpose before step {self.step}")


class StepRates(L.Callback):
    """Records the learning rate each training step runs with (the first parameter group's)."""

    def __init__(self):
        super().__init__()
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


class LossFile(StepLosses):
    """StepLosses that rank 0 writes to `path` (JSON) when training ends: runs in other processes."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            Path(self.path).write_text(json.dumps(self.losses))
