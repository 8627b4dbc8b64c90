"""Document sources, one module per kind; `build_source` turns a YAML entry into one."""

from xlab.datamodules.sources import embedded, huggingface, installed, jsonl, text_folder  # noqa: F401  (register kinds)
from xlab.datamodules.sources import recall  # noqa: F401  (registers the synthetic recall task)
from xlab.datamodules.sources.base import Document, Source, build_source, register

__all__ = ["Document", "Source", "build_source", "register"]
