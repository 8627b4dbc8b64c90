"""Exports, and the one loader of checkpoints and exports used by `infer.py` and `manage.py`.

An export is a directory:
    config.json        format, model class path, init args, tied weights, tokenizer kind, training
                       facts, the model's records and state summary
    model.safetensors  the weights, each shared tensor stored once (safetensors refuses aliases), and
                       modules' extra state (e.g. a memory) flattened to `<key>.<field>` tensors
    generation.json    default `GenerationSettings`
    tokenizer.model    the sentencepiece model (or hf_tokenizer/ for imported GPT-2 models)
Models are imported only to build one: `describe` reads the files alone, without Lightning.
Loading one reads JSON and safetensors only, and builds only allow-listed model classes
(`xlab.models.registry`), so a downloaded export cannot run code. Lightning checkpoints are read
by `xlab.checkpoint`, which refuses pickled code too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xlab.checkpoint import (MODEL_CLASS_RECORD, STATE_SUMMARY_RECORD, read_checkpoint, saved_class_path,
                             state_summary, tokenizer_bytes, training_info)
from xlab.errors import XLabError
from xlab.files import written_aside_
from xlab.inference.settings import GenerationSettings

from xlab.export_format import (CONFIG, EXPORT_FORMAT, EXPORT_VERSION, GENERATION, SPM_TOKENIZER,  # noqa: F401
                                WEIGHTS, read_export_config)

_EXTRA_STATE = "_extra_state"


@dataclass
class Loaded:
    """What sampling needs: the model (eval mode, no grad), its tokenizer and generation defaults."""

    model: Any
    tokenizer: Any
    generation: GenerationSettings
    info: dict[str, Any] = field(default_factory=dict)


# --- state dicts as tensors ---------------------------------------------------------------------
def checkpoint_records(model) -> dict[str, Any]:
    """What the model adds to a checkpoint besides its weights (RetroModel: which retrieval database
    it was trained with), so an export carries it as a checkpoint does."""
    records: dict[str, Any] = {}
    model.on_save_checkpoint(records)
    records.pop(MODEL_CLASS_RECORD, None)  # config.json names the class already
    records.pop(STATE_SUMMARY_RECORD, None)  # and keeps the summary as its own entry
    return records


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


# --- exports -------------------------------------------------------------------------------------
def export_checkpoint_(ckpt_path: str | Path, out: str | Path | None = None, force: bool = False,
                       keep_memory: bool = True) -> Path:
    """Write the export of a Lightning checkpoint; default folder `<ckpt stem>-export` beside it.
    The model's state beyond its weights (a MemoryGPT2's memory) goes with it unless `keep_memory`
    is False: then the model's `clear_state` empties it first."""
    from xlab.datamodules.tokenizer import tokenizer_from_bytes
    from xlab.models.registry import model_from_checkpoint

    ckpt_path = Path(ckpt_path)
    ckpt = read_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt, source=str(ckpt_path))
    if not keep_memory:
        model.clear_state()
    tokenizer = tokenizer_from_bytes(tokenizer_bytes(ckpt, str(ckpt_path)))
    out = Path(out) if out is not None else ckpt_path.with_name(f"{ckpt_path.stem}-export")
    training = {**training_info(ckpt), "checkpoint": str(ckpt_path.resolve())}
    files, kind = export_tokenizer_files(tokenizer)
    return write_export_(out, model, files, kind, training, force=force)


def export_tokenizer_files(tokenizer) -> tuple[dict[str, bytes], str]:
    """({path in the export: bytes}, kind) for either kind of tokenizer: a sentencepiece model as
    tokenizer.model, a pretrained Hugging Face one as the files of its own folder format."""
    if hasattr(tokenizer, "hf_files"):
        from xlab.hf_gpt2 import HF_TOKENIZER_DIR

        return {f"{HF_TOKENIZER_DIR}/{name}": data for name, data in tokenizer.hf_files().items()}, "huggingface"
    return {SPM_TOKENIZER: tokenizer.to_bytes()}, "sentencepiece"


