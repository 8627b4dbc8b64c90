"""xlab/captions/image_encoders.py: pixels normalised as the weights expect, the conv encoder's pooled
grid, the feature encoder's two mappings, and a local CLIP folder as HFVisionEncoder (its weights,
frozen and kept frozen, its config rebuilt from the saved dict without the folder); a missing
folder and features of the wrong rank are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xlab.captions.image_encoders import ConvEncoder, FeatureEncoder, HFVisionEncoder, MLPMap, PixelNorm
from xlab.common.errors import XLabError

transformers = pytest.importorskip("transformers")

MEAN, STD = (0.5, 0.25, 0.125), (0.5, 0.25, 2.0)


def pixels(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_pixel_norm_scales_normalises_and_resizes():
    x = pixels(2)
    by_hand = (x.float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    assert torch.equal(PixelNorm(16, MEAN, STD)(x), by_hand)
    resized = PixelNorm(32, MEAN, STD)(x)
    assert resized.shape == (2, 3, 32, 32)
    expected = F.interpolate(x.float() / 255, size=(32, 32), mode="bicubic", align_corners=False)
    torch.testing.assert_close(resized, (expected - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])
    flat = torch.full((1, 3, 8, 8), 51, dtype=torch.uint8)  # one colour stays that colour at any size
    torch.testing.assert_close(PixelNorm(24, MEAN, STD)(flat)[0, :, 5, 7],
                               (0.2 - torch.tensor(MEAN)) / torch.tensor(STD), rtol=0, atol=1e-6)


def test_conv_encoder_gives_grid_cells_of_the_pooled_map():
    torch.manual_seed(0)
    encoder = ConvEncoder(n_embd=24, channels=4, grid=3)
    x = PixelNorm(16, MEAN, STD)(pixels(2))
    out = encoder(x)
    assert encoder.prefix_len == 9 and out.shape == (2, 9, 24)
    feature_map = encoder.net[:-1](x)  # (2, 16, 2, 2): three stride-2 convolutions of 16 px
    assert feature_map.shape == (2, 16, 2, 2)
    one = ConvEncoder(n_embd=24, channels=4, grid=1)
    one.load_state_dict(encoder.state_dict())
    # One cell: the mean over the whole map, projected.
    torch.testing.assert_close(one(x)[:, 0], encoder.proj(feature_map.mean((2, 3))))


def test_mlp_map_splits_its_output_into_consecutive_prefix_embeddings():
    torch.manual_seed(0)
    mapping = MLPMap(in_dim=10, n_embd=6, prefix_len=4)
    assert mapping.net[0].out_features == (10 + 6 * 4) // 2
    x = torch.randn(3, 10)
    flat = mapping.net(x)
    out = mapping(x)
    assert out.shape == (3, 4, 6)
    for p in range(4):
        assert torch.equal(out[:, p], flat[:, 6 * p: 6 * (p + 1)])


def test_feature_encoder_maps_a_vector_or_each_token():
    torch.manual_seed(0)
    vectors = FeatureEncoder(feature_dim=12, n_embd=8, prefix_len=5, mapping="mlp")
    assert vectors.prefix_len == 5 and vectors(torch.randn(2, 12)).shape == (2, 5, 8)
    with pytest.raises(XLabError, match=r"features of shape \(7, 12\) need mapping: tokens"):
        vectors(torch.randn(2, 7, 12))
    tokens = FeatureEncoder(feature_dim=12, n_embd=8, prefix_len=5, mapping="tokens")
    assert tokens.prefix_len is None  # as many as the features have
    sequence = torch.randn(2, 7, 12, dtype=torch.float64)
    out = tokens(sequence)
    assert out.dtype == torch.float32 and out.shape == (2, 7, 8)
    torch.testing.assert_close(out[1, 3], tokens.map(sequence[1, 3].float()))
    torch.testing.assert_close(tokens(sequence[:, 0]), out[:, :1])  # a vector is one token


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16,
                                           attention_dropout=0.5)
    vision = transformers.CLIPVisionModel(config).eval()
    folder = tmp_path_factory.mktemp("clip") / "vision"
    vision.save_pretrained(folder)
    return folder, vision


@pytest.mark.parametrize("mapping", ["mlp", "tokens"])
def test_a_local_clip_folder_is_the_encoder(clip_folder, mapping):
    folder, vision = clip_folder
    torch.manual_seed(1)
    encoder = HFVisionEncoder(str(folder), None, n_embd=24, prefix_len=3, mapping=mapping, freeze=True).eval()
    assert encoder.image_size == 32 and encoder.prefix_len == (3 if mapping == "mlp" else 17)  # 4x4 patches + CLS
    mine = encoder.vision.state_dict()
    assert all(torch.equal(mine[name], value) for name, value in vision.state_dict().items())
    x = PixelNorm(32, MEAN, STD)(pixels(2, size=32))
    with torch.no_grad():
        out = vision(pixel_values=x)
        expected = encoder.map(out.pooler_output if mapping == "mlp" else out.last_hidden_state)
        assert torch.equal(encoder(x), expected)
    assert encoder(x).shape == (2, encoder.prefix_len, 24)


def test_frozen_weights_stay_frozen_and_unfrozen_ones_learn(clip_folder):
    folder, vision = clip_folder
    x = PixelNorm(32, MEAN, STD)(pixels(2, size=32))
    for freeze in (True, False):
        torch.manual_seed(1)
        encoder = HFVisionEncoder(str(folder), None, n_embd=24, prefix_len=3, mapping="mlp", freeze=freeze)
        encoder.train()
        assert encoder.vision.training is not freeze  # a frozen encoder keeps its dropout off
        optimizer = torch.optim.SGD([p for p in encoder.parameters() if p.requires_grad], lr=0.5)
        before = {k: v.clone() for k, v in encoder.state_dict().items()}
        encoder(x).square().mean().backward()
        optimizer.step()
        changed = {k for k, v in encoder.state_dict().items() if not torch.equal(v, before[k])}
        assert {k for k in changed if k.startswith("map.")} == {k for k in before if k.startswith("map.")}
        vision_changed = {k for k in changed if k.startswith("vision.")}
        if freeze:
            assert not vision_changed and all(p.grad is None for p in encoder.vision.parameters())
        else:
            assert "vision.encoder.layers.0.self_attn.q_proj.weight" in vision_changed


def test_the_saved_config_rebuilds_the_encoder_without_the_folder(clip_folder, tmp_path):
    folder, _ = clip_folder
    torch.manual_seed(1)
    encoder = HFVisionEncoder(str(folder), None, n_embd=24, prefix_len=3, mapping="tokens", freeze=True).eval()
    saved = encoder.config_dict
    assert saved["model_type"] == "clip_vision_model" and saved["hidden_size"] == 32 and saved["patch_size"] == 8
    for path in (None, str(tmp_path / "gone")):  # no folder given, or one that no longer exists
        torch.manual_seed(2)
        rebuilt = HFVisionEncoder(path, dict(saved), n_embd=24, prefix_len=3, mapping="tokens", freeze=True).eval()
        assert rebuilt.config_dict == saved and rebuilt.prefix_len == 17
        assert not torch.equal(rebuilt.vision.state_dict()["embeddings.patch_embedding.weight"],
                               encoder.vision.state_dict()["embeddings.patch_embedding.weight"])
        rebuilt.load_state_dict(encoder.state_dict(), strict=True)  # the weights come with the checkpoint
        x = PixelNorm(32, MEAN, STD)(pixels(1, size=32))
        with torch.no_grad():
            assert torch.equal(rebuilt(x), encoder(x))


def test_a_whole_clip_model_folder_gives_its_vision_half(tmp_path):
    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                  patch_size=8)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=40)
    clip = transformers.CLIPModel(transformers.CLIPConfig(vision_config=vision, text_config=text, projection_dim=16))
    clip.save_pretrained(tmp_path / "clip")
    encoder = HFVisionEncoder(str(tmp_path / "clip"), None, n_embd=24, prefix_len=2, mapping="mlp", freeze=True)
    assert type(encoder.vision).__name__ == "CLIPVisionModel" and encoder.prefix_len == 2
    assert encoder.config_dict["model_type"] == "clip_vision_model" and encoder.image_size == 16
    mine = encoder.vision.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in clip.vision_model.state_dict().items())


def test_a_missing_folder_without_a_saved_config_is_refused(tmp_path):
    with pytest.raises(XLabError, match=r"vision encoder folder '.*nowhere' does not exist: pass a local folder"):
        HFVisionEncoder(str(tmp_path / "nowhere"), None, n_embd=24, prefix_len=3, mapping="mlp", freeze=True)
