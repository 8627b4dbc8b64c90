"""CaptionModel: cached prefix decoding equals full recomputation, the loss counts caption tokens
only, and every encoder (conv, a local Hugging Face CLIP / ViT, precomputed features) builds,
trains and comes back from a checkpoint without its source folder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xlab import inference
from xlab.captions import CaptionModel
from xlab.inference import GenerationSettings
from xlab.models.registry import model_from_checkpoint

VOCAB, EOS = 40, 3


def tiny(**kwargs) -> CaptionModel:
    torch.manual_seed(0)
    settings = dict(vocab_size=VOCAB, max_len=40, n_layer=2, n_head=2, n_embd=32, image_size=16, prefix_grid=2,
                    conv_channels=8)
    return CaptionModel(**{**settings, **kwargs}).eval()


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 16, 16), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def greedy_by_recomputation(model, prefix, prompt, steps):
    """The obvious way: the whole sequence through the model at every step, no cache."""
    tokens = list(prompt)
    out = []
    for _ in range(steps):
        logits = model.prefixed_logits(prefix, torch.tensor([tokens]))
        token = int(logits[0, -1].argmax())
        if token == EOS:
            break
        out.append(token)
        tokens.append(token)
    return out


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_cached_decoding_matches_recomputation(positions):
    model = tiny(positions=positions, norm="rmsnorm" if positions == "rotary" else "layernorm")
    prefix = model.encode({"pixels": pixels(3)})
    prompts = [[2], [2, 7], [2, 9]]  # unequal lengths: the decoder left-pads them
    settings = GenerationSettings(output_length=12, eos_class=EOS, temperature=0.0)
    with torch.no_grad():
        results = model.caption(prefix, prompts, settings)
        for row, prompt in enumerate(prompts):
            assert results[row][0].tolist() == greedy_by_recomputation(model, prefix[row:row + 1], prompt, 12)


class Recomputed(torch.nn.Module):
    """One image's CaptionModel with the decoding protocol but no cache: every call runs the prefix
    and the whole text so far, the slow obvious way (`caption`'s cached view must agree with it)."""

    class Text:
        def __init__(self, rows: int):
            self.tokens = torch.zeros(rows, 0, dtype=torch.long)

        @property
        def length(self) -> int:
            return self.tokens.shape[1]

        def reset(self) -> None:
            self.tokens = self.tokens[:, :0]

        def reorder(self, index: torch.Tensor) -> None:
            self.tokens = self.tokens.index_select(0, index)

    def __init__(self, model: CaptionModel, prefix: torch.Tensor):
        super().__init__()
        self.model, self.prefix = model, prefix
        self.hparams = {**model.hparams, "max_len": model.hparams.max_len - prefix.shape[1]}

    def new_cache(self, batch_size: int, max_len: int | None = None, dtype=None) -> Recomputed.Text:
        return Recomputed.Text(batch_size)

    def forward(self, input_ids, cache, positions=None, padding_mask=None):
        assert padding_mask is None  # one prompt: no row is padded
        cache.tokens = torch.cat([cache.tokens, input_ids], dim=1)
        prefix = self.prefix.expand(len(input_ids), -1, -1)
        return self.model.prefixed_logits(prefix, cache.tokens)[:, -input_ids.shape[1]:]


def windowed_greedy(model, prefix, prompt: list[int], steps: int, room: int, keep: int) -> list[int]:
    """Greedy decoding by full recomputation of the prefix and the text's window, which keeps its
    last `keep` tokens whenever the text outgrows the `room` the prefix leaves."""
    text, start, new = list(prompt), 0, []
    for _ in range(steps):
        token = int(model.prefixed_logits(prefix, torch.tensor([text[start:]]))[0, -1].argmax())
        new.append(token)
        text.append(token)
        if len(text) - start > room:
            start = len(text) - keep
    return new


def test_sliding_window_keeps_the_prefix():
    model = tiny(max_len=12)  # prefix 4 leaves 8 text positions: 20 new tokens slide several times
    with torch.no_grad():  # loud positions: where a token sits in the window decides what comes next
        model.transformer.wpe.weight.normal_(0, 1, generator=torch.Generator().manual_seed(0))
    prefix = model.encode({"pixels": pixels(1)})
    settings = GenerationSettings(output_length=20, eos_class=[], temperature=0.0, slide_keep=4)
    with torch.no_grad():
        out = model.caption(prefix, [[2]], settings)[0][0].tolist()
        assert out == windowed_greedy(model, prefix, [2], 20, room=8, keep=4)
        assert out != windowed_greedy(model, prefix, [2], 20, room=8, keep=7)  # the slide shows


def test_beams_and_seeded_sampling_equal_decoding_without_a_cache():
    model = tiny()
    prefix = model.encode({"pixels": pixels(2)})
    beam = GenerationSettings(output_length=8, eos_class=EOS, num_beams=3, num_samples=2)
    sampling = GenerationSettings(output_length=8, eos_class=EOS, temperature=1.0, num_samples=3)
    with torch.no_grad():
        beams = model.caption(prefix, [[2], [2, 7]], beam)
        first = model.caption(prefix, [[2], [2, 7]], sampling, seed=3)
        for row, prompt in enumerate(([2], [2, 7])):
            slow = Recomputed(model, prefix[row:row + 1])
            wanted = inference.generate(slow, [torch.tensor(prompt)], beam)[0]
            assert [t.tolist() for t in beams[row]] == [t.tolist() for t in wanted]
            # A row's draws depend on the rows decoded beside it: one image alone, with its own seed.
            alone = model.caption(prefix[row:row + 1], [prompt], sampling, seed=5)[0]
            drawn = inference.generate(slow, [torch.tensor(prompt)], sampling, seed=5)[0]
            assert [t.tolist() for t in alone] == [t.tolist() for t in drawn]
    again = model.caption(prefix, [[2], [2, 7]], sampling, seed=3)
    assert [[t.tolist() for t in r] for r in first] == [[t.tolist() for t in r] for r in again]
    assert len({tuple(t.tolist()) for r in first for t in r}) > 1  # samples, not one greedy caption


def test_loss_counts_caption_tokens_only():
    model = tiny()
    input_ids = torch.tensor([[2, 7, 11, 12, 13], [2, 14, 15, 0, 0]])
    labels = torch.tensor([[-100, 11, 12, 13, 3], [14, 15, 3, -100, -100]])
    batch = {"pixels": pixels(2), "input_ids": input_ids, "labels": labels, "num_bytes": torch.tensor([3, 2])}
    loss, stats = model.loss_and_stats(batch)
    logits = model.prefixed_logits(model.encode(batch), input_ids)
    expected = F.cross_entropy(logits[labels != -100], labels[labels != -100])
    assert torch.allclose(loss, expected) and int(stats["tokens"]) == 7
    # The image changes the prediction: the prefix is read.
    other = model.prefixed_logits(model.encode({"pixels": pixels(2, seed=1)}), input_ids)
    assert not torch.allclose(logits, other)


def save_vision(tmp_path, kind: str):
    from transformers import CLIPVisionConfig, CLIPVisionModel, ViTConfig, ViTModel

    torch.manual_seed(0)
    if kind == "clip":
        config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=32, patch_size=8, projection_dim=16)
        model = CLIPVisionModel(config)
    else:
        config = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8)
        model = ViTModel(config)
    folder = tmp_path / kind
    model.save_pretrained(folder)
    return folder, model


