"""DDP on two CPU processes (gloo) through the real script: one tokenizer, synced metrics, one checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers import CONF, tiny
from xlab.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_ddp_two_cpu_processes(tmp_path, corpus_dir):
    args = ["-c", str(CONF / "defaults.yaml"), *tiny(tmp_path, [{"kind": "text_folder", "path": str(corpus_dir)}], steps=4),
            "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.limit_val_batches", "1.0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XLAB_CACHE": str(tmp_path / "unused-cache")}
    run = subprocess.run([sys.executable, str(ROOT / "xlab.py"), "fit", *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("building the corpus cache") == 1  # built once, by rank 0
    assert len(list((tmp_path / "cache" / "corpus").glob("*/meta.json"))) == 1
    checkpoints = list((tmp_path / "runs").rglob("*.ckpt"))
    assert {c.name for c in checkpoints} >= {"last.ckpt"} and len({c.parent for c in checkpoints}) == 1
    last = next(c for c in checkpoints if c.name == "last.ckpt")
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 4
    # Synced metrics: each rank saw half the val split, yet the logged loss is the whole split's,
    # the same as one process validating the same weights.
    ddp_loss = next(v["current_score"] for k, v in ckpt["callbacks"].items() if "XLabCheckpoint" in k)
    single = main(["validate", *args[:-6], "--trainer.limit_val_batches", "1.0", "--ckpt_path", str(last),
                   "--trainer.logger.init_args.save_dir", str(tmp_path / "single")])
    torch.testing.assert_close(single.trainer.callback_metrics["val/loss"], ddp_loss.float(), rtol=5e-3, atol=0)


def test_ddp_resumes_exactly_in_a_later_epoch_with_data_workers(tmp_path, corpus_dir):
    """Two ranks, a data worker each, a checkpoint in the second epoch: the resumed run reads the
    batches the uninterrupted one did (Lightning's own distributed sampler keeps no state)."""

    def run(tag: str, steps: int, *extra: str) -> list[str]:
        args = ["-c", str(CONF / "defaults.yaml"), *tiny(tmp_path / tag, [{"kind": "text_folder", "path": str(corpus_dir)}],
                                                         steps=steps),
                "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.limit_train_batches", "3",
                "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1", "--trainer.deterministic", "true",
                "--model.init_args.lr_decay_steps", "8", "--data.init_args.num_workers", "1",
                "--data.init_args.cache_dir", str(tmp_path / "cache"), "--trainer.callbacks",
                json.dumps([{"class_path": "tests.helpers.LossFile", "init_args": {"path": str(tmp_path / f"{tag}.json")}}]),
                *extra]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, str(ROOT / "xlab.py"), "fit", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads((tmp_path / f"{tag}.json").read_text())

    whole = run("whole", 8)
    first = run("part", 5)  # stops in the second epoch (3 batches an epoch)
    last = next((tmp_path / "part").rglob("last.ckpt"))
    rest = run("part", 8, "--ckpt_path", str(last))
    assert first + rest == whole
