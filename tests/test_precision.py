"""Precision that follows the hardware (`xlab/precision.py`). The tests pin the CPU kernels to
AVX2 (tests/__init__.py), where bf16 matrix products are emulated and slow: the case to fall back."""

from __future__ import annotations

from tests.helpers import CONF, tiny
from xlab.cli import main
from xlab.precision import bf16_speedup, device_type, fitting_precision


def test_bf16_falls_back_to_fp32_where_it_is_measured_slower():
    assert device_type("auto") == "cpu" and device_type("cpu") == "cpu"
    assert bf16_speedup("cpu") < 1  # on the pinned AVX2 kernels
    precision, notice = fitting_precision("bf16-mixed", "cpu")
    assert precision == "32-true" and "bf16 matrices" in notice and "slower than fp32 (measured)" in notice
    assert fitting_precision("32-true", "cpu") == ("32-true", None)
    assert fitting_precision("16-mixed", "cpu") == ("16-mixed", None)


def test_the_cli_trains_a_bf16_recipe_in_fp32_on_such_a_cpu_and_says_so(tmp_path, corpus_dir, capsys):
    args = ["-c", str(CONF / "defaults.yaml"), *tiny(tmp_path, [{"kind": "text_folder", "path": str(corpus_dir)}], 2),
            "--trainer.precision", "bf16-mixed"]
    cli = main(["fit", *args])
    assert cli.trainer.precision == "32-true"
    assert "the recipe asks for precision bf16-mixed" in capsys.readouterr().out
    kept = main(["fit", *args, "--precision_fallback", "false", "--trainer.max_steps", "1"])
    assert kept.trainer.precision == "bf16-mixed"
