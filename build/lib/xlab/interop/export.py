"""Exports, and the one loader of checkpoints and exports used by `infer.py` and `manage.py`.

An export is a directory:
    config.json        format, model class path, init args, tied weights, tokenizer kind, training
                       facts, the model's records and state summary
    model.safetensors  the weights, each shared tensor stored once (safetensors refuses aliases), and
                       modules' extra state (e.g. a memory) flattened to `<key>.<field>` tensors
    generation.json    default `GenerationSettings`
    tokenizer.model    the sentencepiece model (or hf_tokenizer/ for imported GPT-2 models)
Loading one reads JSON and safetensors only, and builds only XLab model classes
(`xlab.models.registry`), so a downloaded export cannot run code. Lightning checkpoints are read
by `xlab.common.checkpoint`, which refuses pickled code too. `describe.py` reads either without
building the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from xlab.common.checkpoint import (MODEL_CLASS_RECORD, STATE_SUMMARY_RECORD, generation_facts, read_checkpoint,
                                     saved_class_path, tokenizer_bytes, training_info)
from xlab.common.errors import XLabError
from xlab.common.export_format import (CONFIG, EXPORT_FORMAT, EXPORT_VERSION, GENERATION, HF_TOKENIZER_DIR,
                                       SPM_TOKENIZER, WEIGHTS, flatten_extra_states, read_export_config,
                                       read_export_tokenizer, read_json, read_safetensors, regroup_extra_states,
                                       unique_tensors)
from xlab.common.files import written_aside_
from xlab.common.tokenizer import tokenizer_from_bytes
from xlab.inference.settings import GenerationSettings
from xlab.models.registry import build_model, class_path_of, init_args, model_class, model_from_checkpoint


@dataclass
class Loaded:
    """What sampling needs: the model (eval mode, no grad), its tokenizer and generation defaults."""

    model: Any
    tokenizer: Any
    generation: GenerationSettings
    info: dict[str, Any] = field(default_factory=dict)
    # What the data taught the model beyond its tokenizer, for the front ends (dialogue: turn_end).
    facts: dict[str, Any] = field(default_factory=dict)


def checkpoint_records(model) -> dict[str, Any]:
    """What the model adds to a checkpoint besides its weights (RetroModel: which retrieval database
    it was trained with), so an export carries it as a checkpoint does."""
    records: dict[str, Any] = {}
    model.on_save_checkpoint(records)
    records.pop(MODEL_CLASS_RECORD, None)  # config.json names the class already
    records.pop(STATE_SUMMARY_RECORD, None)  # and keeps the summary as its own entry
    return records


# --- exports -------------------------------------------------------------------------------------
def export_checkpoint_(ckpt_path: str | Path, out: str | Path | None = None, force: bool = False,
                       keep_memory: bool = True) -> Path:
    """Write the export of a Lightning checkpoint; default folder `<ckpt stem>-export` beside it.
    The model's state beyond its weights (a MemoryGPT2's memory) goes with it unless `keep_memory`
    is False: then the model's `clear_state` empties it first."""
    ckpt_path = Path(ckpt_path)
    ckpt = read_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt, source=str(ckpt_path))
    if not keep_memory:
        model.clear_state()
    tokenizer = tokenizer_from_bytes(tokenizer_bytes(ckpt, str(ckpt_path)))
    out = Path(out) if out is not None else ckpt_path.with_name(f"{ckpt_path.stem}-export")
    training = {**training_info(ckpt), "checkpoint": str(ckpt_path.resolve())}
    files, kind = export_tokenizer_files(tokenizer)
    return write_export_(out, model, files, kind, training, force=force, facts=generation_facts(ckpt))


def export_tokenizer_files(tokenizer) -> tuple[dict[str, bytes], str]:
    """({path in the export: bytes}, kind) for either kind of tokenizer: a sentencepiece model as
    tokenizer.model, a pretrained Hugging Face one as the files of its own folder format."""
    if hasattr(tokenizer, "hf_files"):
        return {f"{HF_TOKENIZER_DIR}/{name}": data for name, data in tokenizer.hf_files().items()}, "huggingface"
    return {SPM_TOKENIZER: tokenizer.to_bytes()}, "sentencepiece"


