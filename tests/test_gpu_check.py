"""bench/gpu_check.py on a machine without a CUDA GPU: one line saying so, exit status 2.

Only stdout is held to one line: the runtime may print its own warnings on stderr (OpenMP does
when OMP_NUM_THREADS is set but empty), which are not the script's."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_refuses_in_one_line_without_a_gpu():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0]
    assert "Traceback" not in run.stderr