def checkpoint_round_trip(model, tmp_path):
    """Save as Lightning would (hparams + state dict + class record) and rebuild from the dict alone."""
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "m.ckpt")
    from xlab.common.checkpoint import read_checkpoint

    return model_from_checkpoint(read_checkpoint(tmp_path / "m.ckpt"))


@pytest.mark.parametrize("kind,mapping", [("clip", "mlp"), ("vit", "tokens")])
def test_local_hugging_face_vision_encoder(tmp_path, kind, mapping):
    import shutil

    folder, vision = save_vision(tmp_path, kind)
    model = tiny(encoder="hf", vision_path=str(folder), mapping=mapping, prefix_len=5, freeze_vision=True, max_len=60)
    # The folder's weights were loaded, and frozen: only the map and the decoder learn.
    loaded = model.encoder.vision.state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in vision.state_dict().items())
    assert not any(p.requires_grad for p in model.encoder.vision.parameters())
    batch = {"pixels": pixels(2)}  # 16 px: resized to the encoder's 32
    prefix = model.encode(batch)
    assert prefix.shape == (2, 5 if mapping == "mlp" else 17, 32)
    shutil.rmtree(folder)  # a checkpoint needs no folder: the config travels in its settings
    restored = checkpoint_round_trip(model, tmp_path)
    assert torch.allclose(restored.encode(batch), prefix, atol=1e-6)


@pytest.mark.parametrize("shape,mapping,prefix", [((2, 24), "mlp", 6), ((2, 5, 24), "tokens", 5)])
def test_precomputed_feature_encoder(tmp_path, shape, mapping, prefix):
    model = tiny(encoder="features", feature_dim=24, mapping=mapping, prefix_len=6)
    features = torch.randn(*shape)
    assert model.encode({"features": features}).shape == (2, prefix, 32)
    restored = checkpoint_round_trip(model, tmp_path)
    assert torch.allclose(restored.encode({"features": features}), model.encode({"features": features}))


def test_prefix_too_long_for_the_context():
    from xlab.common.errors import XLabError

    model = tiny(max_len=8)
    with pytest.raises(XLabError, match="exceed max_len=8"):
        model.prefixed_logits(model.encode({"pixels": pixels(1)}), torch.tensor([[2, 5, 6, 7, 8]]))
