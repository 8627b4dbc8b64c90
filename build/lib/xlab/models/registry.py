"""The model class a checkpoint or an export names, and building one from saved settings.

A class path is imported only from the xlab package and must name a `LanguageModel` subclass
(`xlab.common.checkpoint.resolve_class_path`), so a downloaded checkpoint or export cannot make a
loader construct anything else.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

from xlab.common.checkpoint import resolve_class_path, saved_class_path, wrong_class_error
from xlab.common.errors import XLabError
from xlab.models.lm import LanguageModel
from xlab.models.xlab_model import XLabModel


def model_class(class_path: str | None, expected: type | None = None) -> type:
    """The XLab model class named by `class_path`.

    Checkpoints of models built directly (not through LightningCLI) carry no class path: then the
    caller's `expected` class is trusted, and XLabModel assumed without one."""
    cls = (expected or XLabModel) if class_path is None else resolve_class_path(class_path, LanguageModel)
    if expected is not None and not issubclass(cls, expected):
        raise wrong_class_error(cls.__name__, expected)
    return cls


def class_path_of(cls: type) -> str:
    """The path a checkpoint or an export records for `cls`: its package's, when the package exports
    it (xlab.models.XLabModel, xlab.memory.MemoryGPT2), else the module that defines it."""
    package = cls.__module__.rpartition(".")[0]
    if cls.__name__ in getattr(sys.modules.get(package), "__all__", ()):
        return f"{package}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


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


def build_model(cls: type, args: dict[str, Any], state: dict[str, Any], source: str,
                records: dict[str, Any] | None = None) -> LanguageModel:
    """`cls(**args)` with `state` loaded, in eval mode without gradients.

    records: the checkpoint dict (or an export's saved records), given to `on_load_checkpoint`
    before the weights as Lightning does, so models restore what they recorded."""
    try:
        model = cls(**args)
    except TypeError as e:
        raise XLabError(f"{source}: cannot build {cls.__name__} from its saved settings ({e}).") from None
    if records is not None:
        model.on_load_checkpoint(records)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise XLabError(f"{source}: the weights do not fit a {cls.__name__} with its saved settings "
                        f"({detail}).") from None
    return model.eval().requires_grad_(False)


def model_from_checkpoint(ckpt: dict[str, Any], expected: type | None = None,
                          source: str = "checkpoint") -> LanguageModel:
    """The model a checkpoint dict (`xlab.common.checkpoint.read_checkpoint`) holds."""
    cls = model_class(saved_class_path(ckpt), expected)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    return build_model(cls, init_args(cls, hparams), ckpt["state_dict"], source, ckpt)
