"""Reading the records of a JSON array file or a JSON-lines file, with the position of each."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xlab.common.errors import XLabError


def json_records(path: Path, what: str) -> Iterator[tuple[str, Any]]:
    """(where, record) for a `.json` file holding an array, or each line of a `.jsonl` file."""
    files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl")) if path.is_dir() else [path]
    for file in files:
        text = file.read_text(encoding="utf-8")
        if file.suffix == ".jsonl" or (not text.lstrip().startswith("[") and "\n{" in text.strip()):
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        yield f"{file}:{number}", json.loads(line)
                    except json.JSONDecodeError as error:
                        raise XLabError(f"{what}: {file}:{number} is not valid JSON ({error}).") from None
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise XLabError(f"{what}: {file} is not valid JSON ({error}).") from None
        if not isinstance(data, list):
            raise XLabError(f"{what}: {file} is not in the expected layout (a JSON array of conversations, or JSON "
                            f"lines); found a JSON {type(data).__name__}.")
        for i, record in enumerate(data):
            yield f"{file}[{i}]", record
