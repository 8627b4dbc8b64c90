"""A CaptionModel whose decoder is a local GPT-2 folder with that folder's tokenizer: every decoder
weight is the folder's (the style tokens add mean rows), conf/caption-gpt2.yaml trains through the
real CLI, and infer.py captions an image from the checkpoint with the folder gone. The two starting
points keep their own names: init_from is refused with a message naming both."""

from __future__ import annotations

import os

import pytest
import torch

from tests.captions.helpers import save_image, shrink
from tests.helpers import CONF, load_script
from tests.interop.helpers import write_gpt2_folder_
from xlab.captions.synthetic import STYLES, references
from xlab.cli import main
from xlab.common.errors import XLabError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

IMAGES = 60
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A tiny GPT-2 whose byte-level BPE was trained on shape captions, as a pretrained one would be."""
    corpus = tmp_path_factory.mktemp("captions-corpus")
    for seed in range(200):
        (corpus / f"{seed}.txt").write_text("\n".join(references(seed, [None, *STYLES][seed % 4])) + "\n")
    return write_gpt2_folder_(tmp_path_factory.mktemp("pretrained") / "gpt2", corpus, n_positions=64)


def test_decoder_weights_are_the_folders(gpt2, tmp_path):
    from xlab.captions import CaptionDataModule, CaptionModel

    data = CaptionDataModule(captions=[{"kind": "synthetic_shapes", "images": IMAGES}], tokenizer_path=str(gpt2),
                             cache_dir=str(tmp_path / "cache"), max_len=48)
    data.prepare_data()
    assert data.added_tokens == len(STYLES)  # one special token per style
    model = CaptionModel(decoder_from=str(gpt2), vocab_size=data.vocab_size, added_tokens=data.added_tokens,
                         sos_id=data.sos_id, eos_id=data.eos_id, pad_id=data.pad_id, max_len=48, conv_channels=8)
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2).state_dict()
    mine = model.state_dict()
    vocab = hf["transformer.wte.weight"].shape[0]
    for name, weight in hf.items():
        if name in ("transformer.wte.weight", "lm_head.weight"):  # tied: the same rows
            assert torch.equal(mine[name][:vocab], weight)
            assert torch.allclose(mine[name][vocab:], weight.mean(0).expand(len(STYLES), -1))
        elif name == "transformer.wpe.weight":
            assert torch.equal(mine[name], weight[:48])
        elif name.endswith(CONV1D):  # transformers' Conv1D stores (in, out); a Linear (out, in)
            assert torch.equal(mine[name], weight.T), name
        else:
            assert torch.equal(mine[name], weight), name
    assert model.hparams.n_embd == 32 and model.hparams.n_layer == 2 and model.encode(
        {"pixels": torch.zeros(1, 3, 32, 32, dtype=torch.uint8)}).shape == (1, 16, 32)
    assert model.hparams.decoder_from is None and "init_from" not in model.hparams  # rebuilt without the folder


def test_init_from_is_refused_with_both_names():
    from xlab.captions import CaptionModel

    with pytest.raises(XLabError, match="decoder_from.*start_checkpoint"):
        CaptionModel(init_from="models/gpt2")


def test_gpt2_recipe_trains_and_infer_captions_without_the_folder(gpt2, tmp_path, capsys):
    args = ["-c", str(CONF / "caption-gpt2.yaml"), *shrink(tmp_path, decoder_shape=False),
            "--data.init_args.captions", f"[{{kind: synthetic_shapes, images: {IMAGES}}}]",
            "--model.init_args.decoder_from", str(gpt2), "--data.init_args.tokenizer_path", str(gpt2),
            "--model.init_args.conv_channels", "8", "--model.init_args.max_caption_tokens", "12",
            "--model.init_args.metric_tokenizer", "simple"]
    cli = main(["fit", *args])
    assert cli.trainer.global_step == 4 and "val/cider" in cli.trainer.callback_metrics
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
    last = next((tmp_path / "runs" / "caption-gpt2").rglob("last.ckpt"))

    gpt2.rename(gpt2.with_name("moved"))  # the checkpoint carries the weights and the tokenizer
    try:
        image = save_image(tmp_path / "shape.png", 3)
        capsys.readouterr()
        assert load_script("infer").main([str(last), "--image", str(image), "--style", "sad", "--greedy"]) == 0
        assert capsys.readouterr().out.strip()
    finally:
        gpt2.with_name("moved").rename(gpt2)
