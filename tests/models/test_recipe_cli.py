"""The recipe's settings through the real CLI: a run with Muon, the trapezoid and every switch on trains,
exports to an XLab folder that gives the checkpoint's logits and samples with beams, and export-hf
refuses it in one line naming the setting."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import CONF, TOKENIZER_SIZE
from xlab import inference
from xlab.cli import main
from xlab.common.errors import XLabError
from xlab.interop.export import export_checkpoint_, load
from xlab.interop.export_hf import export_hf_

SWITCHES = {"optimizer": "muon", "lr_schedule": "trapezoid", "qk_norm": "true", "activation": "relu2",
            "logit_softcap": "15.0", "zero_init": "true", "value_embeddings": "true", "document_mask": "true", "tie_weights": "false",
            "head_lr": "0.004", "embedding_lr": "0.01"}


def test_a_run_with_every_switch_trains_exports_and_samples(corpus_dir, tmp_path):
    args = ["fit", "-c", str(CONF / "defaults.yaml"),
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.max_steps", "3",
            "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--model.init_args.n_layer", "1", "--model.init_args.n_head", "2", "--model.init_args.n_embd", "32",
            "--model.init_args.max_len", "16",
            "--data.init_args.sources", json.dumps([{"kind": "text_folder", "path": str(corpus_dir)}]),
            "--data.init_args.vocab_size", str(TOKENIZER_SIZE), "--data.init_args.cache_dir", str(tmp_path / "cache"),
            "--data.init_args.batch_size", "4"]
    for name, value in SWITCHES.items():
        args += [f"--model.init_args.{name}", value]
    main(args)
    checkpoint = sorted((tmp_path / "runs").rglob("last.ckpt"))[-1]
    from_ckpt = load(checkpoint)
    hp = from_ckpt.model.hparams
    assert hp.optimizer == "muon" and hp.qk_norm and hp.document_mask and hp.logit_softcap == 15.0
    out = export_checkpoint_(checkpoint, tmp_path / "export")
    from_export = load(out)
    prompt = torch.tensor([from_export.tokenizer.sos_id] + from_export.tokenizer.encode("Document 3."))
    with torch.no_grad():
        torch.testing.assert_close(from_export.model(prompt[None]), from_ckpt.model(prompt[None]), rtol=0, atol=0)
    beams = inference.sample(from_export.model, prompt, output_length=20, num_beams=2, num_samples=2)
    assert len(beams) == 2
    with pytest.raises(XLabError, match="^logit_softcap=15.0 cannot be exported"):  # the first it cannot express
        export_hf_(out, tmp_path / "hf")
