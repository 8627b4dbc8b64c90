"""Starting weights for XLabModel (`init_from`): an XLab export or checkpoint, or a Hugging Face GPT-2 / Llama /
Qwen3 / Arcee folder.

The folder decides the architecture. A setting given to the model that differs both from the
folder and from the model's default contradicts the folder and is refused; a setting left at
its default takes the folder's value. (A default given explicitly cannot be told from one left
alone, so it too takes the folder's value.) `max_len` is the run's choice, up to the folder's.

The vocabulary must be the tokenizer's. The one mismatch allowed is the data module's special
tokens added to the pretrained tokenizer (`added_tokens`): the embedding and an untied head
grow by exactly that many rows, each the mean of the pretrained rows, so a new token starts as
an average token instead of noise that would dominate the first steps' loss.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info

from xlab.common.checkpoint import read_checkpoint, saved_class_path
from xlab.common.errors import XLabError
from xlab.common.export_format import WEIGHTS, is_export, read_export_config, read_safetensors
from xlab.models.hf_weights import (LLAMA_FAMILY, read_hf_config, read_hf_weights, xlab_settings_from_hf,
                                    xlab_state_from_hf)

ARCHITECTURE = ("n_layer", "n_head", "n_embd", "ffn_dim", "positions", "rope_base", "norm", "norm_position",
                "activation", "bias", "tie_weights", "norm_eps", "n_kv_head", "qk_norm", "logit_softcap",
                "value_embeddings")


@dataclass
class StartingPoint:
    source: str  # the folder, for messages
    kind: str  # "XLab export", "XLab checkpoint", "GPT-2", "Llama", "Qwen3" or "Arcee"
    settings: dict  # ARCHITECTURE values plus vocab_size and max_len
    state: dict  # weights under XLabModel's names, lm_head.weight included


def read_starting_point(path: str | Path, cls: type) -> StartingPoint:
    folder = Path(path).expanduser()
    if folder.is_file():
        return checkpoint_start(read_checkpoint(folder), folder, cls)
    if not folder.is_dir():
        raise XLabError(f"init_from {folder} does not exist: give an XLab export or checkpoint (.ckpt), or a Hugging "
                        "Face save_pretrained folder.")
    if not is_export(folder):
        config = read_hf_config(folder)
        settings = xlab_settings_from_hf(config, str(folder))
        state = xlab_state_from_hf(config, read_hf_weights(folder), settings["tie_weights"])
        kind = "GPT-2" if config["model_type"] == "gpt2" else LLAMA_FAMILY[config["model_type"]]["name"]
        return StartingPoint(str(folder), kind, settings, state)
    config = read_export_config(folder)
    state = read_safetensors(folder / WEIGHTS)
    for alias, name in config.get("tied", {}).items():
        state[alias] = state[name]
    return _xlab_start(folder, "XLab export", config["model"]["class_path"], config["model"]["init_args"], state, cls)


def checkpoint_start(ckpt: dict, path: Path, cls: type) -> StartingPoint:
    """The starting point in a checkpoint already read (`read_checkpoint`)."""
    return _xlab_start(path, "XLab checkpoint", checkpoint_class_path(ckpt), ckpt.get("hyper_parameters") or {},
                       checkpoint_weights(ckpt), cls)


def checkpoint_class_path(ckpt: dict) -> str:
    """The model class a checkpoint was saved from; XLabModel for one built in Python before
    classes were recorded."""
    return saved_class_path(ckpt) or "xlab.models.XLabModel"


def checkpoint_weights(ckpt: dict) -> dict:
    """A checkpoint's weights under the model's own names: compiled runs of old saved them under
    the compiled module's prefix."""
    return {name.removeprefix("_orig_mod."): value for name, value in ckpt["state_dict"].items()}


def _xlab_start(source: Path, kind: str, class_path: str, args: dict, state: dict, cls: type) -> StartingPoint:
    if not class_path.endswith(".XLabModel"):
        raise XLabError(f"init_from {source} holds a {class_path}: only XLabModel weights can start an XLabModel.")
    defaults = _defaults(cls)  # settings an older export or checkpoint did not record
    settings = {name: args.get(name, defaults[name]) for name in ARCHITECTURE}
    settings.update(vocab_size=args["vocab_size"], max_len=args["max_len"])
    if settings["tie_weights"]:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return StartingPoint(str(source), kind, settings, state)


def _defaults(cls: type) -> dict:
    # The model class is passed in, not imported: the models import this module. A subclass
    # (CaptionModel) passes the architecture on in **kwargs: the nearest class naming it decides.
    defaults = {}
    for klass in reversed(cls.__mro__):
        params = inspect.signature(klass.__init__).parameters
        defaults.update({name: params[name].default for name in ARCHITECTURE if name in params})
    return defaults


def architecture_of(start: StartingPoint, cls: type, given: dict) -> tuple:
    """The architecture settings in ARCHITECTURE order: the folder's, after checking `given`."""
    defaults = _defaults(cls)
    wanted = start.settings
    clashes = [f"{name}={given[name]!r} (the folder has {wanted[name]!r})" for name in ARCHITECTURE
               if given[name] != defaults[name] and given[name] != wanted[name]]
    if clashes:
        raise XLabError(f"init_from {start.source} ({start.kind}) contradicts the model settings "
                        f"{', '.join(clashes)}: remove them from the YAML, the folder decides the architecture.")
    return tuple(wanted[name] for name in ARCHITECTURE)


def load_starting_weights(model, start: StartingPoint) -> None:
    """Copy the folder's weights into `model`, growing the vocabulary by `added_tokens` if asked."""
    hp = model.hparams
    state = dict(start.state)
    pretrained, added = start.settings["vocab_size"], int(hp.get("added_tokens", 0))
    if hp.vocab_size != pretrained + added:
        extra = f" plus {added} added special tokens" if added else ""
        raise XLabError(f"the tokenizer has {hp.vocab_size} tokens but the pretrained model {start.source} has "
                        f"{pretrained}{extra}: use the tokenizer it was pretrained with (data tokenizer_path: its folder).")
    if hp.max_len > start.settings["max_len"]:
        raise XLabError(f"model max_len={hp.max_len} exceeds the {start.settings['max_len']} positions of "
                        f"{start.source}: lower max_len.")
    if "transformer.wpe.weight" in state:
        state["transformer.wpe.weight"] = state["transformer.wpe.weight"][: hp.max_len]
    if added:
        for name in ("transformer.wte.weight", "lm_head.weight"):
            rows = state[name]
            state[name] = torch.cat([rows, rows.mean(0, keepdim=True).expand(added, -1)])
        if hp.tie_weights:
            state["lm_head.weight"] = state["transformer.wte.weight"]
        rank_zero_info(f"xlab: grew the embedding of {start.source} from {pretrained} to {hp.vocab_size} tokens "
                       f"for {added} added special tokens (new rows: the mean of the pretrained ones)")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise XLabError(f"the weights of {start.source} do not fit the model: missing {result.missing_keys[:4]}, "
                        f"unexpected {result.unexpected_keys[:4]}.")
    rank_zero_info(f"xlab: starting from {start.kind} weights in {start.source}")

