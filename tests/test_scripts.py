"""infer.py and manage.py: once each as real subprocesses, the rest in-process through main(argv)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT, TOKENIZER_SIZE, load_script
from xlab import inference


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
    from xlab.interop.export import load

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


def said(infer, capsys, export, prompt: str, *options: str) -> str:
    """What infer.py prints for `prompt`, without the prompt and the final newline."""
    assert infer.main([str(export), prompt, *options]) == 0
    out = capsys.readouterr().out
    assert out.startswith(prompt) and out.endswith("\n")
    return out[len(prompt):-1]


def reference(export, prompt: str, beam: bool = False, **settings) -> list[list[int]]:
    """The library's tokens for the same request: the export's defaults with `settings` over them."""
    from dataclasses import replace

    from xlab.interop.export import load

    loaded = load(export)
    tokenizer = loaded.tokenizer
    inputs = torch.tensor([tokenizer[tokenizer.sos_token], *tokenizer.encode(prompt)])
    seed = settings.pop("seed", None)
    chosen = replace(loaded.generation, **settings)
    rows = inference.generate(loaded.model, [inputs], chosen, decode=tokenizer.decode, seed=seed, beam=beam or None)
    return [row.tolist() for row in rows[0]]


def greedy_by_hand(export, prompt: str, limit: int) -> list[int]:
    """Argmax decoding by full recomputation, the slow obvious way (no cache, no processors)."""
    from xlab.interop.export import load

    loaded = load(export)
    tokenizer, model = loaded.tokenizer, loaded.model
    ids = [tokenizer[tokenizer.sos_token], *tokenizer.encode(prompt)]
    new = []
    with torch.no_grad():
        for _ in range(limit):
            token = int(model(torch.tensor([ids[-model.hparams.max_len:]]))[0, -1].argmax())
            if token == tokenizer.eos_id:
                break
            ids.append(token)
            new.append(token)
    return new


def decoded(export, tokens: list[int]) -> str:
    from xlab.interop.export import load

    return load(export).tokenizer.decode(tokens)


def has_repeated(tokens: list[int], n: int) -> bool:
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def test_greedy_top_k_1_tiny_top_p_and_temperature_0_are_argmax_decoding(infer, tiny_export, capsys):
    expected = decoded(tiny_export, greedy_by_hand(tiny_export, "the cat", 10))
    for options in (["--greedy"], ["--temperature", "0"], ["--top-k", "1", "--seed", "5"],
                    ["--top-p", "0.001", "--seed", "6"]):
        assert said(infer, capsys, tiny_export, "the cat", "--limit", "10", *options) == expected, options


def test_limit_and_seed(infer, tiny_export, capsys):
    long = said(infer, capsys, tiny_export, "a", "--limit", "12", "--greedy")
    short = said(infer, capsys, tiny_export, "a", "--limit", "4", "--greedy")
    assert long.startswith(short) and len(short) < len(long)
    assert len(reference(tiny_export, "a", output_length=4, temperature=0.0)[0]) == 4
    first = said(infer, capsys, tiny_export, "a", "--limit", "12", "--seed", "1")
    assert said(infer, capsys, tiny_export, "a", "--limit", "12", "--seed", "1") == first
    assert said(infer, capsys, tiny_export, "a", "--limit", "12", "--seed", "2") != first
    assert first == decoded(tiny_export, reference(tiny_export, "a", output_length=12, seed=1)[0])


def test_num_samples_prints_each_sample(infer, tiny_export, capsys):
    assert infer.main([str(tiny_export), "rain", "--limit", "6", "--num-samples", "3", "--seed", "1",
                       "--top-k", "20", "--temperature", "0.8"]) == 0
    out = capsys.readouterr().out
    samples = [part.split("\n", 1)[1].rstrip("\n") for part in out.split("--- sample ")[1:]]
    expected = reference(tiny_export, "rain", output_length=6, num_samples=3, seed=1, top_k=20, temperature=0.8)
    assert samples == ["rain" + decoded(tiny_export, tokens) for tokens in expected]
    assert [f"{i} of 3 ---" in out for i in (1, 2, 3)] == [True] * 3


def test_exclude_never_emits_the_token(infer, tiny_export, capsys):
    from xlab.interop.export import load

    greedy = greedy_by_hand(tiny_export, "the cat", 10)
    banned = greedy[0]
    piece = load(tiny_export).tokenizer.id_to_piece(banned)
    tokens = reference(tiny_export, "the cat", output_length=10, temperature=0.0, exclude_tokens=[banned])[0]
    assert banned not in tokens and tokens[0] != banned
    for token in (str(banned), piece):  # by id and by piece
        assert said(infer, capsys, tiny_export, "the cat", "--limit", "10", "--greedy", "--exclude", token) \
            == decoded(tiny_export, tokens)


def test_repetition_controls_remove_repeats(infer, tiny_export, capsys):
    plain = reference(tiny_export, "the", output_length=24, temperature=0.0)[0]
    assert has_repeated(plain, 2)  # the tiny model repeats itself when greedy
    tokens = reference(tiny_export, "the", output_length=24, temperature=0.0, no_repeat_ngram_size=2)[0]
    assert not has_repeated(tokens, 2)
    assert said(infer, capsys, tiny_export, "the", "--limit", "24", "--greedy", "--no-repeat-ngram", "2") \
        == decoded(tiny_export, tokens)
    penalised = reference(tiny_export, "the", output_length=24, temperature=0.0, repetition_penalty=5.0)[0]
    assert len(set(penalised)) > len(set(plain))
    assert said(infer, capsys, tiny_export, "the", "--limit", "24", "--greedy", "--repetition-penalty", "5") \
        == decoded(tiny_export, penalised)


def test_min_length_delays_the_end_token(infer, tiny_export, capsys):
    from xlab.interop.export import load

    eos = load(tiny_export).tokenizer.eos_id
    # Everything but the end token and one other is forbidden, so the text is that token repeated.
    vocab = load(tiny_export).model.hparams.vocab_size
    keep = greedy_by_hand(tiny_export, "the", 1)[0]
    banned = [t for t in range(vocab) if t not in (eos, keep)]
    held = reference(tiny_export, "the", output_length=12, temperature=0.0, exclude_tokens=banned, min_length=5)[0]
    assert len(held) >= 5 and set(held) == {keep}  # the end token waited for five new tokens
    assert said(infer, capsys, tiny_export, "the", "--limit", "12", "--greedy", "--min-length", "5") \
        == decoded(tiny_export, reference(tiny_export, "the", output_length=12, temperature=0.0, min_length=5)[0])


def test_beams_are_the_library_beam_search(infer, tiny_export, capsys):
    assert infer.main([str(tiny_export), "rain", "--limit", "6", "--beams", "3", "--num-samples", "2",
                       "--length-penalty", "0.5", "--early-stopping", "true"]) == 0
    out = capsys.readouterr().out
    samples = [part.split("\n", 1)[1].rstrip("\n") for part in out.split("--- sample ")[1:]]
    from xlab.interop.export import load

    loaded = load(tiny_export)
    tokenizer = loaded.tokenizer
    inputs = torch.tensor([tokenizer[tokenizer.sos_token], *tokenizer.encode("rain")])
    best = inference.beam_search(loaded.model, inputs, output_length=6, block_size=32, eos_class=tokenizer.eos_id,
                                 num_beams=3, length_penalty=0.5, early_stopping=True, num_return=2)
    assert samples == ["rain" + tokenizer.decode(tokens) for tokens in best]


def test_block_size_and_slide_keep_reach_the_sampler(infer, tiny_export, capsys):
    text = said(infer, capsys, tiny_export, "the cat sat", "--limit", "30", "--greedy", "--block-size", "8",
                "--slide-keep", "0.5")
    tokens = reference(tiny_export, "the cat sat", output_length=30, temperature=0.0, block_size=8, slide_keep=0.5)[0]
    assert text == decoded(tiny_export, tokens)
    assert tokens != reference(tiny_export, "the cat sat", output_length=30, temperature=0.0)[0]


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
    assert {"export-checkpoint", "inspect", "import-hf", "export-hf", "build-retrieval", "build-dataset"} <= set(manage.all_commands())
    with pytest.raises(SystemExit) as exit_:
        manage.main(["inspect", str(tmp_path / "missing.ckpt")])
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith("error: checkpoint")
