"""The caption recipes through the real CLI, shrunk: fit logs the caption metrics and keeps the best
by val/cider, the SCST stage starts from that checkpoint and logs its reward curves, infer.py
captions an image (by style; an unknown style lists the known ones), and an export captions too.
The PersonalityCaptions recipe runs on its real layout with a tiny local CLIP."""

from __future__ import annotations

import pytest
import torch

from tests.captions.helpers import save_image, shrink, write_personality
from tests.helpers import CONF, load_script
from xlab.captions.dataset import prompt_ids
from xlab.captions.images import load_pixels
from xlab.captions.metrics import caption_scores
from xlab.cli import main
from xlab.inference import GenerationSettings
from xlab.interop.export import load


def greedy_caption(model, pixels, prompt: list[int], steps: int, eos: int) -> list[int]:
    """Greedy decoding of one image by full recomputation: the prefix and the whole text every step."""
    prefix = model.encode({"pixels": pixels[None]})
    text, new = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model.prefixed_logits(prefix, torch.tensor([text]))[0, -1].argmax())
            if token == eos:
                break
            text.append(token)
            new.append(token)
    return new


def scores_by_hand(model, tokenizer, loader) -> dict[str, float]:
    """The caption metrics of a split, each image captioned on its own and scored by pycocoevalcap."""
    hypotheses, references = {}, {}
    for batch in loader:
        for pixels, prompt, refs in zip(batch["pixels"], batch["prompt"], batch["references"]):
            key = str(len(hypotheses))
            tokens = greedy_caption(model, pixels, prompt, model.hparams.max_caption_tokens, tokenizer.eos_id)
            hypotheses[key], references[key] = tokenizer.decode(tokens), list(refs)
    scores, _ = caption_scores(references, hypotheses, model.hparams.metric_tokenizer, meteor=False)
    return scores


def test_caption_recipe_scst_infer_and_export(tmp_path, capsys):
    args = ["-c", str(CONF / "caption.yaml"), *shrink(tmp_path),
            "--data.init_args.captions", '[{kind: synthetic_shapes, images: 120}]',
            "--model.init_args.conv_channels", "8", "--model.init_args.max_caption_tokens", "12"]
    cli = main(["fit", *args])
    metrics = cli.trainer.callback_metrics
    checkpoints = sorted((tmp_path / "runs" / "caption").rglob("*.ckpt"))
    assert any("cider" in c.name for c in checkpoints) and any(c.name == "last.ckpt" for c in checkpoints)
    last = next(c for c in checkpoints if c.name == "last.ckpt")
    # The last validation scored the weights last.ckpt holds: the same numbers, each val image
    # captioned on its own by full recomputation and scored here.
    loaded = load(last)
    data, tokenizer = cli.datamodule, loaded.tokenizer
    expected = scores_by_hand(loaded.model, tokenizer, data.val_dataloader())
    for name in ("bleu1", "bleu4", "rouge_l", "cider"):
        assert float(metrics[f"val/{name}"]) == pytest.approx(expected[name], abs=1e-5), name
    assert "val/meteor" not in metrics and float(metrics["val/loss"]) > 0
    best = next(c for c in cli.trainer.checkpoint_callbacks if c.monitor == "val/cider")
    assert float(best.best_model_score) >= float(metrics["val/cider"])
    assert f"cider{float(best.best_model_score):.3f}" in best.best_model_path

    tested = main(["test", *args, "--ckpt_path", str(last)])
    expected = scores_by_hand(loaded.model, tokenizer, data.test_dataloader())
    for name in ("bleu4", "rouge_l", "cider"):
        assert float(tested.trainer.callback_metrics[f"test/{name}"]) == pytest.approx(expected[name], abs=1e-5)

    scst = main(["fit", *args, "-c", str(CONF / "caption-scst.yaml"), "--trainer.max_steps", "2",
                 "--model.init_args.start_checkpoint", str(last), "--model.init_args.scst_samples", "2",
                 "--trainer.val_check_interval", "2",
                 "--data.init_args.batch_size", "4"])
    logged = {k: float(v) for k, v in scst.trainer.callback_metrics.items()}
    assert scst.model.hparams.scst_baseline == "mean" and scst.trainer.global_step == 2
    # The mean of the other samples' rewards as baseline: per image the advantages sum to zero, and
    # the mean baseline is the mean reward.
    assert logged["train/advantage"] == pytest.approx(0.0, abs=1e-6)
    assert logged["train/baseline"] == pytest.approx(logged["train/reward"], abs=1e-6)
    assert {"train/scst_loss", "val/cider"} <= set(logged)

    infer = load_script("infer")
    image = save_image(tmp_path / "shape.png", 7, mode="RGBA")
    capsys.readouterr()
    assert infer.main([str(last), "--image", str(image), "--style", "happy", "--greedy"]) == 0
    pixels = load_pixels(image, loaded.model.pixels.image_size)  # RGBA: the transform makes it RGB
    tokens = greedy_caption(loaded.model, pixels, prompt_ids(tokenizer, "happy"), 12, tokenizer.eos_id)
    assert capsys.readouterr().out == tokenizer.decode(tokens) + "\n"
    with pytest.raises(SystemExit):
        infer.main([str(last), "--image", str(image), "--style", "angry"])
    assert "known styles: formal, happy, sad" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        infer.main([str(last), "--image", str(tmp_path / "none.png")])
    assert "none.png does not exist" in capsys.readouterr().err

    manage = load_script("manage")
    manage.main(["export-checkpoint", str(last), "-o", str(tmp_path / "export")])
    capsys.readouterr()
    assert infer.main([str(tmp_path / "export"), "--image", str(image), "--beams", "2", "--num-samples", "2"]) == 0
    printed = capsys.readouterr().out
    # The export captions as the checkpoint does: its two best beams, in order.
    beams = GenerationSettings(output_length=12, eos_class=tokenizer.eos_id, num_beams=2, num_samples=2)
    with torch.no_grad():
        best_two = loaded.model.caption(loaded.model.encode({"pixels": pixels[None]}), [prompt_ids(tokenizer, None)],
                                        beams)[0]
    assert printed == "".join(f"--- caption {i + 1} of 2 ---\n{tokenizer.decode(t)}\n" for i, t in enumerate(best_two))


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
    trained = cli.model.encoder.vision.state_dict()  # frozen: still the folder's weights after training
    assert all(torch.equal(trained[name], value) for name, value in clip.state_dict().items())
