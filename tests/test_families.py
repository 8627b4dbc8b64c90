"""xlab/families.py, xlab/common/plugins.py and xlab/common/lazy.py: what the scripts ask the model
families for. Each family's cli.py declares its infer.py options and manage.py commands without
importing torch, Lightning or the family's models (a fresh interpreter is checked); infer.py --help
lists every family's options under its heading and manage.py every family's commands; the code
behind an option or a command is imported only when it runs, and a family package's classes only
when first asked for."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, load_script
from xlab.common.lazy import lazy_exports, resolve
from xlab.common.plugins import Command, FrontEnd, Option, option
from xlab.families import FAMILIES, commands, front_ends

HEAVY = ("torch", "lightning", "faiss", "transformers", "sentencepiece", "numpy")


def fresh(code: str) -> dict:
    """Run `code` in a new interpreter; it prints one JSON value as its last line."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_every_familys_cli_imports_without_torch_lightning_or_its_models():
    loaded = fresh(f"""
import importlib, json, sys
for family in {list(FAMILIES)!r}:
    importlib.import_module(family + ".cli")
from xlab.families import commands, front_ends
front_ends(), commands()
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({list(HEAVY)!r}))
families = sorted(m for m in sys.modules if m.startswith({tuple(FAMILIES)!r}))
print(json.dumps({{"heavy": heavy, "families": families}}))
""")
    assert loaded["heavy"] == []
    assert loaded["families"] == sorted([*FAMILIES, *(f"{family}.cli" for family in FAMILIES)])


def test_front_ends_and_commands_come_in_the_order_of_the_families():
    titles = [front_end.title for front_end in front_ends()]
    assert titles == ["captions (CaptionModel)", "memory (MemoryGPT2)", "chat (models trained on dialogue episodes)"]
    assert [command.name for command in commands()] == ["build-retrieval", "build-dataset"]
    for front_end in front_ends():
        assert isinstance(front_end, FrontEnd) and (front_end.run is None) == (front_end.selected is None)
    for command in commands():
        assert isinstance(command, Command) and callable(resolve(command.run))


def test_infer_help_lists_every_familys_options_under_its_heading():
    done = subprocess.run([sys.executable, "infer.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for front_end in front_ends():
        heading = text.index(f"\n{front_end.title}:\n")
        for each in front_end.options:
            flag = each.flags[0]
            assert text.index(f"  {flag}", heading) > heading, flag
    for flag in ("--image", "--style", "--memory-writes", "--chat", "--persona", "--context", "--user-name",
                 "--bot-name", "--turn-end"):
        assert f"  {flag}" in text, flag


def test_manage_lists_every_familys_commands(capsys):
    manage = load_script("manage")
    names = list(manage.all_commands())
    assert names[:5] == ["export-checkpoint", "inspect", "import-hf", "export-hf", "prepare-data"]
    assert names[5:] == ["build-retrieval", "build-dataset"]
    with pytest.raises(SystemExit):
        manage.main(["--help"])
    listing = capsys.readouterr().out
    assert "build-retrieval" in listing and "build-dataset" in listing
    with pytest.raises(SystemExit):
        manage.main(["build-retrieval", "--help"])
    assert "-c YAML, --config YAML" in capsys.readouterr().out  # it reads a recipe as xlab.py does


def test_an_option_is_one_add_argument_call_and_a_front_end_one_group():
    parser = argparse.ArgumentParser()
    each = option("--flag", "-f", type=int, default=3, metavar="N", help="a number")
    assert each == Option(("--flag", "-f"), {"type": int, "default": 3, "metavar": "N", "help": "a number"})
    FrontEnd("a family", (each, option("--on", action="store_true"))).add_to(parser)
    assert vars(parser.parse_args(["-f", "7", "--on"])) == {"flag": 7, "on": True}
    assert vars(parser.parse_args([])) == {"flag": 3, "on": False}
    group = next(g for g in parser._action_groups if g.title == "a family")
    assert [a.dest for a in group._group_actions] == ["flag", "on"]


def test_resolve_imports_the_code_a_reference_names():
    assert resolve("xlab.common.lazy:resolve") is resolve
    assert resolve("json:dumps") is json.dumps
    with pytest.raises(ModuleNotFoundError):
        resolve("xlab.no_such_module:run")
    with pytest.raises(AttributeError):
        resolve("xlab.common.lazy:no_such_function")


def test_a_familys_classes_are_imported_when_first_asked_for():
    found = fresh("""
import json, sys
import xlab.retro, xlab.captions
before = sorted(m for m in sys.modules if m.startswith(("xlab.retro.", "xlab.captions.")))
listed = dir(xlab.retro)
model = xlab.retro.RetroModel
after = {m for m in sys.modules if m.startswith("xlab.retro.")}
print(json.dumps({"before": before, "listed": listed, "model": model.__module__, "torch": "torch" in sys.modules,
                  "model_loaded": "xlab.retro.model" in after, "captions": "xlab.captions.model" in sys.modules}))
""")
    assert found["before"] == []  # importing the package imports none of its modules
    assert "RetroModel" in found["listed"] and found["listed"] == sorted(found["listed"])
    assert found["model"] == "xlab.retro.model" and found["model_loaded"] and found["torch"]
    assert not found["captions"]  # asking one family loads nothing of another


def test_lazy_exports_import_on_first_use_and_refuse_unknown_names():
    getattr_, dir_ = lazy_exports("xlab.common", {"XLabError": ".errors", "written_aside_": ".files"})
    from xlab.common.errors import XLabError
    from xlab.common.files import written_aside_

    assert getattr_("XLabError") is XLabError and getattr_("written_aside_") is written_aside_
    assert dir_() == ["XLabError", "written_aside_"]
    with pytest.raises(AttributeError, match="module 'xlab.common' has no attribute 'read_checkpoint'"):
        getattr_("read_checkpoint")  # a real name of the package, but not one it exports lazily
    import xlab.captions

    assert set(dir(xlab.captions)) == set(xlab.captions.__all__) == {"CaptionDataModule", "CaptionModel"}
    assert xlab.captions.CaptionModel is importlib.import_module("xlab.captions.model").CaptionModel
    with pytest.raises(AttributeError, match="module 'xlab.captions' has no attribute 'Caption'"):
        xlab.captions.Caption  # noqa: B018
