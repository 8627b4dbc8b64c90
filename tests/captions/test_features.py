"""xlab/captions/features.py: FeatureStore reads each image's features by id, as float32, from a folder
of `<image_id>.npy` files or from one `.safetensors` file (vectors and sequences alike), survives
being pickled to a loader worker, and names what is missing or unreadable."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from xlab.captions.features import FeatureStore
from xlab.common.errors import XLabError

FEATURES = {
    "img-0": np.arange(6, dtype=np.float16) / 4,  # a pooled vector
    "0042": np.arange(12, dtype=np.float64).reshape(3, 4) - 5.5,  # a sequence of patch tokens
    "a.b": np.full(5, 0.1, dtype=np.float32),
}


@pytest.fixture
def npy_folder(tmp_path):
    for image_id, array in FEATURES.items():
        np.save(tmp_path / f"{image_id}.npy", array)
    return tmp_path


@pytest.fixture
def safetensors_file(tmp_path):
    path = tmp_path / "features.safetensors"
    save_file({image_id: torch.from_numpy(array) for image_id, array in FEATURES.items()}, path)
    return path


@pytest.mark.parametrize("layout", ["npy", "safetensors"])
def test_features_come_back_by_id_as_float32(layout, npy_folder, safetensors_file):
    store = FeatureStore(npy_folder if layout == "npy" else safetensors_file)
    for image_id, array in FEATURES.items():
        assert store.has(image_id)
        features = store[image_id]
        assert features.dtype == torch.float32 and tuple(features.shape) == array.shape
        assert torch.equal(features, torch.from_numpy(array.astype(np.float32)))
    assert not store.has("img-1") and not store.has("features")
    again = pickle.loads(pickle.dumps(store))  # a loader worker reopens the file itself
    assert again.path == store.path and torch.equal(again["0042"], store["0042"])


def test_missing_ids_are_named(npy_folder, safetensors_file):
    with pytest.raises(XLabError, match=r"features for image 'img-9' are missing: expected .*img-9\.npy"):
        FeatureStore(npy_folder)["img-9"]
    with pytest.raises(XLabError, match=r"features .*features\.safetensors have no tensor named 'img-9'"):
        FeatureStore(safetensors_file)["img-9"]


def test_unreadable_files_and_paths_are_refused(tmp_path):
    np.save(tmp_path / "pickled.npy", np.array([{"not": "numbers"}], dtype=object), allow_pickle=True)
    (tmp_path / "broken.npy").write_bytes(b"not an array")
    store = FeatureStore(tmp_path)
    for image_id in ("pickled", "broken"):
        with pytest.raises(XLabError, match=rf"features .*{image_id}\.npy are not a readable \.npy array"):
            store[image_id]
    for path in (tmp_path / "nowhere", tmp_path / "pickled.npy"):
        with pytest.raises(XLabError, match=r"is neither a folder of \.npy files nor a \.safetensors file"):
            FeatureStore(path)
