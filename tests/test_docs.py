"""Docs that cannot drift: every shell block of README.md and docs/ marked `bash runnable` runs,
shrunk to seconds, in the order written and in one folder, as a new user would type it on a fresh
clone (`./xlab.py`, `./infer.py`, `./manage.py`, `VAR=value`, `echo ... |`); every Python block
runs there after the shell blocks before it; and the README's recipes table lists exactly the
files of conf/."""

from __future__ import annotations

import io
import re
import shlex
import time
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import CONF, ROOT, load_script
from xlab.cli import main as xlab_main

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```", re.S | re.M)
TRAINER = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
           "--trainer.precision", "32-true", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "2",
           "--trainer.enable_progress_bar", "false"]


def blocks(path: Path) -> list[tuple[str, str]]:
    """("shell" | "python", body) of each block that runs: `bash runnable` and `python` fences."""
    found = []
    for language, info, body in FENCE.findall(path.read_text()):
        if language == "bash" and "runnable" in info.split():
            found.append(("shell", body))
        elif language == "python":
            found.append(("python", body))
    return found


def command_lines(body: str) -> list[list[str]]:
    """Each command of a shell block as words: continuations joined, comments dropped."""
    return [words for line in body.replace("\\\n", " ").splitlines()
            if (words := shlex.split(line, comments=True))]


def recipe_of(args: list[str]) -> dict:
    path = args[args.index("-c") + 1] if "-c" in args else "conf/defaults.yaml"
    return yaml.safe_load((ROOT / path).read_text())


def set_(args: list[str], key: str, value: str) -> list[str]:
    """`args` with `key` given `value`: replaced where the command gives it, else appended."""
    if key in args:
        args = list(args)
        args[args.index(key) + 1] = value
        return args
    return [*args, key, value]


def shrunk_fit(args: list[str]) -> list[str]:
    """A fit command made tiny: a resumed run keeps its checkpoint's shape and gets two more steps
    where it asks for more; a new run gets a tiny model of its recipe's family on a few documents."""
    if "--ckpt_path" in args:
        extended = "--trainer.max_steps" in args
        return [*set_(args, "--trainer.max_steps", "6" if extended else "4"), *TRAINER]
    recipe = recipe_of(args)
    model, data = recipe["model"]["init_args"], recipe["data"]["init_args"]
    args = [*args, *TRAINER, "--trainer.max_steps", "4", "--data.init_args.batch_size", "4",
            "--data.init_args.num_workers", "0"]
    if "sources" in data or "episodes" in data:  # dialogue: a window in every split; RETRO: a small database
        documents = "200" if "episodes" in data else "12" if "chunk_size" in model else "40"
        args += ["--data.init_args.max_documents", documents]
    if model.get("init_from"):  # the pretrained folder decides the shape
        return [*args, "--model.init_args.max_len", "16"]
    shape = ["--model.init_args.n_layer", "1", "--model.init_args.n_head", "2", "--model.init_args.n_embd", "32"]
    if "Caption" in recipe["model"]["class_path"]:
        return [*args, *shape, "--data.init_args.eval_batch_size", "16"]
    args += [*shape, "--model.init_args.max_len", "16", "--model.init_args.compile", "false",
             "--data.init_args.vocab_size", "400"]
    if "chunk_size" in model:  # RETRO: chunks that fit the context, cross-attention in the one layer, every split fed
        args += ["--model.init_args.chunk_size", "4", "--data.init_args.chunk_size", "4",
                 "--model.init_args.dec_cross_attn_layers", "null",
                 "--data.init_args.split_fractions", "[0.5, 0.2, 0.2, 0.1]"]
    if "episodes" in data:
        args += ["--data.init_args.eval_examples", "4", "--data.init_args.candidates", "4",
                 "--data.init_args.reply_tokens", "4"]
    return args


def run(words: list[str], env: dict[str, str], stdin: str = "") -> None:
    words = [re.sub(r"\$(\w+)", lambda m: env[m.group(1)], w) for w in words]
    if len(words) == 1 and re.fullmatch(r"\w+=.*", words[0]):
        name, value = words[0].split("=", 1)
        env[name] = value
        return
    if "|" in words:  # echo TEXT | command: TEXT is the command's standard input
        cut = words.index("|")
        assert words[0] == "echo", words
        return run(words[cut + 1:], env, " ".join(words[1:cut]) + "\n")
    script, args = words[0], words[1:]
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        if script == "./xlab.py":
            if args[0] == "fit":
                args = shrunk_fit(args)
            elif args[0] in ("validate", "test", "predict"):
                args = [*args, *TRAINER, "--trainer.limit_test_batches", "2", "--trainer.limit_predict_batches", "2"]
            xlab_main(args)
        elif script in ("./infer.py", "./manage.py"):
            assert load_script(script[2:-3]).main(args) in (0, None), words
        else:
            raise AssertionError(f"a runnable block runs ./xlab.py, ./infer.py, ./manage.py only: {words}")
    finally:
        sys.stdin = saved


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """One folder for every document, as a clone would be: conf/ beside the runs and exports."""
    folder = tmp_path_factory.mktemp("clone")
    (folder / "conf").symlink_to(CONF)
    return folder


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_runnable_block_runs(doc, workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    env: dict[str, str] = {}
    for kind, body in blocks(doc):
        if kind == "shell":
            for words in command_lines(body):
                started = time.process_time()
                run(words, env)
                print(f"docs: {time.process_time() - started:.1f} s CPU: {' '.join(words)[:100]}")  # shown on failure
        else:
            exec(compile(body, f"{doc.name} python block", "exec"), {"__name__": "docs"})


def test_the_readme_has_runnable_quick_starts_for_every_family():
    fits = [words[2:] for kind, body in blocks(ROOT / "README.md") if kind == "shell"
            for words in command_lines(body) if words[:2] == ["./xlab.py", "fit"]]
    assert [] in fits  # the default run, as the README's first command runs it
    for recipe in ("finetune", "memory-cpu", "retro-cpu", "dialogue-cpu", "caption"):
        assert ["-c", f"conf/{recipe}.yaml"] in fits, recipe


def test_the_recipes_table_lists_every_file_of_conf():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Recipes"):].split("\n\n")[1]
    listed = re.findall(r"^\| `([\w-]+\.yaml)` \|", table, re.M)
    assert sorted(listed) == sorted(p.name for p in CONF.glob("*.yaml"))
    assert len(listed) == len(set(listed))


def test_a_shrunk_command_keeps_what_the_user_asked_for():
    assert shrunk_fit(["fit", "--ckpt_path", "x.ckpt", "--trainer.max_steps", "1500"])[:5] == [
        "fit", "--ckpt_path", "x.ckpt", "--trainer.max_steps", "6"]
    words = command_lines('CKPT=a.ckpt  # note\n./infer.py $CKPT "The" \\\n  --beams 4\n')
    assert words == [["CKPT=a.ckpt"], ["./infer.py", "$CKPT", "The", "--beams", "4"]]
