"""XLab: a YAML-driven Lightning lab for language models with memory and retrieval."""
