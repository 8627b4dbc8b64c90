"""The LightningModules: every model shares the step, metrics and optimizer recipe of `LanguageModel`."""

from xlab.models.lm import LanguageModel
from xlab.models.xlab_model import XLabModel

__all__ = ["LanguageModel", "XLabModel"]
