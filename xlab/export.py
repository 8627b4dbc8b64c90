"""Exports, and the one loader of checkpoints and exports used by `infer.py` and `manage.py`.

An export is a directory:
    config.json        format, model class path, init args, tied weights, tokenizer kind, training facts
    model.safetensors  the weights, each shared tensor stored once (safetensors refuses aliases), and
                       modules' extra state (MemoryGPT2's memory) flattened to `<key>.<field>` tensors
    generation.json    default `GenerationSettings`
    tokenizer.model    the sentencepiece model (or hf_tokenizer/ for imported GPT-2 models)
Loading one reads JSON and safetensors only, and builds only allow-listed model classes of the
`xlab.models` package, so a downloaded export cannot run code. Lightning checkpoints are read with
`torch.load(weights_only=True)`, which refuses pickled code too.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xlab.errors import XLabError
from xlab.inference.settings import GenerationSettings

EXPORT_FORMAT, EXPORT_VERSION = "xlab-export", 1
CONFIG, WEIGHTS, GENERATION, SPM_TOKENIZER = "config.json", "model.safetensors", "generation.json", "tokenizer.model"
_COMPILED_PREFIX = "_orig_mod."
_EXTRA_STATE = "_extra_state"
MODEL_CLASS_RECORD = "xlab_model_class"  # written into checkpoints by LanguageModel.on_save_checkpoint


@dataclass
class Loaded:
    """What sampling needs: the model (eval mode, no grad), its tokenizer and generation defaults."""

    model: Any
    tokenizer: Any
    generation: GenerationSettings
    info: dict[str, Any] = field(default_factory=dict)


# --- model classes -------------------------------------------------------------------------------
def allowed_model_classes() -> dict[str, type]:
    """Every LanguageModel subclass the `xlab.models` package exports, by class name."""
    import xlab.models as models

    base = models.LanguageModel
    found = {name: getattr(models, name) for name in getattr(models, "__all__", dir(models))}
    return {name: cls for name, cls in found.items()
            if inspect.isclass(cls) and issubclass(cls, base) and cls is not base}


def model_class(class_path: str | None, expected: type | None = None) -> type:
    """The allow-listed class named by `class_path`.

    Checkpoints of models built directly (not through LightningCLI) carry no class path: then the
    caller's `expected` class is trusted, and XLabModel assumed without one."""
    allowed = allowed_model_classes()
    if class_path is None:
        cls = expected or allowed["XLabModel"]
    else:
        module, _, name = class_path.rpartition(".")
        cls = allowed.get(name)
        if cls is None or module not in ("xlab.models", cls.__module__):
            raise XLabError(f"model class {class_path!r} is not an XLab model; known: "
                            f"{', '.join('xlab.models.' + n for n in sorted(allowed))}.")
    if expected is not None and not issubclass(cls, expected):
        raise XLabError(f"this holds a model of class {cls.__name__}, not {expected.__name__}: "
                        f"load it as {cls.__name__} (or use the matching script).")
    return cls


def saved_class_path(ckpt: dict[str, Any]) -> str | None:
    """The model class a checkpoint names: LightningCLI's class path, else the one every
    LanguageModel records itself (models built in Python have no class path in their hparams)."""
    return (ckpt.get("hyper_parameters") or {}).get("_class_path") or ckpt.get(MODEL_CLASS_RECORD)


