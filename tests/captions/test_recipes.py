"""The caption recipes through the real CLI, shrunk: fit logs the caption metrics and keeps the best
by val/cider, the SCST stage starts from that checkpoint and logs its reward curves, infer.py
captions an image (by style; an unknown style lists the known ones), and an export captions too.
The PersonalityCaptions recipe runs on its real layout with a tiny local CLIP."""

from __future__ import annotations

import pytest

from tests.captions.helpers import save_image, shrink, write_personality
from tests.helpers import CONF, load_script
from xlab.cli import main


def test_caption_recipe_scst_infer_and_export(tmp_path, capsys):
    args = ["-c", str(CONF / "caption.yaml"), *shrink(tmp_path),
            "--data.init_args.captions", '[{kind: synthetic_shapes, images: 120}]',
            "--model.init_args.conv_channels", "8", "--model.init_args.max_caption_tokens", "12"]
    cli = main(["fit", *args])
    metrics = cli.trainer.callback_metrics
    assert {"val/bleu4", "val/cider", "val/rouge_l", "val/loss"} <= set(metrics)
    best = cli.trainer.checkpoint_callback
    checkpoints = sorted((tmp_path / "runs" / "caption").rglob("*.ckpt"))
    assert any("cider" in c.name for c in checkpoints) and any(c.name == "last.ckpt" for c in checkpoints), best
    last = next(c for c in checkpoints if c.name == "last.ckpt")

    scst = main(["fit", *args, "-c", str(CONF / "caption-scst.yaml"), "--trainer.max_steps", "2",
                 "--model.init_args.start_checkpoint", str(last), "--model.init_args.scst_samples", "2",
                 "--trainer.val_check_interval", "2",
                 "--data.init_args.batch_size", "4"])
    assert {"train/reward", "train/baseline", "train/advantage", "val/cider"} <= set(scst.trainer.callback_metrics)
    for stage in ("test",):
        tested = main([stage, *args, "--ckpt_path", str(last)])
        assert "test/cider" in tested.trainer.callback_metrics

    infer = load_script("infer")
    image = save_image(tmp_path / "shape.png", 7, mode="RGBA")
    capsys.readouterr()
    assert infer.main([str(last), "--image", str(image), "--style", "happy", "--greedy"]) == 0
    assert capsys.readouterr().out.strip()
    with pytest.raises(SystemExit):
        infer.main([str(last), "--image", str(image), "--style", "angry"])
    assert "known styles: formal, happy, sad" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        infer.main([str(last), "--image", str(tmp_path / "none.png")])
    assert "none.png does not exist" in capsys.readouterr().err

    manage = load_script("manage")
    manage.main(["export-checkpoint", str(last), "-o", str(tmp_path / "export")])
    assert infer.main([str(tmp_path / "export"), "--image", str(image), "--beams", "2", "--num-samples", "2"]) == 0
    assert "caption 2 of 2" in capsys.readouterr().out


def test_personality_recipe_with_a_local_clip(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    root = write_personality(tmp_path / "pc", images=30)
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=32, patch_size=16, projection_dim=16))
    clip.save_pretrained(tmp_path / "clip")
    cli = main(["fit", "-c", str(CONF / "caption-personality.yaml"), *shrink(tmp_path, steps=2),
                "--trainer.callbacks", "[]", "--model.init_args.vision_path", str(tmp_path / "clip"),
                "--model.init_args.meteor", "false", "--model.init_args.metric_tokenizer", "simple",
                "--model.init_args.dropout", "0.0", "--data.init_args.num_workers", "0",
                "--data.init_args.image_size", "32", "--data.init_args.vocab_size", "320",
                "--data.init_args.captions", f'[{{kind: personality_captions, path: "{root}", image_dir: "{root}/images"}}]'])
    assert cli.trainer.global_step == 2 and "val/cider" in cli.trainer.callback_metrics
    assert not any(p.requires_grad for p in cli.model.encoder.vision.parameters())
