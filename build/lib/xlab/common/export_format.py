"""The export folder's format: its file names, its version, reading its config, and state dicts as
the plain tensors safetensors stores.

A ground-floor module (it imports no model and no Lightning), so that code which starts a model
from an export (`xlab.models.pretrained`) or describes one (`manage.py inspect`) can read one
without importing the exporter, which imports the models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from xlab.common.errors import XLabError
from xlab.common.pretrained_tokenizer import PretrainedTokenizer
from xlab.common.tokenizer import Tokenizer

EXPORT_FORMAT, EXPORT_VERSION = "xlab-export", 1
CONFIG, WEIGHTS, GENERATION, SPM_TOKENIZER = "config.json", "model.safetensors", "generation.json", "tokenizer.model"
HF_TOKENIZER_DIR = "hf_tokenizer"  # a pretrained Hugging Face tokenizer's own files
_EXTRA_STATE = "_extra_state"


def is_export(folder: str | Path) -> bool:
    """Whether `folder`'s config.json says it is an XLab export (a transformers folder has one too)."""
    try:
        return json.loads((Path(folder) / CONFIG).read_text()).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_export_config(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / CONFIG
    if not path.is_file():
        raise XLabError(f"{folder} is not an XLab export (no {CONFIG}): export a checkpoint with "
                        "`manage.py export-checkpoint`.")
    config = read_json(path)
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise XLabError(f"{path} is not an XLab export config (format is not {EXPORT_FORMAT!r}).")
    if config.get("version", 0) > EXPORT_VERSION:
        raise XLabError(f"{folder} was written by a newer XLab (export version {config['version']}).")
    missing = [name for name in [WEIGHTS, GENERATION, *config.get("tokenizer", {}).get("files", [])]
               if not (folder / name).is_file()]
    if missing:
        raise XLabError(f"export {folder} is missing {', '.join(missing)}: re-export the checkpoint.")
    return config


def read_json(path: str | Path) -> Any:
    """A JSON file of an export; one cut short or damaged is a one-line error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise XLabError(f"{path} is not valid JSON ({e}).") from None


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on the CPU; a file cut short or damaged is a one-line error."""
    path = Path(path)
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as e:
        raise _unreadable(path, e) from None


def read_safetensors_shapes(path: str | Path) -> dict[str, list[int]]:
    """{name: shape} of a safetensors file, read from its header without loading the tensors."""
    path = Path(path)
    try:
        with safe_open(path, framework="pt") as weights:
            return {k: weights.get_slice(k).get_shape() for k in weights.keys()}
    except (SafetensorError, OSError) as e:
        raise _unreadable(path, e) from None


def _unreadable(path: Path, error: Exception) -> XLabError:
    detail = " ".join(str(error).split())[:160]
    return XLabError(f"{path} is not readable safetensors (cut short or corrupt? {detail}): copy or write it again.")


def read_export_tokenizer(folder: Path, config: dict[str, Any]) -> Tokenizer | PretrainedTokenizer:
    """The tokenizer an export folder carries, of the kind its config names."""
    kind = config.get("tokenizer", {}).get("kind")
    if kind == "sentencepiece":
        return Tokenizer.load(folder / SPM_TOKENIZER)
    if kind == "huggingface":
        return PretrainedTokenizer.from_folder(folder / HF_TOKENIZER_DIR)
    raise XLabError(f"export {folder} has an unknown tokenizer kind {kind!r}.")


# --- state dicts as tensors ---------------------------------------------------------------------
def flatten_extra_states(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """A state dict as tensors only: each module's extra state (a dict of tensors, e.g. MemoryGPT2's
    memory) becomes `<key>.<field>` tensors. Also returns {key: fields}, for `regroup_extra_states`."""
    tensors: dict[str, torch.Tensor] = {}
    extras: dict[str, list[str]] = {}
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif name.endswith(_EXTRA_STATE) and isinstance(value, dict) and all(
                isinstance(v, torch.Tensor) for v in value.values()):
            extras[name] = sorted(value)
            tensors.update({f"{name}.{field}": tensor for field, tensor in value.items()})
        else:
            raise XLabError(f"state entry {name} is a {type(value).__name__}, not tensors: it cannot be exported.")
    return tensors, extras


def regroup_extra_states(state: dict[str, torch.Tensor], extras: dict[str, list[str]], source: str) -> None:
    for name, fields in extras.items():
        missing = [field for field in fields if f"{name}.{field}" not in state]
        if missing:
            raise XLabError(f"{source}: extra state {name} lacks {', '.join(missing)}: re-export the checkpoint.")
        state[name] = {field: state.pop(f"{name}.{field}") for field in fields}


def unique_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors with each shared one under its first name, {alias: first name})."""
    first: dict[tuple, str] = {}
    tensors, tied = {}, {}
    for name, tensor in state.items():
        storage = tensor.untyped_storage().data_ptr()
        key = (storage, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))
        if tensor.numel() and key in first:
            tied[name] = first[key]
            continue
        first[key] = name
        tensors[name] = tensor.detach().cpu().contiguous()
    return tensors, tied


def is_extra_state(name: str, extras: dict[str, list[str]]) -> bool:
    """Whether `name` is a field of one of the flattened extra states."""
    return any(name.startswith(f"{key}.") for key in extras)
