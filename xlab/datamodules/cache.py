"""Build-once folders keyed by their settings, safe against interruption and concurrent ranks.

A folder is built under a temporary name and renamed into place only when complete, so a build
that dies half way leaves nothing that a later run could mistake for a finished cache. A file
lock makes concurrent processes (DDP ranks, torchrun workers on one node) wait for one builder.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from xlab.common.files import written_aside_

COMPLETE = "meta.json"  # written last inside the folder: its presence marks a finished build


def settings_key(settings: dict[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def default_cache_root() -> Path:
    return Path(os.environ.get("XLAB_CACHE", Path.home() / ".cache" / "xlab"))


def build_once_(folder: Path, build: Callable[[Path], None], rebuild: bool = False) -> Path:
    """Make `folder` exist and be complete, calling `build(tmp_folder)` only if needed."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / COMPLETE).exists() and not rebuild:
            return folder
        with written_aside_(folder) as tmp:
            tmp.mkdir()
            build(tmp)
            if not (tmp / COMPLETE).exists():
                raise RuntimeError(f"cache build for {folder} finished without writing {COMPLETE}")
    return folder
