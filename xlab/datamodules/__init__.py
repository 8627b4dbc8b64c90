"""Data: sources, the document split, the tokenizer, the cache and the datasets over it."""

from xlab.datamodules.datamodule import XLabDataModule
from xlab.datamodules.tokenizer import Tokenizer

__all__ = ["Tokenizer", "XLabDataModule"]
