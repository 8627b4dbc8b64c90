"""Names resolved when first used: a family's classes, a command's code.

A family package's `__init__` exports its classes through `lazy_exports`, so importing one of its
light modules (its `cli.py`, which `infer.py --help` reads) does not import the family's models,
faiss or Lightning; `resolve` imports the code behind a "module:name" reference when a command or
front end runs. The same idea as `transformers`' lazy `Auto*` mapping.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def resolve(reference: str) -> Any:
    """The object a "package.module:name" reference names, imported now."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module `__getattr__` and `__dir__` for `package` that import `exports[name]` (a submodule,
    relative like ".model") the first time `name` is asked for."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name], package), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
