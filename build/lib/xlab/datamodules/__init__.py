"""The core data: the abstract data module (cache, split, loaders, tokenizer) and the text-corpus
modules built on it."""

from xlab.common import legacy
from xlab.common.tokenizer import Tokenizer
from xlab.datamodules.streams import StreamDataModule
from xlab.datamodules.text import XLabDataModule

__all__ = ["StreamDataModule", "Tokenizer", "XLabDataModule"]


def __getattr__(name: str):
    # Before the family packages, family data modules were found here too.
    return legacy.absorbed(__name__, name)
