"""Where things moved: the module paths that configs, checkpoints, exports and scripts written
before XLab's families had packages of their own use, and how they resolve today.

Old module paths (`xlab.models.memory_gpt2`, `xlab.datamodules.retro`, ...) are imported as the
modules that hold their contents now, through an import hook `install` puts on `sys.meta_path`,
so `class_path: xlab.datamodules.retro.RetroDataModule` and `from xlab.export import load` keep
working. Class names the core packages once exported for every family (`xlab.models.MemoryGPT2`)
are found in the packages that took them (`ABSORBED`), by `absorbed`, which those packages' module
`__getattr__` calls. Only names are kept here: nothing of XLab is imported until an old path is used.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Any

MOVED = {
    "xlab.errors": "xlab.common.errors",
    "xlab.files": "xlab.common.files",
    "xlab.checkpoint": "xlab.common.checkpoint",
    "xlab.export_format": "xlab.common.export_format",
    "xlab.datamodules.tokenizer": "xlab.common.tokenizer",
    "xlab.datamodules.pretrained_tokenizer": "xlab.common.pretrained_tokenizer",
    "xlab.hf_weights": "xlab.models.hf_weights",
    "xlab.models.gpt2_backbone": "xlab.memory.gpt2_backbone",
    "xlab.models.memory_access": "xlab.memory.access",
    "xlab.models.memory_cache": "xlab.memory.decode_cache",
    "xlab.models.memory_gpt2": "xlab.memory.model",
    "xlab.models.memory_telemetry": "xlab.memory.telemetry",
    "xlab.models.retro": "xlab.retro.model",
    "xlab.datamodules.retro": "xlab.retro.datamodule",
    "xlab.retrieval.chunking": "xlab.retro.chunking",
    "xlab.retrieval.database": "xlab.retro.database",
    "xlab.retrieval.embedders": "xlab.retro.embedders",
    "xlab.retrieval.index": "xlab.retro.index",
    "xlab.retrieval.neighbours": "xlab.retro.neighbours",
    "xlab.models.caption": "xlab.captions.model",
    "xlab.models.caption_scst": "xlab.captions.scst",
    "xlab.models.image_encoders": "xlab.captions.image_encoders",
    "xlab.inference.caption": "xlab.captions.front_end",
    "xlab.datamodules.dialogue": "xlab.dialogue.datamodule",
    "xlab.inference.chat": "xlab.dialogue.chat",
    "xlab.export": "xlab.interop.export",
    "xlab.export_hf": "xlab.interop.export_hf",
    "xlab.import_hf": "xlab.interop.import_hf",
    "xlab.hf_gpt2": "xlab.interop.hf_gpt2",
    "xlab.spm_to_hf": "xlab.interop.spm_to_hf",
    "xlab.datamodules.datamodule": "xlab.datamodules.text",
    "xlab.retrieval": "xlab.retro",
}
# Packages that exported classes of families which now have packages of their own.
ABSORBED = {"xlab.models": ("xlab.memory", "xlab.retro", "xlab.captions"),
            "xlab.datamodules": ("xlab.retro", "xlab.dialogue", "xlab.captions")}


def current_module(name: str) -> str:
    """Today's module for a module path, old or current."""
    return MOVED.get(name, name)


def absorbed(package: str, name: str) -> Any:
    """The class `package.name` named before the move, from the family package that holds it now."""
    for family in ABSORBED.get(package, ()):
        module = importlib.import_module(family)
        if name in getattr(module, "__all__", ()):
            return getattr(module, name)
    raise AttributeError(f"module {package!r} has no attribute {name!r}")


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as the module that holds its contents now."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec) -> ModuleType:
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """The module is today's, already executed."""


def install() -> None:
    # First in line: an old path inside a package that now exists (`xlab.retrieval` is `xlab.retro`)
    # would otherwise be found as a file by the ordinary finder and run a second time under the old name.
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())
