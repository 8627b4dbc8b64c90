"""Plain progress lines (`xlab/progress_lines.py`): a log gets a line every log_every_n_steps and
one per validation, when the bar is off or the output is not a terminal."""

from __future__ import annotations

import re

from tests.helpers import CONF, tiny
from xlab.cli import main
from xlab.progress_bar import StepProgressBar
from xlab.progress_lines import ProgressLines

STEP_LINE = re.compile(r"^xlab: step (\d+)/8  loss \d+\.\d{3}  lr \d\.\d\de-\d\d  [\d,]+ tok/s  \d+:\d\d left$")


def run(tmp_path, corpus_dir, *extra: str):
    args = tiny(tmp_path, [{"kind": "text_folder", "path": str(corpus_dir)}], steps=8)
    return main(["fit", "-c", str(CONF / "defaults.yaml"), *args, "--trainer.log_every_n_steps", "2",
                 "--trainer.val_check_interval", "4", *extra])


def test_a_run_without_the_bar_prints_a_line_every_logging_step_and_each_validation(tmp_path, corpus_dir, capsys):
    cli = run(tmp_path, corpus_dir, "--trainer.enable_progress_bar", "false")
    assert cli.trainer.progress_bar_callback is None
    assert any(isinstance(c, ProgressLines) for c in cli.trainer.callbacks)
    lines = capsys.readouterr().out.splitlines()
    steps = [int(m.group(1)) for m in map(STEP_LINE.match, lines) if m]
    assert steps == [2, 4, 6, 8]
    validations = [line for line in lines if re.match(r"^xlab: step \d+  val/loss ", line)]
    assert [v.split()[2] for v in validations] == ["4", "8"]
    assert all(re.search(r"val/perplexity [\d.e+]+  val/bpb [\d.]+", v) for v in validations)


def test_a_log_gets_lines_even_when_the_bar_was_asked_for(tmp_path, corpus_dir, capsys):
    cli = run(tmp_path, corpus_dir, "--trainer.enable_progress_bar", "true")  # pytest's stdout is no terminal
    assert not isinstance(cli.trainer.progress_bar_callback, StepProgressBar)
    assert sum(bool(STEP_LINE.match(line)) for line in capsys.readouterr().out.splitlines()) == 4