def init_args(cls: type, hparams: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters that are arguments of `cls.__init__` (drops _class_path, _instantiator...)."""
    names: set[str] = set()
    for klass in cls.__mro__:  # subclasses forward the shared settings to the base with **kwargs
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return {k: v for k, v in dict(hparams).items() if k in names}


def _build(cls: type, args: dict[str, Any], state: dict[str, Any], source: str,
           ckpt: dict[str, Any] | None = None):
    try:
        model = cls(**args)
    except TypeError as e:
        raise XLabError(f"{source}: cannot build {cls.__name__} from its saved settings ({e}).") from None
    if ckpt is not None:
        # Lightning calls this hook before loading weights; models restore their own records in it
        # (an export passes the records its model wrote, see `checkpoint_records`).
        model.on_load_checkpoint(ckpt)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise XLabError(f"{source}: the weights do not fit a {cls.__name__} with its saved settings "
                        f"({detail}).") from None
    return model.eval().requires_grad_(False)


def checkpoint_records(model) -> dict[str, Any]:
    """What the model adds to a checkpoint besides its weights (RetroModel: which retrieval database
    it was trained with), so an export carries it as a checkpoint does."""
    records: dict[str, Any] = {}
    model.on_save_checkpoint(records)
    records.pop(MODEL_CLASS_RECORD, None)  # config.json names the class already
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


def strip_compiled_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """torch.compile'd modules save weights under `_orig_mod.`; the plain model has no such level."""
    return {key.replace(_COMPILED_PREFIX, ""): value for key, value in state.items()}


# --- checkpoints ---------------------------------------------------------------------------------
def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint as a dict, on the CPU, loaded without unpickling code."""
    import pickle
    import zipfile

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
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise XLabError(f"{path} holds pickled objects that safe loading refuses ({first[:160]}): "
                        "save checkpoints with primitive hyperparameters.") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        detail = str(e).strip().splitlines()[0].split(". ")[0][:160] if str(e).strip() else type(e).__name__
        raise XLabError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {detail}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise XLabError(f"{path} is not a Lightning checkpoint (no state_dict).")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], expected: type | None = None, source: str = "checkpoint"):
    hparams = dict(ckpt.get("hyper_parameters") or {})
    cls = model_class(saved_class_path(ckpt), expected)
    return _build(cls, init_args(cls, hparams), strip_compiled_prefix(ckpt["state_dict"]), source, ckpt)


def tokenizer_bytes(ckpt: dict[str, Any], source: str = "checkpoint") -> bytes:
    """The sentencepiece model a data module saved in the checkpoint."""
    # Lightning stores a data module's state under its class name: XLabDataModule, or a subclass.
    candidates = [ckpt.get("XLabDataModule"), *ckpt.values()]
    state = next((v for v in candidates if isinstance(v, dict) and "tokenizer_model" in v), None)
    if state is None:
        raise XLabError(f"{source} has no tokenizer: it was not trained with an XLab data module; "
                        "sample from a checkpoint written by `xlab.py fit`.")
    return bytes(state["tokenizer_model"])


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
    return info


def _number(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        return float(value)
    return float(value) if isinstance(value, (int, float)) else None


# --- exports -------------------------------------------------------------------------------------
def export_checkpoint_(ckpt_path: str | Path, out: str | Path | None = None, force: bool = False,
                       keep_memory: bool = True) -> Path:
    """Write the export of a Lightning checkpoint; default folder `<ckpt stem>-export` beside it.
    A MemoryGPT2's memory goes with it unless `keep_memory` is False."""
    from xlab.datamodules import Tokenizer

    ckpt_path = Path(ckpt_path)
    ckpt = read_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt, source=str(ckpt_path))
    if not keep_memory and getattr(model, "memory", None) is not None:
        model.memory.reset()
    tokenizer = Tokenizer(tokenizer_bytes(ckpt, str(ckpt_path)))
    out = Path(out) if out is not None else ckpt_path.with_name(f"{ckpt_path.stem}-export")
    training = {**training_info(ckpt), "checkpoint": str(ckpt_path.resolve())}
    return write_export_(out, model, {SPM_TOKENIZER: tokenizer.to_bytes()}, "sentencepiece", training, force=force)


