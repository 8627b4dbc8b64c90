"""Local text files: one document per file, found by a glob under a folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xlab.common.errors import XLabError
from xlab.datamodules.sources.base import Document, Source, matching_files, register


@register
class TextFolder(Source):
    kind = "text_folder"

    def __init__(self, path: str, glob: str = "**/*.txt"):
        self.root = Path(os.path.expanduser(path))
        self.glob = glob

    def files(self) -> list[Path]:
        return matching_files(self.root, self.glob, "text folder")

    def __iter__(self) -> Iterator[Document]:
        for file in self.files():
            try:
                text = file.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise XLabError(f"{file} is not UTF-8 text (byte {e.start}): convert it or exclude it with 'glob'.") from None
            yield Document(f"{self.kind}:{file.relative_to(self.root).as_posix()}", text)

    def fingerprint(self) -> dict[str, Any]:
        # Sizes and modification times stand for the contents: cheap, and any edit changes them.
        files = [(p.relative_to(self.root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in self.files()]
        return {"kind": self.kind, "path": str(self.root.resolve()), "glob": self.glob, "files": files}
