"""The core models: `LanguageModel` (the step, metrics and optimizer recipe every model shares) and
`XLabModel`, the configurable decoder the text, dialogue and caption families build on."""

from xlab.common import legacy
from xlab.models.lm import LanguageModel
from xlab.models.xlab_model import XLabModel

__all__ = ["LanguageModel", "XLabModel"]


def __getattr__(name: str):
    # Before the family packages, every model class was exported here (`xlab.models.MemoryGPT2`).
    return legacy.absorbed(__name__, name)
