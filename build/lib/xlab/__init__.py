"""XLab: a YAML-driven Lightning lab for language models with memory and retrieval."""

from xlab.common import legacy

legacy.install()  # configs, checkpoints and code written before the family packages keep their paths
