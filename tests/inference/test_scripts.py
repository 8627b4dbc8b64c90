"""infer.py and manage.py: once each as real subprocesses, the rest in-process through main(argv)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
import torch

from xlab import inference

from tests.helpers import TOKENIZER_SIZE, ROOT, load_script


@pytest.fixture(scope="module")
def infer():
    return load_script("infer")


@pytest.fixture(scope="module")
def manage():
    return load_script("manage")


def start_script(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


@pytest.mark.parametrize("script", ["infer.py", "manage.py"])
def test_scripts_are_executable_with_a_usage_docstring(script):
    path = ROOT / script
    assert os.access(path, os.X_OK)
    lines = path.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env python3" and lines[1].startswith('"""') and "Usage:" in path.read_text()[:600]


def test_help_explains_every_option_without_importing_torch():
    probe = ("import runpy, sys\nsys.argv = ['infer.py', '--help']\n"
             "try:\n    runpy.run_path('infer.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')")
    code, out, _ = finish(start_script("-c", probe))
    assert code == 0
    for option in ("--limit", "--num-samples", "--seed", "--device", "--stream", "--interactive", "--temperature",
                   "--top-k", "--top-p", "--beams", "--length-penalty", "--early-stopping",
                   "--repetition-penalty", "--no-repeat-ngram", "--min-length", "--exclude", "--stop",
                   "--block-size", "--slide-keep"):
        assert option in out
    assert out.strip().endswith("torch not loaded")


def test_scripts_run_as_subprocesses(tiny_checkpoint, tiny_export, tmp_path):
    # Both at once: most of each run is importing Lightning, and the two overlap.
    out = tmp_path / "exported"
    exporting = start_script("manage.py", "export-checkpoint", str(tiny_checkpoint), "-o", str(out))
    sampling = start_script("infer.py", str(tiny_export), "the cat", "--limit", "6", "--greedy")
    code, stdout, stderr = finish(sampling)
    assert code == 0, stderr
    assert stdout.startswith("the cat") and "tokens/s" in stderr
    code, stdout, stderr = finish(exporting)
    assert code == 0, stderr
    assert (out / "model.safetensors").exists() and stdout.startswith("exported")


def test_manage_refuses_to_overwrite_an_export(manage, tiny_checkpoint, tiny_export, capsys):
    with pytest.raises(SystemExit) as exit_:
        manage.main(["export-checkpoint", str(tiny_checkpoint), "-o", str(tiny_export)])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and error.startswith("error:") and "--force" in error
    assert len(error.strip().splitlines()) == 1


def test_infer_greedy_prints_what_the_library_generates(infer, tiny_checkpoint, capsys):
    from xlab.export import load

    infer.main([str(tiny_checkpoint), "the dog", "--limit", "8", "--greedy"])
    printed = capsys.readouterr().out
    loaded = load(tiny_checkpoint)
    tokenizer = loaded.tokenizer
    inputs = torch.tensor([tokenizer[tokenizer.sos_token]] + tokenizer.encode("the dog"))
    expected = inference.sample(loaded.model, inputs, output_length=8, eos_class=tokenizer.eos_id, temperature=0)
    assert printed == "the dog" + tokenizer.decode(expected) + "\n"


def test_infer_stream_prints_the_same_text(infer, tiny_export, capsys):
    infer.main([str(tiny_export), "the bird", "--limit", "10", "--seed", "3"])
    plain = capsys.readouterr().out
    infer.main([str(tiny_export), "the bird", "--limit", "10", "--seed", "3", "--stream"])
    assert capsys.readouterr().out == plain


def test_infer_samples_beams_and_constraints(infer, tiny_export, capsys):
    infer.main([str(tiny_export), "rain", "--limit", "6", "--num-samples", "3", "--top-k", "20", "--top-p", "0.9",
                "--temperature", "0.8", "--repetition-penalty", "1.2", "--no-repeat-ngram", "2", "--seed", "1"])
    assert capsys.readouterr().out.count("--- sample") == 3
    infer.main([str(tiny_export), "rain", "--limit", "6", "--beams", "3", "--num-samples", "2",
                "--length-penalty", "0.5", "--early-stopping", "true", "--min-length", "2", "--exclude", "<unk>",
                "--block-size", "16", "--slide-keep", "0.5"])
    assert capsys.readouterr().out.count("--- sample") == 2


def test_infer_reads_stdin_and_cuts_at_stop_strings(infer, tiny_export, capsys, monkeypatch):
    infer.main([str(tiny_export), "the cat", "--limit", "12", "--greedy"])
    full = capsys.readouterr().out.rstrip("\n")
    stop = full[len("the cat") + 2: len("the cat") + 4]
    monkeypatch.setattr(sys, "stdin", io.StringIO("the cat\n"))
    infer.main([str(tiny_export), "-", "--limit", "12", "--greedy", "--stop", stop])
    cut = capsys.readouterr().out.rstrip("\n")
    assert cut == full[: full.index(stop, len("the cat"))]


def test_infer_interactive_answers_each_line(infer, tiny_export, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("the cat\n\nthe dog\n"))
    assert infer.main([str(tiny_export), "--interactive", "--limit", "3", "--greedy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line[:7] for line in lines] == ["the cat", "the dog"]


@pytest.mark.parametrize("arguments,message", [
    (["PROMPT_EMPTY"], "prompt is empty"),
    (["hello", "--top-p", "0"], "top_p"),
    (["hello", "--temperature", "-1"], "temperature"),
    (["hello", "--beams", "1000"], "larger than the vocabulary"),
    (["hello", "--exclude", "no-such-piece"], "neither a token id"),
    (["hello", "--num-samples", "2", "--stream"], "--stream"),
    ([], "no PROMPT"),
    (["hello", "--memory-writes"], "needs a model with a memory"),
])
def test_infer_bad_input_is_one_line_error(infer, tiny_export, capsys, arguments, message):
    arguments = ["" if a == "PROMPT_EMPTY" else a for a in arguments]
    with pytest.raises(SystemExit) as exit_:
        infer.main([str(tiny_export), *arguments])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and error.startswith("error:") and message in error
    assert len(error.strip().splitlines()) == 1


def test_infer_refuses_missing_paths(infer, tmp_path, capsys):
    with pytest.raises(SystemExit):
        infer.main([str(tmp_path / "missing.ckpt"), "hi"])
    assert "does not exist" in capsys.readouterr().err


def test_infer_warns_about_a_prompt_longer_than_the_context(infer, tiny_export, capsys):
    infer.main([str(tiny_export), "the cat sat on a mat " * 12, "--limit", "2", "--greedy"])
    assert "warning: prompt of" in capsys.readouterr().err


def test_manage_inspect_text_and_json(manage, tiny_export, capsys):
    manage.main(["inspect", str(tiny_export)])
    text = capsys.readouterr().out
    for line in ("model: xlab.models.XLabModel", "validation: val/loss best", f"tokenizer: {TOKENIZER_SIZE}"):
        assert line in text
    manage.main(["inspect", str(tiny_export), "--json"])
    facts = json.loads(capsys.readouterr().out)
    assert facts["global_step"] == 2 and facts["format"] == "export"


def test_manage_lists_its_commands_and_reports_bad_input(manage, tmp_path, capsys):
    assert {"export-checkpoint", "inspect", "import-hf"} <= set(manage.SUBCOMMANDS)
    with pytest.raises(SystemExit) as exit_:
        manage.main(["inspect", str(tmp_path / "missing.ckpt")])
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith("error: checkpoint")