def write_export_(out: str | Path, model, tokenizer_files: dict[str, bytes], tokenizer_kind: str,
                  training: dict[str, Any], generation: GenerationSettings | None = None,
                  force: bool = False) -> Path:
    """Write `model` and its tokenizer as an export folder, built aside and renamed into place."""
    from safetensors.torch import save_file

    from xlab.models.registry import init_args

    out = Path(out)
    _check_target(out, force)
    cls = type(model)
    flat, extras = flatten_extra_states(model.state_dict())
    tensors, tied = unique_tensors(flat)
    hp = model.hparams
    generation = generation or GenerationSettings(block_size=int(hp["max_len"]), eos_class=hp.get("eos_id"))
    config = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION,
              "model": {"class_path": f"xlab.models.{cls.__name__}", "init_args": init_args(cls, hp)},
              "tied": tied, "extra_states": extras, "records": checkpoint_records(model),
              "state_summary": model.state_summary(),
              "tokenizer": {"kind": tokenizer_kind, "files": sorted(tokenizer_files)}, "training": training}
    with written_aside_(out) as tmp:
        tmp.mkdir()
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt"})
        (tmp / CONFIG).write_text(_to_json(config, "config"))
        (tmp / GENERATION).write_text(_to_json(generation.to_dict(), "generation settings"))
        for name, data in tokenizer_files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
    return out


def _check_target(out: Path, force: bool) -> None:
    if out.is_file():
        raise XLabError(f"{out} is a file: choose a folder for the export.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise XLabError(f"{out} is not empty: pass --force to replace it, or choose another folder with -o.")


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


def _to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, indent=2, sort_keys=False) + "\n"
    except TypeError as e:
        raise XLabError(f"the {what} cannot be written as JSON ({e}): keep hyperparameters primitive.") from None


def load_export(folder: str | Path, expected: type | None = None, device: str | torch.device = "cpu") -> Loaded:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from xlab.models.registry import build_model, model_class

    folder = Path(folder)
    config = read_export_config(folder)
    cls = model_class(config["model"]["class_path"], expected)
    try:
        state = load_file(folder / WEIGHTS, device="cpu")
    except (SafetensorError, OSError) as e:
        raise XLabError(f"{folder / WEIGHTS} is not readable safetensors (corrupt?): {e}") from None
    for alias, name in config.get("tied", {}).items():
        if name not in state:
            raise XLabError(f"export {folder}: tied weight {alias} refers to missing {name}.")
        state[alias] = state[name]
    regroup_extra_states(state, config.get("extra_states", {}), str(folder))
    model = build_model(cls, config["model"]["init_args"], state, str(folder), config.get("records", {})).to(device)
    generation = _read_generation(folder / GENERATION)
    info = {"format": "export", "path": str(folder), "class_path": config["model"]["class_path"],
            **config.get("training", {})}
    return Loaded(model, load_export_tokenizer(folder, config), generation, info)


def load_export_tokenizer(folder: Path, config: dict[str, Any]):
    kind = config.get("tokenizer", {}).get("kind")
    if kind == "sentencepiece":
        from xlab.datamodules import Tokenizer

        return Tokenizer.load(folder / SPM_TOKENIZER)
    if kind == "huggingface":
        from xlab.datamodules.pretrained_tokenizer import PretrainedTokenizer
        from xlab.hf_gpt2 import HF_TOKENIZER_DIR

        return PretrainedTokenizer.from_folder(folder / HF_TOKENIZER_DIR)
    raise XLabError(f"export {folder} has an unknown tokenizer kind {kind!r}.")


def _read_generation(path: Path) -> GenerationSettings:
    try:
        return GenerationSettings.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise XLabError(f"{path} is not a valid generation settings file ({e}).") from None


def load(path: str | Path, expected: type | None = None, device: str | torch.device = "cpu") -> Loaded:
    """Model, tokenizer and generation defaults from a Lightning checkpoint or an export folder."""
    path = Path(path)
    if path.is_dir():
        return load_export(path, expected, device)
    from xlab.datamodules.tokenizer import tokenizer_from_bytes
    from xlab.models.registry import model_from_checkpoint

    ckpt = read_checkpoint(path)
    model = model_from_checkpoint(ckpt, expected, source=str(path)).to(device)
    tokenizer = tokenizer_from_bytes(tokenizer_bytes(ckpt, str(path)))
    generation = GenerationSettings(eos_class=tokenizer.eos_id)
    class_path = saved_class_path(ckpt) or f"xlab.models.{type(model).__name__}"
    info = {"format": "checkpoint", "path": str(path), "class_path": class_path, **training_info(ckpt)}
    return Loaded(model, tokenizer, generation, info)


