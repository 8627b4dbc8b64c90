"""What sampling opens for a model: the folders it recorded at training time (`sampling_resources`).

A model does not open files while decoding; it names what it was trained with (RetroModel: its
retrieval database) and sampling opens it here, once, before the first token. A folder that no
longer exists is skipped: the model then decodes without it, as it was told when it was saved.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def _retrieval_database(folder: Path) -> Any | None:
    if not (folder / "manifest.json").is_file():
        return None
    from xlab.retrieval import RetrievalDatabase

    return RetrievalDatabase(folder)


OPENERS: dict[str, Callable[[Path], Any | None]] = {"retrieval_database": _retrieval_database}


def attach_sampling_resources(model) -> None:
    """Open each resource the model asks for and hand it over; models without the hook need none."""
    wanted = getattr(model, "sampling_resources", dict)()
    for kind, folder in wanted.items():
        opener = OPENERS.get(kind)
        resource = opener(Path(folder)) if opener is not None else None
        if resource is not None:
            model.attach_sampling_resource(kind, resource)