def write_export_(out: str | Path, model, tokenizer_files: dict[str, bytes], tokenizer_kind: str,
                  training: dict[str, Any], generation: GenerationSettings | None = None,
                  force: bool = False) -> Path:
    """Write `model` and its tokenizer as an export folder, built aside and renamed into place."""
    from safetensors.torch import save_file

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
              "tokenizer": {"kind": tokenizer_kind, "files": sorted(tokenizer_files)}, "training": training}
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt"})
        (tmp / CONFIG).write_text(_to_json(config, "config"))
        (tmp / GENERATION).write_text(_to_json(generation.to_dict(), "generation settings"))
        for name, data in tokenizer_files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        _replace_(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_target(out: Path, force: bool) -> None:
    if out.is_file():
        raise XLabError(f"{out} is a file: choose a folder for the export.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise XLabError(f"{out} is not empty: pass --force to replace it, or choose another folder with -o.")


def _replace_(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an old export is removed only once the new one is there."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old)


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


def read_export_config(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / CONFIG
    if not path.is_file():
        raise XLabError(f"{folder} is not an XLab export (no {CONFIG}): export a checkpoint with "
                        "`manage.py export-checkpoint`.")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise XLabError(f"{path} is not valid JSON ({e}).") from None
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise XLabError(f"{path} is not an XLab export config (format is not {EXPORT_FORMAT!r}).")
    if config.get("version", 0) > EXPORT_VERSION:
        raise XLabError(f"{folder} was written by a newer XLab (export version {config['version']}).")
    missing = [name for name in [WEIGHTS, GENERATION, *config.get("tokenizer", {}).get("files", [])]
               if not (folder / name).is_file()]
    if missing:
        raise XLabError(f"export {folder} is missing {', '.join(missing)}: re-export the checkpoint.")
    return config


def load_export(folder: str | Path, expected: type | None = None, device: str | torch.device = "cpu") -> Loaded:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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
    model = _build(cls, config["model"]["init_args"], state, str(folder), config.get("records", {})).to(device)
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
        from xlab.hf_gpt2 import HF_TOKENIZER_DIR, HFTokenizer

        return HFTokenizer(folder / HF_TOKENIZER_DIR)
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
    from xlab.datamodules import Tokenizer

    ckpt = read_checkpoint(path)
    model = model_from_checkpoint(ckpt, expected, source=str(path)).to(device)
    tokenizer = Tokenizer(tokenizer_bytes(ckpt, str(path)))
    generation = GenerationSettings(eos_class=tokenizer.eos_id)
    class_path = saved_class_path(ckpt) or f"xlab.models.{type(model).__name__}"
    info = {"format": "checkpoint", "path": str(path), "class_path": class_path, **training_info(ckpt)}
    return Loaded(model, tokenizer, generation, info)


# --- inspection ----------------------------------------------------------------------------------
def describe(path: str | Path) -> dict[str, Any]:
    """Facts about a checkpoint or export without building the model (fast, no Lightning import)."""
    path = Path(path)
    if path.is_dir():
        return _describe_export(path)
    import sentencepiece

    ckpt = read_checkpoint(path)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    flat, extras = flatten_extra_states(strip_compiled_prefix(ckpt["state_dict"]))
    tensors, _ = unique_tensors({k: v for k, v in flat.items() if not _is_extra(k, extras)})
    try:
        # sentencepiece directly: importing xlab.datamodules would import Lightning (seconds).
        proto = tokenizer_bytes(ckpt, str(path))
        tokenizer_size = sentencepiece.SentencePieceProcessor(model_proto=proto).get_piece_size()
    except XLabError:
        tokenizer_size = None
    return {"path": str(path), "format": "checkpoint",
            "model": saved_class_path(ckpt) or "xlab.models.XLabModel (assumed: no class path saved)",
            "parameters": sum(t.numel() for t in tensors.values()), **training_info(ckpt),
            **_memory_entries(flat), "tokenizer_size": tokenizer_size,
            "settings": {k: v for k, v in hparams.items() if not k.startswith("_")},
            "file_bytes": path.stat().st_size}


def _describe_export(folder: Path) -> dict[str, Any]:
    from safetensors import safe_open

    config = read_export_config(folder)
    extras = config.get("extra_states", {})
    with safe_open(folder / WEIGHTS, framework="pt") as weights:
        shapes = {k: weights.get_slice(k).get_shape() for k in weights.keys()}
    parameters = sum(_numel(shape) for k, shape in shapes.items() if not _is_extra(k, extras))
    entries = {"memory_entries": shapes[MEMORY_IDS][0]} if MEMORY_IDS in shapes else {}
    return {"path": str(folder), "format": "export", "model": config["model"]["class_path"],
            "parameters": parameters, **entries, **config.get("training", {}),
            "tokenizer_size": _tokenizer_size(folder, config),
            "tokenizer_kind": config["tokenizer"]["kind"], "settings": config["model"]["init_args"],
            "generation": json.loads((folder / GENERATION).read_text()),
            "file_bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())}


def _tokenizer_size(folder: Path, config: dict[str, Any]) -> int:
    if config["tokenizer"]["kind"] == "sentencepiece":
        import sentencepiece

        return sentencepiece.SentencePieceProcessor(model_file=str(folder / SPM_TOKENIZER)).get_piece_size()
    return len(load_export_tokenizer(folder, config))


# Where a MemoryGPT2's stored ids are, flattened: their count is the memory's occupancy.
MEMORY_IDS = f"memory.{_EXTRA_STATE}.ids"


def _memory_entries(flat: dict[str, torch.Tensor]) -> dict[str, int]:
    return {"memory_entries": len(flat[MEMORY_IDS])} if MEMORY_IDS in flat else {}


def _is_extra(name: str, extras: dict[str, list[str]]) -> bool:
    return any(name.startswith(f"{key}.") for key in extras)


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
