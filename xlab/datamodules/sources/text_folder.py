"""Local text files: one document per file, found by a glob under a folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xlab.datamodules.sources.base import Document, Source, register
from xlab.errors import XLabError


@register
class TextFolder(Source):
    kind = "text_folder"

    def __init__(self, path: str, glob: str = "**/*.txt"):
        self.root = Path(os.path.expanduser(path))
        self.glob = glob

    def files(self) -> list[Path]:
        if not self.root.is_dir():
            raise XLabError(f"text folder {self.root} does not exist: set the source's 'path' to a folder of text files.")
        found = sorted(p for p in self.root.glob(self.glob) if p.is_file())
        if not found:
            raise XLabError(f"no file under {self.root} matches {self.glob!r}: check the source's 'glob'.")
        return found

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
