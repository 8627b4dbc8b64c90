"""Hugging Face datasets, by hub name (online, or offline from the HF cache) or from a local copy.

`path` takes a folder written by `save_to_disk` or any folder/file `load_dataset` can read
(parquet, json, text); `name` + `config` take the hub. WikiText stores one line per row, so
`group: wikitext_articles` joins rows into articles at their top-level ` = Title = ` headings,
the unit the split must not cut through.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from xlab.common.errors import XLabError
from xlab.datamodules.sources.base import Document, Source, register

_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = \n?$")


@register
class HuggingFaceDataset(Source):
    kind = "huggingface"

    def __init__(
        self,
        name: str | None = None,
        config: str | None = None,
        path: str | None = None,
        split: str = "train",
        text_field: str = "text",
        id_field: str | None = None,
        group: Literal["row", "wikitext_articles"] = "row",
        streaming: bool = False,
    ):
        if not (name or path):
            raise XLabError("a huggingface source needs 'name' (e.g. wikitext) or 'path' (a local copy).")
        if group not in ("row", "wikitext_articles"):
            raise XLabError(f"huggingface source group={group!r}: use 'row' or 'wikitext_articles'.")
        self.name, self.config, self.split = name, config, split
        self.path = Path(os.path.expanduser(path)) if path else None
        self.text_field, self.id_field, self.group, self.streaming = text_field, id_field, group, streaming

    @property
    def label(self) -> str:
        return str(self.path) if self.path else "/".join(filter(None, [self.name, self.config]))

    def rows(self) -> Iterable[dict]:
        # Start-up cost: `datasets` takes a second and ~150 MB, so only a run that reads it loads it.
        import datasets

        datasets.logging.set_verbosity_error()
        if self.path is not None:
            return self._local_rows(datasets)
        try:
            return datasets.load_dataset(self.name, self.config, split=self.split, streaming=self.streaming)
        except Exception as e:  # the hub raises many types; all mean the same thing to the user
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise XLabError(
                f"could not load Hugging Face dataset {self.label!r} split {self.split!r} ({first}); offline, save a copy "
                f"once with datasets.load_dataset(...).save_to_disk(DIR) and set the source's 'path: DIR'.") from None

    def _local_rows(self, datasets) -> Iterable[dict]:
        if not self.path.exists():
            raise XLabError(f"dataset path {self.path} does not exist: point the huggingface source's 'path' at a local copy.")
        saved = self.path.is_dir() and any((self.path / f).exists() for f in ("dataset_dict.json", "state.json"))
        try:
            if not saved:
                return datasets.load_dataset(str(self.path), self.config, split=self.split, streaming=self.streaming)
            loaded = datasets.load_from_disk(str(self.path))
            if isinstance(loaded, datasets.DatasetDict):
                missing = [s for s in self.split.split("+") if s not in loaded]
                if missing:
                    raise XLabError(f"{self.path} has no split {missing[0]!r}: it has {', '.join(loaded)}.")
                return datasets.concatenate_datasets([loaded[s] for s in self.split.split("+")])
            return loaded
        except XLabError:
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise XLabError(f"could not read the dataset at {self.path} ({first}).") from None

    def __iter__(self) -> Iterator[Document]:
        rows = self.rows()
        if self.group == "wikitext_articles":
            yield from self._articles(rows)
            return
        for i, row in enumerate(rows):
            text = self._text(row, i)
            key = row.get(self.id_field) if self.id_field else i
            yield Document(f"{self.label}:{key}", text)

    def _articles(self, rows: Iterable[dict]) -> Iterator[Document]:
        title, lines = None, []
        for i, row in enumerate(rows):
            line = self._text(row, i)
            if _WIKITEXT_TITLE.match(line):
                if title is not None and "".join(lines).strip():
                    yield Document(f"{self.label}:{title}", "".join(lines))
                title, lines = line.strip(" =\n"), []
            lines.append(line)
        if title is not None and "".join(lines).strip():
            yield Document(f"{self.label}:{title}", "".join(lines))

    def _text(self, row: dict, i: int) -> str:
        text = row.get(self.text_field)
        if not isinstance(text, str):
            raise XLabError(f"row {i} of {self.label} has no string field {self.text_field!r}: set the source's "
                            f"'text_field' (the rows have {', '.join(row)}).")
        return text

    def fingerprint(self) -> dict[str, Any]:
        where: Any = self.name
        if self.path is not None:
            files = sorted(self.path.rglob("*")) if self.path.is_dir() else [self.path]
            where = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.is_file()]
        return {"kind": self.kind, "where": where, "config": self.config, "split": self.split,
                "text_field": self.text_field, "id_field": self.id_field, "group": self.group}
