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

from xlab.common.errors import XLabError
from xlab.common.files import file_sizes, size_mismatch, written_aside_

COMPLETE = "meta.json"  # written by the builder: its presence marks a finished build
SIZES = "sizes.json"  # every file's size at the end of the build, checked whenever the folder is reused
DAMAGED_FIX = "rebuild it with --data.init_args.reprocess true (or REPROCESS=1)"


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
            check_intact(folder)
            return folder
        with written_aside_(folder) as tmp:
            tmp.mkdir()
            build(tmp)
            if not (tmp / COMPLETE).exists():
                raise RuntimeError(f"cache build for {folder} finished without writing {COMPLETE}")
            (tmp / SIZES).write_text(json.dumps(file_sizes(tmp), indent=1))
    return folder


def check_intact(folder: Path) -> None:
    """XLabError if a file of the finished folder is missing or of another size than the build wrote
    (a copy or a sync cut short, a full disk): its memmaps and JSON would be read as they are.
    Folders built before sizes were recorded are trusted as before."""
    path = folder / SIZES
    if not path.is_file():
        return
    try:
        problem = size_mismatch(folder, json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        problem = f"{SIZES} is unreadable"
    if problem is not None:
        raise XLabError(f"the data cache {folder} is damaged ({problem}): {DAMAGED_FIX}.")
