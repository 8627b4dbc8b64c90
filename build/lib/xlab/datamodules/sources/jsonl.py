"""JSON Lines files: one document per line, its text in `text_field`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xlab.common.errors import XLabError
from xlab.datamodules.sources.base import Document, Source, matching_files, register


@register
class JsonLines(Source):
    kind = "jsonl"

    def __init__(self, path: str, glob: str = "*.jsonl", text_field: str = "text", id_field: str | None = None):
        self.path = Path(os.path.expanduser(path))
        self.glob, self.text_field, self.id_field = glob, text_field, id_field

    def files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        return matching_files(self.path, self.glob, "JSONL file or folder")

    def __iter__(self) -> Iterator[Document]:
        for file in self.files():
            with open(file, encoding="utf-8") as lines:
                try:
                    for number, line in enumerate(lines, 1):
                        if line.strip():
                            yield self._document(file, number, line)
                except UnicodeDecodeError as e:
                    raise XLabError(f"{file} is not UTF-8 text (byte {e.start}): convert it to UTF-8.") from None

    def _document(self, file: Path, number: int, line: str) -> Document:
        where = f"{file}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise XLabError(f"{where} is not valid JSON ({e.msg}): fix or remove that line.") from None
        if not isinstance(record, dict) or not isinstance(record.get(self.text_field), str):
            raise XLabError(f"{where} has no string field {self.text_field!r}: set the source's 'text_field'.")
        key = record.get(self.id_field) if self.id_field else None
        return Document(f"{self.kind}:{key}" if key is not None else f"{self.kind}:{file.name}:{number}", record[self.text_field])

    def fingerprint(self) -> dict[str, Any]:
        files = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in self.files()]
        return {"kind": self.kind, "files": files, "text_field": self.text_field, "id_field": self.id_field}
