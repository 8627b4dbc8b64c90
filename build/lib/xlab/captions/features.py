"""Precomputed image features, read by image id instead of decoding images every epoch.

Either a folder of `<image_id>.npy` files or one `.safetensors` file whose tensor names are the
image ids. A feature is a vector (D,) or a sequence of vectors (N, D), e.g. CLIP's pooled output
or its patch tokens; the model's `features` encoder maps it to the decoder's prefix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from xlab.common.errors import XLabError


class FeatureStore:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self._file = None
        if self.path.is_file() and self.path.suffix == ".safetensors":
            self._file = safe_open(str(self.path), framework="pt")
            self._keys = set(self._file.keys())
        elif not self.path.is_dir():
            raise XLabError(f"features {self.path} is neither a folder of .npy files nor a .safetensors file.")

    def has(self, image_id: str) -> bool:
        return image_id in self._keys if self._file is not None else (self.path / f"{image_id}.npy").is_file()

    def __getitem__(self, image_id: str) -> torch.Tensor:
        if self._file is not None:
            if image_id not in self._keys:
                raise XLabError(f"features {self.path} have no tensor named {image_id!r}.")
            return self._file.get_tensor(image_id).float()
        file = self.path / f"{image_id}.npy"
        if not file.is_file():
            raise XLabError(f"features for image {image_id!r} are missing: expected {file}.")
        try:
            return torch.from_numpy(np.load(file, allow_pickle=False).astype(np.float32))
        except (ValueError, OSError) as e:
            raise XLabError(f"features {file} are not a readable .npy array ({e}).") from None

    def __getstate__(self) -> dict:  # loader workers reopen the file themselves
        return {"path": str(self.path)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])
