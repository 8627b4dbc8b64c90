"""conf/dialogue-gpt2.yaml end to end, shrunk: a tiny GPT-2 folder (its byte-level BPE trained on the
test's conversations) fine-tuned on turn-masked episodes through the real CLI; the folder's tokenizer
gains the turn-end token, validate reports the dialogue metrics and `infer.py --chat` answers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.dialogue.helpers import TURNS, replies_of, topic_episodes, write_episodes
from tests.helpers import CONF, ROOT
from tests.interop.helpers import END, write_gpt2_folder_
from xlab.cli import main
from xlab.common.errors import XLabError
from xlab.dialogue.render import episode_text

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
TURN_END = "<|turn_end|>"


def gpt2_args(tmp_path, episodes, gpt2, steps: int) -> list[str]:
    return ["-c", str(CONF / "dialogue-gpt2.yaml"),
            "--trainer.accelerator", "cpu", "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
            "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--model.init_args.init_from", str(gpt2), "--model.init_args.max_len", "48",
            "--model.init_args.learning_rate", "0.01", "--model.init_args.warmup_steps", "5",
            "--model.init_args.dropout", "0.0",
            "--data.init_args.tokenizer_path", str(gpt2), "--data.init_args.episodes", f"[{episodes}]",
            "--data.init_args.cache_dir", str(tmp_path / "cache"),
            "--data.init_args.split_fractions", "[0.7, 0.2, 0.1, 0.0]", "--data.init_args.eval_examples", "30",
            "--data.init_args.batch_size", "16", "--data.init_args.reply_tokens", "10"]


def test_dialogue_gpt2_recipe_end_to_end(tmp_path):
    episodes = topic_episodes(200, seed=3)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "talk.txt").write_text("\n".join(episode_text(e) for e in episodes), encoding="utf-8")
    gpt2 = write_gpt2_folder_(tmp_path / "gpt2", corpus)
    hf = transformers.AutoModelForCausalLM.from_pretrained(gpt2)
    args = gpt2_args(tmp_path, write_episodes(tmp_path / "topics.jsonl", episodes), gpt2, 150)

    before = main(["validate", *args]).trainer.callback_metrics
    cli = main(["fit", *args])
    data, model = cli.datamodule, cli.model
    # The folder's tokenizer plus the turn-end token, which grew the embedding by one row;
    # GPT-2 has no pad or start token: its end-of-text serves for both.
    assert data.added_tokens == 1 and data.vocab_size == hf.config.vocab_size + 1 == model.hparams.vocab_size
    assert data.tokenizer.encode(TURN_END) == [hf.config.vocab_size] == [data.renderer.turn_end_id]
    assert data.sos_id == data.eos_id == data.pad_id == data.tokenizer[END]
    with pytest.raises(XLabError, match="special token"):  # the folder's own specials are reserved too
        data.renderer.check_speaker(f"Bot{END}", "a test")
    first = data.rendered["train"][0]
    assert first.prefix[0] == data.sos_id and all(b[-1] == hf.config.vocab_size for b in first.bodies)

    ckpt = sorted((tmp_path / "runs").rglob("last.ckpt"))[-1]
    after = main(["validate", *args, "--ckpt_path", str(ckpt)]).trainer.callback_metrics
    for name in ("val/loss", "val/perplexity", "val/hits@1", "val/f1"):
        assert name in before and name in after, name
    assert after["val/loss"] < before["val/loss"] - 1.0, (before["val/loss"], after["val/loss"])
    assert after["val/hits@1"] > 0.2 and after["val/f1"] > 0.2  # Hits@1 chance is 1/20

    done = subprocess.run([sys.executable, str(ROOT / "infer.py"), str(ckpt), "--chat", "--greedy", "--limit", "12",
                           "--context", "A talk about fruit."],
                          input=TURNS, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(replies_of(done.stdout)) == 2
