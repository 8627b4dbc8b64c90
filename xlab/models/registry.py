"""The model classes a checkpoint or an export may name, and building one from saved settings.

Only the LanguageModel subclasses that the `xlab.models` package exports can be built, so a
downloaded checkpoint or export cannot make a loader construct anything else.
"""

from __future__ import annotations

import inspect
from typing import Any

import xlab.models as models
from xlab.checkpoint import saved_class_path, wrong_class_error
from xlab.errors import XLabError
from xlab.models.lm import LanguageModel


def allowed_model_classes() -> dict[str, type]:
    """Every LanguageModel subclass the `xlab.models` package exports, by class name."""
    found = {name: getattr(models, name) for name in getattr(models, "__all__", dir(models))}
    return {name: cls for name, cls in found.items()
            if inspect.isclass(cls) and issubclass(cls, LanguageModel) and cls is not LanguageModel}


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
        raise wrong_class_error(cls.__name__, expected)
    return cls


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
    """The model a checkpoint dict (`xlab.checkpoint.read_checkpoint`) holds."""
    cls = model_class(saved_class_path(ckpt), expected)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    return build_model(cls, init_args(cls, hparams), ckpt["state_dict"], source, ckpt)
