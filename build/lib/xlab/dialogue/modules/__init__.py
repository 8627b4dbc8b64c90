"""Dialogue modules: each turns one raw dataset into episodes. Named `module:Class`.

A module is a class in a file of this package; `resolve("chitchat:ChitChat")` finds it. Modules
that read a file the user brings take its `path` (and never download); the ones in `PACKAGED`
read data installed with pip and need nothing, so they are what `build-dataset` runs by default.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from xlab.common.errors import XLabError
from xlab.dialogue.episode import Episode, Turn

PACKAGED = ("chitchat:ChitChat", "chatterbot:Chatterbot")
FROM_FILES = ("sharegpt:ShareGPT", "openai:OpenAIChat", "light:LightDialogue", "personachat:PersonaChat",
              "dailydialog:DailyDialog", "cornell:CornellMovies", "episodes:Episodes")
AVAILABLE = PACKAGED + FROM_FILES


class DialogueModule:
    """Base: `episodes()` yields Episodes; `name` is the `module:Class` they record as source."""

    needs_path = False

    def __init__(self, path: str | None = None, limit: int | None = None):
        if self.needs_path and not path:
            raise XLabError(f"{self.name} reads a local file: give its path ({self.name}=PATH on the command "
                            "line, `path:` in YAML).")
        self.path = Path(path).expanduser() if path else None
        self.limit = limit
        if self.path is not None and not self.path.exists():
            raise XLabError(f"{self.name}: {self.path} does not exist: give the path of a local copy.")

    @property
    def name(self) -> str:
        return f"{type(self).__module__.rsplit('.', 1)[-1]}:{type(self).__name__}"

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this module's output for caches: its name, options and file stamps."""
        stamp = None
        if self.path is not None:
            files = sorted(self.path.rglob("*")) if self.path.is_dir() else [self.path]
            stamp = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
        return {"module": self.name, "path": str(self.path) if self.path else None, "limit": self.limit,
                "files": stamp, **self.options()}

    def options(self) -> dict[str, Any]:
        return {}

    def episodes(self) -> Iterator[Episode]:
        count = 0
        for episode in self.read():
            if self.limit is not None and count >= self.limit:
                return
            episode.source = self.name
            yield episode
            count += 1

    def read(self) -> Iterator[Episode]:
        raise NotImplementedError

    def wrong_layout(self, what: str, expected: str, found: str) -> XLabError:
        return XLabError(f"{self.name}: {what} is not in the expected layout ({expected}); found {found}.")


def resolve(spec: str) -> type[DialogueModule]:
    """The class named by `module:Class`; an unknown name lists the available ones."""
    module_name, _, class_name = spec.partition(":")
    known = ", ".join(AVAILABLE)
    if not class_name or not module_name.isidentifier():
        raise XLabError(f"dialogue module {spec!r} is not of the form module:Class: use one of {known}.")
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ModuleNotFoundError:
        raise XLabError(f"there is no dialogue module {module_name!r}: use one of {known}.") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, DialogueModule)):
        classes = ", ".join(s for s in AVAILABLE if s.startswith(module_name + ":")) or known
        raise XLabError(f"dialogue module {module_name!r} has no class {class_name!r}: use {classes}.")
    return cls


def build_module(spec: str | dict[str, Any]) -> DialogueModule:
    """A module from `module:Class`, `module:Class=PATH[?option=value&...]` or {module: ..., path: ..., options}."""
    if isinstance(spec, str):
        # module:Class=PATH?option=value&option=value (values read as YAML: true, 3, [a, b])
        spec, _, query = spec.partition("?")
        name, _, path = spec.partition("=")
        options: dict[str, Any] = {"path": path} if path else {}
        for pair in filter(None, query.split("&")):
            key, _, value = pair.partition("=")
            options[key] = yaml.safe_load(value) if value else True
    elif isinstance(spec, dict) and "module" in spec:
        options = dict(spec)
        name = options.pop("module")
    else:
        raise XLabError(f"a dialogue module is given as 'module:Class' or {{module: ..., path: ...}}, not {spec!r}.")
    cls = resolve(name.strip())
    try:
        return cls(**options)
    except TypeError as error:
        raise XLabError(f"{name}: {error}: see the class's documentation for its options.") from None


def alternating(texts: list[str], names: tuple[str, str], train: tuple[bool, bool]) -> list:
    """Turns of a two-party conversation in which speakers alternate, the first speaking first."""
    return [Turn(names[i % 2], text, train[i % 2]) for i, text in enumerate(texts)]
