"""Reading a Lightning checkpoint, and the records XLab keeps in one: the ground floor of loading.

A checkpoint is read on the CPU with `torch.load(weights_only=True)`, which refuses pickled code,
and every way a file can fail to be one (missing, a folder, truncated, foreign, pickled objects)
is a one-line `XLabError`. The rest reads records out of the dict without building a model:

    hyper_parameters["_class_path"]  the model class, written by LightningCLI
    xlab_model_class                 the model class, written by every LanguageModel itself
    xlab_state_summary               facts about the model's state beyond its weights
    xlab_last_validation             the metrics of the last validation before the checkpoint was saved
    <data module class>              its state, with the sentencepiece model (`tokenizer_model`)
    callbacks                        a ModelCheckpoint's monitored score

This module imports torch and the ground floor only, so loaders, scripts and models can all use it;
the model class a checkpoint names is imported by name (`resolve_class_path`).
"""

from __future__ import annotations

import importlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from xlab.common.errors import XLabError
from xlab.common.legacy import current_module

MODEL_CLASS_RECORD = "xlab_model_class"  # written by LanguageModel.on_save_checkpoint
STATE_SUMMARY_RECORD = "xlab_state_summary"  # LanguageModel.state_summary() at saving time
VALIDATION_RECORD = "xlab_last_validation"  # the metrics of the last validation before saving


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint as a dict, on the CPU, loaded without unpickling code."""
    path = Path(path)
    if not path.exists():
        raise XLabError(f"checkpoint {path} does not exist.")
    if path.is_dir():
        raise XLabError(f"{path} is a directory, not a checkpoint file: pass a .ckpt (or an export folder to load()).")
    if not zipfile.is_zipfile(path):  # torch has written zip archives since 1.6: anything else is not a checkpoint
        raise XLabError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): not a zip archive.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise XLabError(f"{path} holds pickled objects that safe loading refuses ({_first_line(e)}): "
                        "save checkpoints with primitive hyperparameters.") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        detail = _first_line(e).split(". ")[0] or type(e).__name__
        raise XLabError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {detail}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise XLabError(f"{path} is not a Lightning checkpoint (no state_dict).")
    return ckpt


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:160] if text else ""


# --- the model class -----------------------------------------------------------------------------
def saved_class_path(ckpt: dict[str, Any]) -> str | None:
    """The model class a checkpoint names: LightningCLI's class path, else the one every
    LanguageModel records itself (models built in Python have no class path in their hparams)."""
    return (ckpt.get("hyper_parameters") or {}).get("_class_path") or ckpt.get(MODEL_CLASS_RECORD)


def saved_class(ckpt: dict[str, Any], base: type) -> type | None:
    """The class the checkpoint names (a subclass of `base`, the outermost XLab class a caller
    accepts: LanguageModel), or None when it names none."""
    class_path = saved_class_path(ckpt)
    return None if class_path is None else resolve_class_path(class_path, base)


def resolve_class_path(class_path: str, base: type) -> type:
    """The `base` subclass at `class_path`, imported only from the xlab package, so a downloaded
    checkpoint or export cannot make a loader build anything else. Paths from before the family
    packages resolve through `xlab.common.legacy`."""
    module, _, name = class_path.rpartition(".")
    refused = XLabError(f"model class {class_path!r} is not an XLab model: a checkpoint or export names a "
                        f"{base.__name__} subclass of the xlab package (e.g. xlab.models.XLabModel).")
    if module != "xlab" and not module.startswith("xlab."):
        raise refused
    try:
        found = getattr(importlib.import_module(current_module(module)), name)
    except (ImportError, AttributeError):
        raise refused from None
    if not (isinstance(found, type) and issubclass(found, base) and found is not base):
        raise refused
    return found


def check_saved_class(ckpt: dict[str, Any], expected: type) -> None:
    """XLabError unless the checkpoint holds an `expected` (or a subclass of it); a checkpoint that
    names no class is trusted to be what the caller expects."""
    base = [klass for klass in expected.__mro__ if klass.__module__.startswith("xlab.")][-1]
    found = saved_class(ckpt, base)
    if found is not None and not issubclass(found, expected):
        raise wrong_class_error(found.__name__, expected)


def wrong_class_error(name: str, expected: type) -> XLabError:
    return XLabError(f"this holds a model of class {name}, not {expected.__name__}: "
                     f"load it as {name} (or use the matching script).")


# --- what else a checkpoint carries --------------------------------------------------------------
def data_state(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The state an XLab data module saved in the checkpoint (Lightning keeps it under the data
    module's class name; it is recognised by its tokenizer)."""
    return next((v for v in ckpt.values() if isinstance(v, dict) and "tokenizer_model" in v), None)


def tokenizer_bytes(ckpt: dict[str, Any], source: str = "checkpoint") -> bytes:
    """The tokenizer a data module saved in the checkpoint (`tokenizer_from_bytes` reads it)."""
    state = data_state(ckpt)
    if state is None:
        raise XLabError(f"{source} has no tokenizer: it was not trained with an XLab data module; "
                        "sample from a checkpoint written by `xlab.py fit`.")
    return bytes(state["tokenizer_model"])


def generation_facts(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What the data module recorded for generation beyond its tokenizer (dialogue: the turn-end
    token), so front ends read it from the checkpoint instead of a default; {} when nothing was."""
    facts = (data_state(ckpt) or {}).get("generation_facts")
    return dict(facts) if isinstance(facts, dict) else {}


def training_info(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Step, epoch and the monitored validation score, from the state of a ModelCheckpoint (or of
    a subclass: the state is recognised by its keys, not by the callback's name)."""
    info: dict[str, Any] = {"global_step": ckpt.get("global_step"), "epoch": ckpt.get("epoch")}
    for state in (ckpt.get("callbacks") or {}).values():
        if isinstance(state, dict) and state.get("monitor") and "best_model_score" in state:
            info["monitor"] = state["monitor"]
            info["best_score"] = _number(state.get("best_model_score"))
            info["current_score"] = _number(state.get("current_score"))
            break
    # ModelCheckpoint updates its current score only when a checkpoint enters its top k: the last
    # validation's own value is the model's record.
    last = ckpt.get(VALIDATION_RECORD)
    if isinstance(last, dict) and info.get("monitor") in last:
        info["current_score"] = _number(last[info["monitor"]])
    if isinstance(last, dict) and last:
        info["last_validation"] = {str(k): _number(v) for k, v in last.items()}
    return info


def state_summary(ckpt: dict[str, Any]) -> dict[str, int]:
    """The model's own facts about its state beyond the weights (MemoryGPT2: memory entries)."""
    summary = ckpt.get(STATE_SUMMARY_RECORD) or {}
    return {str(k): int(v) for k, v in summary.items()} if isinstance(summary, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        return float(value)
    return float(value) if isinstance(value, (int, float)) else None