# --- inspection ----------------------------------------------------------------------------------
def describe(path: str | Path) -> dict[str, Any]:
    """Facts about a checkpoint or export without building the model (fast, no Lightning import):
    format, class, parameter count, the model's state summary, training facts, tokenizer, settings."""
    path = Path(path)
    if path.is_dir():
        return _describe_export(path)
    import sentencepiece

    ckpt = read_checkpoint(path)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    flat, extras = flatten_extra_states(ckpt["state_dict"])
    tensors, _ = unique_tensors({k: v for k, v in flat.items() if not _is_extra(k, extras)})
    try:
        # sentencepiece directly: importing xlab.datamodules would import Lightning (seconds).
        proto = tokenizer_bytes(ckpt, str(path))
        tokenizer_size = _pretrained_tokenizer_size(proto)
        if tokenizer_size is None:
            tokenizer_size = sentencepiece.SentencePieceProcessor(model_proto=proto).get_piece_size()
    except XLabError:
        tokenizer_size = None
    return {"path": str(path), "format": "checkpoint",
            "model": saved_class_path(ckpt) or "xlab.models.XLabModel (assumed: no class path saved)",
            "parameters": sum(t.numel() for t in tensors.values()), **training_info(ckpt),
            **_state(state_summary(ckpt)), "tokenizer_size": tokenizer_size,
            "settings": {k: v for k, v in hparams.items() if not k.startswith("_")},
            "file_bytes": path.stat().st_size}


def _describe_export(folder: Path) -> dict[str, Any]:
    from safetensors import safe_open

    config = read_export_config(folder)
    extras = config.get("extra_states", {})
    with safe_open(folder / WEIGHTS, framework="pt") as weights:
        shapes = {k: weights.get_slice(k).get_shape() for k in weights.keys()}
    parameters = sum(_numel(shape) for k, shape in shapes.items() if not _is_extra(k, extras))
    return {"path": str(folder), "format": "export", "model": config["model"]["class_path"],
            "parameters": parameters, **_state(config.get("state_summary", {})), **config.get("training", {}),
            "tokenizer_size": _tokenizer_size(folder, config),
            "tokenizer_kind": config["tokenizer"]["kind"], "settings": config["model"]["init_args"],
            "generation": json.loads((folder / GENERATION).read_text()),
            "file_bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())}


def _tokenizer_size(folder: Path, config: dict[str, Any]) -> int:
    if config["tokenizer"]["kind"] == "sentencepiece":
        import sentencepiece

        return sentencepiece.SentencePieceProcessor(model_file=str(folder / SPM_TOKENIZER)).get_piece_size()
    return len(load_export_tokenizer(folder, config))


def _pretrained_tokenizer_size(data: bytes) -> int | None:
    """The vocabulary size of a pretrained tokenizer's checkpoint bytes; None for sentencepiece."""
    # pretrained_tokenizer.MAGIC, spelled out: importing xlab.datamodules would import Lightning.
    magic = b"XLAB-HF-TOKENIZER\n"
    if not data.startswith(magic):
        return None
    from tokenizers import Tokenizer as Backend

    record = json.loads(data[len(magic):].decode("utf-8"))
    return Backend.from_str(record["tokenizer_json"]).get_vocab_size(with_added_tokens=True)


def _state(summary: dict[str, int]) -> dict[str, Any]:
    """The model's state summary as facts: each entry at the top level (`memory_entries`), and
    the whole under `state`, so a reader can tell them from the other facts."""
    return {**summary, "state": summary} if summary else {}


def _is_extra(name: str, extras: dict[str, list[str]]) -> bool:
    return any(name.startswith(f"{key}.") for key in extras)


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
