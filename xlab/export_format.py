"""The export folder's format: its file names, its version, and reading its config.

A ground-floor module (it imports no model and no Lightning), so that code which starts a model
from an export (`xlab.models.pretrained`) can read one without importing the exporter, which
imports the models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xlab.errors import XLabError

EXPORT_FORMAT, EXPORT_VERSION = "xlab-export", 1
CONFIG, WEIGHTS, GENERATION, SPM_TOKENIZER = "config.json", "model.safetensors", "generation.json", "tokenizer.model"


def read_export_config(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / CONFIG
    if not path.is_file():
        raise XLabError(f"{folder} is not an XLab export (no {CONFIG}): export a checkpoint with "
                        "`manage.py export-checkpoint`.")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise XLabError(f"{path} is not valid JSON ({e}).") from None
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise XLabError(f"{path} is not an XLab export config (format is not {EXPORT_FORMAT!r}).")
    if config.get("version", 0) > EXPORT_VERSION:
        raise XLabError(f"{folder} was written by a newer XLab (export version {config['version']}).")
    missing = [name for name in [WEIGHTS, GENERATION, *config.get("tokenizer", {}).get("files", [])]
               if not (folder / name).is_file()]
    if missing:
        raise XLabError(f"export {folder} is missing {', '.join(missing)}: re-export the checkpoint.")
    return config
