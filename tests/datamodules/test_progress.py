"""Progress while the corpus cache is built: a bar per step on a terminal, plain lines otherwise."""

from __future__ import annotations

import io
import re

from tests.helpers import TOKENIZER_SIZE
from tests.helpers import xlab_data as make
from xlab.datamodules.encode import build_encoded_corpus_
from xlab.datamodules.progress import BuildProgress
from xlab.datamodules import XLabDataModule
from xlab.datamodules.sources import build_source

STEPS = ("reading + tokenizer", "encoding", "unigram baseline")


def build(corpus_dir, out, progress):
    out.mkdir()
    build_encoded_corpus_(out, [build_source({"kind": "text_folder", "path": str(corpus_dir)})],
                          (0.9, 0.05, 0.025, 0.025), 0, XLabDataModule(vocab_size=TOKENIZER_SIZE).make_tokenizer,
                          progress=progress)


def test_plain_lines_report_each_step_with_counts_rate_and_time_left(corpus_dir, tmp_path):
    stream = io.StringIO()
    build(corpus_dir, tmp_path / "out", BuildProgress(bars=False, stream=stream, interval=0))
    lines = stream.getvalue().splitlines()
    total = sum(len(f.read_bytes()) for f in corpus_dir.glob("*.txt"))
    for step in STEPS:
        done = [line for line in lines if line.startswith(f"xlab: {step}: done")]
        assert len(done) == 1, lines
    assert f"200 documents, {total / 1000:.1f} KB" in next(line for line in lines if "encoding: done" in line)
    # While encoding, the total is known from the first pass: done / total, a rate and the time left.
    during = [line for line in lines if line.startswith("xlab: encoding: ") and "done" not in line]
    assert during and all(re.search(r"\d+/200 documents, .*/s, .* elapsed, about \d+:\d\d left", line) for line in during)
    assert any("training tokenizer" in line for line in lines)  # what the first step does once read


def test_bars_show_each_step_on_a_terminal(corpus_dir, tmp_path):
    stream = io.StringIO()
    progress = BuildProgress(bars=True, stream=stream)
    build(corpus_dir, tmp_path / "out", progress)
    shown = stream.getvalue()
    for name in ("training tokenizer", "encoding", "unigram baseline"):
        assert name in shown
    assert "200 documents" in shown and "tokens" in shown
    assert "xlab:" not in shown  # bars, not log lines


def test_bars_only_on_a_terminal_unless_asked(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("XLAB_PROGRESS", raising=False)
    assert BuildProgress(stream=Terminal()).bars and not BuildProgress(stream=io.StringIO()).bars
    monkeypatch.setenv("XLAB_PROGRESS", "0")
    assert not BuildProgress(stream=Terminal()).bars
    monkeypatch.setenv("XLAB_PROGRESS", "1")
    assert BuildProgress(stream=io.StringIO()).bars


def test_the_data_module_reports_its_build_in_the_log(corpus_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XLAB_PROGRESS", "0")
    make(corpus_dir, tmp_path).prepare_data()
    err = capsys.readouterr().err
    assert all(f"xlab: {step}: done" in err for step in STEPS)