def write_export_(out: str | Path, model, tokenizer_files: dict[str, bytes], tokenizer_kind: str,
                  training: dict[str, Any], generation: GenerationSettings | None = None,
                  force: bool = False, facts: dict[str, Any] | None = None) -> Path:
    """Write `model` and its tokenizer as an export folder, built aside and renamed into place."""
    out = Path(out)
    check_target(out, force)
    cls = type(model)
    flat, extras = flatten_extra_states(model.state_dict())
    tensors, tied = unique_tensors(flat)
    hp = model.hparams
    generation = generation or GenerationSettings(block_size=int(hp["max_len"]), eos_class=hp.get("eos_id"))
    config = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION,
              "model": {"class_path": class_path_of(cls), "init_args": init_args(cls, hp)},
              "tied": tied, "extra_states": extras, "records": checkpoint_records(model),
              "state_summary": model.state_summary(),
              "tokenizer": {"kind": tokenizer_kind, "files": sorted(tokenizer_files)}, "training": training,
              "generation_facts": dict(facts or {})}
    with written_aside_(out) as tmp:
        tmp.mkdir()
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt"})
        (tmp / CONFIG).write_text(_to_json(config, "config"))
        (tmp / GENERATION).write_text(_to_json(generation.to_dict(), "generation settings"))
        for name, data in tokenizer_files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
    return out


def check_target(out: Path, force: bool) -> None:
    if out.is_file():
        raise XLabError(f"{out} is a file: choose a folder for the export.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise XLabError(f"{out} is not empty: pass --force to replace it, or choose another folder with -o.")


def _to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, indent=2, sort_keys=False) + "\n"
    except TypeError as e:
        raise XLabError(f"the {what} cannot be written as JSON ({e}): keep hyperparameters primitive.") from None


def load_export(folder: str | Path, expected: type | None = None, device: str | torch.device = "cpu") -> Loaded:
    folder = Path(folder)
    config = read_export_config(folder)
    cls = model_class(config["model"]["class_path"], expected)
    state = read_safetensors(folder / WEIGHTS)
    for alias, name in config.get("tied", {}).items():
        if name not in state:
            raise XLabError(f"export {folder}: tied weight {alias} refers to missing {name}.")
        state[alias] = state[name]
    regroup_extra_states(state, config.get("extra_states", {}), str(folder))
    model = build_model(cls, config["model"]["init_args"], state, str(folder), config.get("records", {})).to(device)
    generation = _read_generation(folder / GENERATION)
    info = {"format": "export", "path": str(folder), "class_path": config["model"]["class_path"],
            **config.get("training", {})}
    return Loaded(model, read_export_tokenizer(folder, config), generation, info, config.get("generation_facts", {}))


def _read_generation(path: Path) -> GenerationSettings:
    values = read_json(path)
    if not isinstance(values, dict):
        raise XLabError(f"{path} is not a valid generation settings file (not a JSON object): re-export the checkpoint.")
    try:
        return GenerationSettings.from_dict(values)
    except TypeError as e:
        raise XLabError(f"{path} is not a valid generation settings file ({e}).") from None


def load(path: str | Path, expected: type | None = None, device: str | torch.device = "cpu") -> Loaded:
    """Model, tokenizer and generation defaults from a Lightning checkpoint or an export folder."""
    path = Path(path)
    if path.is_dir():
        return load_export(path, expected, device)
    ckpt = read_checkpoint(path)
    model = model_from_checkpoint(ckpt, expected, source=str(path)).to(device)
    tokenizer = tokenizer_from_bytes(tokenizer_bytes(ckpt, str(path)))
    generation = GenerationSettings(eos_class=tokenizer.eos_id)
    class_path = saved_class_path(ckpt) or class_path_of(type(model))
    info = {"format": "checkpoint", "path": str(path), "class_path": class_path, **training_info(ckpt)}
    return Loaded(model, tokenizer, generation, info, generation_facts(ckpt))
