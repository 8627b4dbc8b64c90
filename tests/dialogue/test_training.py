"""conf/dialogue.yaml end to end, shrunk: fit and test report reply perplexity, Hits@1 and F1 (the
small version of bench/dialogue.py), and `infer.py --chat` holds a conversation piped into it."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import pytest
import torch

from tests.dialogue.helpers import TURNS, replies_of
from tests.helpers import ROOT, load_script


def shrink(tmp_path, topic_file, steps: int) -> list[str]:
    return ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
            "--trainer.val_check_interval", str(steps), "--trainer.callbacks", "[]",
            "--model.init_args.n_layer", "2", "--model.init_args.n_head", "2", "--model.init_args.n_embd", "48",
            "--model.init_args.max_len", "48", "--model.init_args.warmup_steps", "10",
            "--model.init_args.learning_rate", "0.01",
            "--data.init_args.episodes", f"[{topic_file}]", "--data.init_args.vocab_size", "320",
            "--data.init_args.split_fractions", "[0.7, 0.1, 0.2, 0.0]", "--data.init_args.eval_examples", "60",
            "--data.init_args.batch_size", "16", "--data.init_args.reply_tokens", "10"]


@pytest.fixture(scope="module")
def trained(topic_file, tmp_path_factory):
    bench = load_script("bench/dialogue")
    tmp = tmp_path_factory.mktemp("bench")
    # The masked half of the bench's comparison: the recipe through the real CLI, fit then test.
    return tmp, bench.train_and_test(tmp, True, 200, shrink(tmp, topic_file, 200)), bench


def test_turn_masked_training_ranks_the_true_reply_well_above_chance(trained):
    _, masked, bench = trained
    for name in ("test/loss", "test/perplexity", "test/hits@1", "test/hits@1_pmi", "test/f1"):
        assert name in masked
    assert masked["test/hits@1"] >= 0.3  # chance is 1/20
    assert masked["test/perplexity"] < 0.5 * math.exp(masked["unigram_loss"])
    assert masked["test/f1"] > 0.1
    assert "Hits@1/20" in bench.report({"masked": masked, "unmasked": masked})


def test_chat_answers_each_turn_piped_into_infer(trained):
    tmp, _, _ = trained
    ckpt = sorted((tmp / "runs" / "masked").rglob("last.ckpt"))[-1]
    done = subprocess.run([sys.executable, str(ROOT / "infer.py"), str(ckpt), "--chat", "--greedy", "--limit", "12",
                           "--context", "A talk about fruit.", "--stream"],
                          input=TURNS, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(replies_of(done.stdout)) == 2


def test_chat_from_an_export(trained, monkeypatch, capsys):
    from xlab.interop.export import export_checkpoint_, load

    tmp, _, _ = trained
    ckpt = sorted((tmp / "runs" / "masked").rglob("last.ckpt"))[-1]
    export = export_checkpoint_(ckpt, tmp / "export")
    # The turn-end token the data trained with travels in the checkpoint and in the export.
    assert load(ckpt).facts == load(export).facts == {"turn_end": "<|turn_end|>"}
    monkeypatch.setattr(sys, "stdin", io.StringIO(TURNS))
    assert load_script("infer").main([str(export), "--chat", "--greedy", "--limit", "12", "--bot-name", "Bot"]) == 0
    assert len(replies_of(capsys.readouterr().out)) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_bench_refuses_cuda_without_a_gpu():
    bench = load_script("bench/dialogue")
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--device", "cuda"])
    assert "no CUDA device is visible" in str(stopped.value.code)
