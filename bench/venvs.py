"""A virtual environment of its own for an outside framework a bench compares against.

An outside framework pins versions XLab does not (litgpt wants an older jsonargparse and
huggingface_hub than XLab's stack), so it lives in a venv under the XLab cache, built once. The
venv gets this interpreter's exact torch build, so both sides run the same kernels. A venv that
cannot be built stops the bench in one line that says why, never in a traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import torch

from xlab.datamodules.cache import default_cache_root

READY = "ready"  # written last: a venv without it was interrupted and is rebuilt


def venv_folder(name: str) -> Path:
    return default_cache_root() / "bench-venvs" / name


def venv_python(folder: Path) -> Path:
    return folder / "bin" / "python"


def ensure_venv(folder: Path, requirements: list[str], remove: tuple[str, ...] = (), check: str = "",
                pip_args: tuple[str, ...] = ()) -> Path:
    """The python of a venv at `folder` holding `requirements` plus this torch, built if missing;
    `remove` is uninstalled afterwards (packages whose wheels do not match this torch), and
    `check` is Python code that must run in it. SystemExit with a one-line reason on failure."""
    python = venv_python(folder)
    if (folder / READY).is_file():
        return python
    shutil.rmtree(folder, ignore_errors=True)
    print(f"building a virtual environment for {' '.join(requirements)} in {folder} (once) ...", flush=True)
    # No pip inside the venv: this interpreter's pip installs into it (`pip --python`), which
    # spares the seconds ensurepip takes.
    venv.EnvBuilder(with_pip=False, symlinks=True).create(folder)
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    steps = [[*pip, "install", "--quiet", *pip_args, f"torch=={torch.__version__}", *requirements]]
    if remove:
        steps.append([*pip, "uninstall", "--yes", "--quiet", *remove])
    if check:
        steps.append([str(python), "-c", check])
    for command in steps:
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if done.returncode != 0:
            lines = [line for line in (done.stderr + done.stdout).splitlines()
                     if line.strip() and not line.startswith("WARNING")]
            reason = lines[-1].strip() if lines else f"exit status {done.returncode}"
            shutil.rmtree(folder, ignore_errors=True)
            raise SystemExit(f"cannot install {' '.join(requirements)} in a virtual environment of its own: {reason}")
    (folder / READY).write_text(" ".join(requirements) + "\n")
    return python
