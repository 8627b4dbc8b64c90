"""What every source yields, and how a YAML source entry becomes a source object."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from xlab.common.errors import XLabError


class Document(NamedTuple):
    """One unit of the split: `id` must be stable across runs, since the split hashes it."""

    id: str
    text: str


class Source:
    """A re-iterable collection of documents; `kind` is its name in YAML."""

    kind: str = ""

    def __iter__(self) -> Iterator[Document]:
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes the documents, so a changed source means a new cache."""
        raise NotImplementedError


def matching_files(folder: Path, pattern: str, what: str) -> list[Path]:
    """The files under `folder` matching `pattern`, sorted; a clear error if there are none."""
    if not folder.is_dir():
        raise XLabError(f"{what} {folder} does not exist: set the source's 'path' to an existing folder.")
    found = sorted(p for p in folder.glob(pattern) if p.is_file())
    if not found:
        raise XLabError(f"no file under {folder} matches {pattern!r}: check the source's 'glob'.")
    return found


_REGISTRY: dict[str, type[Source]] = {}


def register(cls: type[Source]) -> type[Source]:
    _REGISTRY[cls.kind] = cls
    return cls


def build_source(spec: dict[str, Any]) -> Source:
    """Turn `{"kind": "text_folder", "path": ..., ...}` into a source, checking every key."""
    return build_registered(spec, _REGISTRY, "data source")


def build_registered(spec: dict[str, Any], registry: dict[str, type], what: str) -> Any:
    """The registered class that `spec["kind"]` names, built from the other keys; an unknown kind
    or key is a one-line error listing what is accepted."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise XLabError(f"{what} {spec!r} needs a 'kind': one of {', '.join(sorted(registry))}.")
    kind = spec["kind"]
    if kind not in registry:
        raise XLabError(f"unknown {what} kind {kind!r}: use one of {', '.join(sorted(registry))}.")
    cls = registry[kind]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(spec) - {"kind", *accepted})
    if unknown:
        raise XLabError(f"{what} {kind!r} has no setting {', '.join(unknown)}: it accepts {', '.join(accepted)}.")
    try:
        return cls(**{k: v for k, v in spec.items() if k != "kind"})
    except TypeError as e:
        raise XLabError(f"{what} {kind!r}: {e}") from None
