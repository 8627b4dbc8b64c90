"""The LightningModules: every model shares the step, metrics and optimizer recipe of `LanguageModel`."""

from xlab.models.caption import CaptionModel
from xlab.models.lm import LanguageModel
from xlab.models.memory_gpt2 import MemoryGPT2
from xlab.models.retro import RetroModel
from xlab.models.xlab_model import XLabModel

__all__ = ["CaptionModel", "LanguageModel", "MemoryGPT2", "RetroModel", "XLabModel"]
