"""bench/litgpt_compare.py without litgpt: the refusal when its virtual environment cannot be built,
the step lines it times (litgpt's as litgpt 0.5.13 prints them), the figures it derives from
them, the process-tree memory it polls, and the two configurations describing one model."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.helpers import load_script

# A line of `litgpt pretrain` 0.5.13, as it printed it in the comparison.
LITGPT_LINE = ("Epoch 1 | iter 12 step 12 | loss train: 6.746, val: n/a | iter time: 1079.07 ms (step) "
               "remaining time: 0:00:00")


@pytest.fixture(scope="module")
def bench():
    return load_script("bench/litgpt_compare")


def test_an_uninstallable_framework_is_refused_in_one_line(tmp_path):
    venvs = load_script("bench/venvs")
    folder = tmp_path / "venv"
    with pytest.raises(SystemExit) as refused:
        venvs.ensure_venv(folder, ["no-such-package-for-xlab==1.0"], pip_args=("--no-index",))
    message = str(refused.value)
    assert message.startswith("cannot install no-such-package-for-xlab==1.0"), message
    assert "\n" not in message and "no-such-package-for-xlab" in message.split(":", 1)[1], message
    assert not folder.exists()  # no half-built venv taken for a ready one next time


def test_step_lines_of_both_sides_are_read(bench, capsys):
    assert bench.LITGPT_STEP.search(LITGPT_LINE)[1] == "12"
    assert bench.LITGPT_STEP.search("Final evaluation | val loss: 6.708 | val ppl: 818.892") is None

    class Trainer:
        global_step = 7

    bench.StepLines().on_train_batch_end(Trainer(), None, None, None, 0)
    assert bench.XLAB_STEP.search(capsys.readouterr().out)[1] == "7"


def test_throughput_counts_steps_after_warmup(bench):
    run = bench.Run(stamps=[(1, 10.0), (2, 11.0), (3, 12.0), (4, 14.0)])
    assert run.first_step == 10.0
    assert run.tokens_per_s(skip=2, tokens_per_step=100) == pytest.approx(2 * 100 / 3)
    assert run.tokens_per_s(skip=1, tokens_per_step=100) == pytest.approx(3 * 100 / 4)


def test_targets_compare_against_litgpt(bench):
    litgpt = {"tokens_per_s": 1000.0, "first_step": 10.0, "wall": 100.0, "peak_rss": 1000}
    exactly = {"tokens_per_s": 1200.0, "first_step": 10.0, "wall": 80.0, "peak_rss": 1000}
    assert all(met for _, met in bench.targets(exactly, litgpt))
    short = {"tokens_per_s": 1199.0, "first_step": 10.1, "wall": 80.1, "peak_rss": 1001}
    assert not any(met for _, met in bench.targets(short, litgpt))


def test_peak_memory_covers_child_processes(bench):
    before = bench.tree_rss(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; b = bytearray(200 << 20); "
                              "print(1, flush=True); time.sleep(30)"], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # the child holds its 200 MB now
        time.sleep(0.1)
        assert bench.tree_rss(os.getpid()) - before > 150 << 20
    finally:
        child.kill()
        child.wait()


def test_both_configurations_describe_one_model(bench, tmp_path):
    args = bench.parse_args(["--steps", "30"])
    xlab = bench.xlab_config(args, tmp_path, "xlab", compile=False)["model"]["init_args"]
    litgpt = bench.litgpt_config(args, tmp_path, vocab=8000)
    model, train = litgpt["model_config"], litgpt["train"]
    assert (model["n_layer"], model["n_embd"], model["n_head"], model["block_size"], model["intermediate_size"]) == \
        (xlab["n_layer"], xlab["n_embd"], xlab["n_head"], xlab["max_len"], xlab["ffn_dim"])
    assert train["tie_embeddings"] and xlab["tie_weights"]
    # litgpt ignores a step count: its run length is tokens, which must come to exactly 30 steps.
    assert train["max_tokens"] // (train["micro_batch_size"] * train["max_seq_length"]) == 30
    assert train["min_lr"] == pytest.approx(xlab["min_lr_ratio"] * xlab["learning_rate"])
    assert litgpt["optimizer"]["init_args"]["betas"] == xlab["betas"]


def test_bad_shapes_are_refused_in_one_line(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--width", "100", "--heads", "3"])
    assert "--width 100 must be a multiple of --heads 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps", "0"])
    assert "--steps must be at least 1" in capsys.readouterr().err
