"""Fine-tuning a pretrained GPT-2 through the real CLI with conf/finetune-gpt2.yaml (shrunk): the
folder's byte-level BPE encodes the data, its loss falls, infer.py samples the checkpoint and
export-hf's folder loads in `transformers` with the same logits."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from tests.helpers import CONF, load_script
from tests.interop.helpers import END, write_gpt2_folder_
from xlab.cli import main

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")


def finetune_args(tmp_path, corpus_dir, gpt2, steps: int = 30, *extra: str) -> list[str]:
    return [
        "-c", str(CONF / "finetune-gpt2.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
        "--trainer.limit_val_batches", "4", "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--model.init_args.init_from", str(gpt2), "--model.init_args.max_len", "32",
        "--model.init_args.learning_rate", "0.003", "--model.init_args.warmup_steps", "5",
        "--model.init_args.dropout", "0.0",
        "--data.init_args.tokenizer_path", str(gpt2),
        "--data.init_args.sources", json.dumps([{"kind": "text_folder", "path": str(corpus_dir)}]),
        "--data.init_args.cache_dir", str(tmp_path / "cache"), "--data.init_args.batch_size", "4", *extra,
    ]


@pytest.fixture
def lightning_records(caplog):
    """caplog for Lightning's messages: its logger passes no records up to the root logger (where
    caplog listens) when it was imported before the test began, as in a whole run of the suite."""
    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


def test_finetune_recipe_end_to_end(tmp_path, corpus_dir, capsys, lightning_records):
    gpt2 = write_gpt2_folder_(tmp_path / "gpt2", corpus_dir)
    hf_start = transformers.AutoModelForCausalLM.from_pretrained(gpt2).eval()
    args = finetune_args(tmp_path, corpus_dir, gpt2, 30, "--data.init_args.special_tokens", '["<speaker1>"]')
    before = main(["validate", *args]).trainer.callback_metrics["val/loss"]

    cli = main(["fit", *args])
    data, model = cli.datamodule, cli.model
    # The data speaks the folder's tokenizer, plus one special token that grew the embedding.
    assert data.vocab_size == hf_start.config.vocab_size + 1 == model.hparams.vocab_size
    assert data.eos_id == data.sos_id == data.pad_id == data.tokenizer[END] == hf_start.config.eos_token_id
    assert data.tokenizer.encode("<speaker1>") == [hf_start.config.vocab_size]
    assert data.tokens["train"][0] == data.eos_id  # every document starts with GPT-2's separator
    assert any("grew the embedding" in record.getMessage() for record in lightning_records.records)
    after = cli.trainer.callback_metrics["val/loss"]
    assert after < before - 0.5, (before, after)

    ckpt = sorted((tmp_path / "runs").rglob("last.ckpt"))[-1]
    assert model.hparams.init_from is None  # the checkpoint alone rebuilds the model
    capsys.readouterr()
    assert load_script("infer").main([str(ckpt), "Document", "--greedy", "--limit", "6"]) in (0, None)
    sample = capsys.readouterr().out
    assert sample.startswith("Document") and len(sample) > len("Document")

    manage = load_script("manage")
    assert manage.main(["inspect", str(ckpt)]) == 0
    assert f"tokenizer: {data.vocab_size} tokens" in capsys.readouterr().out
    assert manage.main(["export-checkpoint", str(ckpt), "-o", str(tmp_path / "export")]) == 0
    capsys.readouterr()
    load_script("infer").main([str(tmp_path / "export"), "Document", "--greedy", "--limit", "6"])
    assert capsys.readouterr().out == sample  # the export's tokenizer and weights are the checkpoint's

    out = tmp_path / "hf"
    assert load_script("manage").main(["export-hf", str(ckpt), "-o", str(out)]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    text = "Document 3. Kalo mine <speaker1> ruta."
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids == data.tokenizer.encode(text)
    tokens = torch.tensor([[data.sos_id, *ids]])
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, model.eval()(tokens), atol=1e-5, rtol=1e-5)
    # transformers users prompt it as infer.py does: GPT-2's separator first, as in training.
    assert tokenizer("Document").input_ids == [data.sos_id, *data.tokenizer.encode("Document")]
    assert transformers_greedy(out, "Document", 6) == [sample.rstrip("\n")] * 2


def transformers_greedy(folder, prompt: str, limit: int) -> list[str]:
    """Greedy text as a transformers user gets it: tokenizer + generate, and the pipeline."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    generated = model.generate(ids, do_sample=False, max_new_tokens=limit)
    by_generate = prompt + tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True)
    pipe = transformers.pipeline("text-generation", model=model, tokenizer=tokenizer)
    by_pipeline = pipe(prompt, do_sample=False, max_new_tokens=limit)[0]["generated_text"]
    return [by_generate, by_pipeline]


def test_a_cut_short_weight_file_is_one_line_for_init_from_and_import_hf(tmp_path, corpus_dir, capsys):
    gpt2 = write_gpt2_folder_(tmp_path / "gpt2", corpus_dir)
    weights = gpt2 / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *finetune_args(tmp_path, corpus_dir, gpt2, 1)])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("xlab: ")]
    assert exit_.value.code == 2 and len(err) == 1 and "model.safetensors is not readable safetensors" in err[0]
    with pytest.raises(SystemExit) as exit_:
        load_script("manage").main(["import-hf", str(gpt2), "-o", str(tmp_path / "imported")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "cannot load a GPT-2 model from" in err[0]
    assert not (tmp_path / "imported").exists()


def test_finetuned_checkpoint_resumes_without_the_folder(tmp_path, corpus_dir):
    from xlab.datamodules import XLabDataModule
    from xlab.models import XLabModel

    gpt2 = write_gpt2_folder_(tmp_path / "gpt2", corpus_dir)
    main(["fit", *finetune_args(tmp_path, corpus_dir, gpt2, 2)])
    ckpt = sorted((tmp_path / "runs").rglob("last.ckpt"))[-1]
    for name in os.listdir(gpt2):
        os.remove(gpt2 / name)
    model = XLabModel.load_from_checkpoint(ckpt)
    tokenizer = XLabDataModule.load_from_checkpoint(ckpt).tokenizer
    assert model.hparams.positions == "learned" and model.hparams.n_embd == 32
    assert len(tokenizer) == model.hparams.vocab_size and tokenizer.decode(tokenizer.encode("ok  é")) == "ok  é"


def test_cli_reports_folder_mismatches_in_one_line(tmp_path, corpus_dir, capsys):
    gpt2 = write_gpt2_folder_(tmp_path / "gpt2", corpus_dir)
    cases = [
        (["--data.init_args.tokenizer_path", "null", "--data.init_args.vocab_size", "390"],
         "the tokenizer has 390 tokens but the pretrained model"),
        (["--model.init_args.n_layer", "6"], "contradicts the model settings n_layer=6 (the folder has 2)"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main(["fit", *finetune_args(tmp_path, corpus_dir, gpt2, 1, *extra)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and err[-1].startswith("error: ") and message in err[-1]
        assert "Traceback" not in "\n".join(err)
