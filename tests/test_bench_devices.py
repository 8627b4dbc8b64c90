"""Every bench takes --device, and on a machine without a visible GPU refuses cuda in one line
before doing any work (exit status 1, no traceback). GPUs are hidden from the child processes, so
the test means the same on a machine that has one."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# gpu_check.py needs a GPU by design (tests/test_gpu_check.py); device.py, peaks.py, venvs.py and
# litgpt_side.py (litgpt_compare.py's other half, run in litgpt's environment) are helpers.
HELPERS = {"gpu_check", "device", "peaks", "venvs", "litgpt_side", "__init__"}
BENCHES = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in HELPERS)


def test_every_bench_is_covered():
    assert {"caption", "dialogue", "memory", "memory_text", "memory_recall", "finetune", "architectures",
            "retro_ablation", "retrieval", "sampling", "train_throughput", "xlabml_compare", "recipe",
            "litgpt_compare"} <= set(BENCHES)


@pytest.mark.parametrize("bench", BENCHES)
def test_refuses_cuda_in_one_line_without_a_gpu(bench):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, str(ROOT / "bench" / f"{bench}.py"), "--device", "cuda"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("--device cuda:"), run.stderr[-2000:]
    assert "run with --device cpu" in run.stderr
