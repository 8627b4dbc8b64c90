"""Image encoders that turn an image (or its precomputed features) into decoder prefix embeddings.

    conv      a small convolutional network trained from pixels (no weights to download): its
              last feature map, pooled to prefix_grid x prefix_grid cells, is the prefix
    hf        a Hugging Face vision encoder (CLIP vision or ViT) from a local folder, frozen or
              tuned; its pooled output goes through a ClipCap-style MLP to prefix_len embeddings
              (mapping: mlp), or its patch tokens through a linear map (mapping: tokens)
    features  precomputed features: a vector (D,) through the MLP to prefix_len embeddings, or
              a sequence (N, D) through a linear map

Every encoder takes uint8 pixels (B, 3, S, S) (or float features) and returns (B, P, n_embd).
Pixels are resized to the encoder's image_size if the data made another size, then normalised
with its mean and std, so that normalisation travels with the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, CLIPConfig, CLIPVisionConfig, CLIPVisionModel

from xlab.common.errors import XLabError

EncoderKind = Literal["conv", "hf", "features"]
Mapping = Literal["mlp", "tokens"]


class PixelNorm(nn.Module):
    def __init__(self, image_size: int, mean: tuple[float, float, float], std: tuple[float, float, float]):
        super().__init__()
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: Tensor) -> Tensor:
        x = pixels.float() / 255.0
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        return (x - self.mean) / self.std


class ConvEncoder(nn.Module):
    """Three stride-2 convolutions, then the map pooled to grid x grid prefix tokens."""

    def __init__(self, n_embd: int, channels: int, grid: int):
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(grid),
        )
        self.proj = nn.Linear(4 * c, n_embd)
        self.grid = grid

    @property
    def prefix_len(self) -> int:
        return self.grid * self.grid

    def forward(self, x: Tensor) -> Tensor:
        cells = self.net(x).flatten(2).transpose(1, 2)  # (B, grid*grid, 4c)
        return self.proj(cells)


class MLPMap(nn.Module):
    """ClipCap's mapping: one vector to prefix_len embeddings through a hidden layer."""

    def __init__(self, in_dim: int, n_embd: int, prefix_len: int):
        super().__init__()
        hidden = (in_dim + n_embd * prefix_len) // 2
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, n_embd * prefix_len))
        self.prefix_len, self.n_embd = prefix_len, n_embd

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).view(x.shape[0], self.prefix_len, self.n_embd)


def load_vision_config(path: str | None, saved: dict[str, Any] | None):
    """The vision model's config: from the folder, else the one a checkpoint saved."""
    if path and Path(path).expanduser().is_dir():
        config = AutoConfig.from_pretrained(str(Path(path).expanduser()))
    elif saved:
        saved = dict(saved)
        config = AutoConfig.for_model(saved.pop("model_type"), **saved)
    else:
        raise XLabError(f"vision encoder folder {path!r} does not exist: pass a local folder saved with "
                        "save_pretrained (a CLIP or ViT model).")
    if isinstance(config, CLIPConfig):
        config = CLIPVisionConfig(**config.vision_config.to_dict())
    return config


class HFVisionEncoder(nn.Module):
    """A transformers vision model (CLIPVisionModel, ViTModel, ...) plus the map to the prefix."""

    def __init__(self, path: str | None, saved_config: dict[str, Any] | None, n_embd: int, prefix_len: int,
                 mapping: Mapping, freeze: bool):
        super().__init__()
        config = load_vision_config(path, saved_config)
        folder = Path(path).expanduser() if path else None
        with_weights = folder is not None and folder.is_dir() and (
            any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")))
        cls = CLIPVisionModel if isinstance(config, CLIPVisionConfig) else AutoModel
        if with_weights:
            self.vision = cls.from_pretrained(str(folder), config=config)
        else:  # rebuilt from a checkpoint: the weights come with the checkpoint's state dict
            self.vision = cls._from_config(config) if cls is CLIPVisionModel else AutoModel.from_config(config)
        self.config_dict = {**config.to_diff_dict(), "model_type": config.model_type}
        width = config.hidden_size
        self.mapping = mapping
        self.map = MLPMap(width, n_embd, prefix_len) if mapping == "mlp" else nn.Linear(width, n_embd)
        self.freeze = freeze
        if freeze:
            self.vision.requires_grad_(False)
        image_size = config.image_size
        self.image_size = image_size if isinstance(image_size, int) else image_size[0]
        patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
        self._tokens = (self.image_size // patch) ** 2 + 1
        self._prefix = prefix_len

    @property
    def prefix_len(self) -> int:
        return self._prefix if self.mapping == "mlp" else self._tokens

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.vision.eval()  # a frozen encoder keeps its dropout off
        return self

    def forward(self, x: Tensor) -> Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            out = self.vision(pixel_values=x)
        if self.mapping == "mlp":
            pooled = out.pooler_output if getattr(out, "pooler_output", None) is not None else out.last_hidden_state[:, 0]
            return self.map(pooled)
        return self.map(out.last_hidden_state)


class FeatureEncoder(nn.Module):
    def __init__(self, feature_dim: int, n_embd: int, prefix_len: int, mapping: Mapping):
        super().__init__()
        self.mapping = mapping
        self.map = MLPMap(feature_dim, n_embd, prefix_len) if mapping == "mlp" else nn.Linear(feature_dim, n_embd)
        self._prefix = prefix_len

    @property
    def prefix_len(self) -> int | None:
        return self._prefix if self.mapping == "mlp" else None  # tokens: as many as the features have

    def forward(self, features: Tensor) -> Tensor:
        if self.mapping == "mlp" and features.dim() != 2:
            raise XLabError(f"features of shape {tuple(features.shape[1:])} need mapping: tokens (mlp maps one vector).")
        if self.mapping == "tokens" and features.dim() == 2:
            features = features[:, None]
        return self.map(features.float())
