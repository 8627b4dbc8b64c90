"""The installable package (pyproject.toml): every package of xlab/ and the recipes go into the wheel,
and an installed XLab imports, and finds its default recipe, from any folder."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from tests.helpers import ROOT


def test_every_package_of_xlab_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in (ROOT / "xlab").rglob("__init__.py")}
    assert listed == found | {"xlab.conf"}


def test_an_installed_xlab_imports_and_finds_its_recipes_from_another_folder(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("xlab-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "xlab/conf/defaults.yaml" in names and "xlab/common/legacy.py" in names and "xlab/retro/cli.py" in names
    assert not any(name.startswith("tests/") for name in names)
    # The wheel alone, outside the checkout: the dependencies are this environment's.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    probe = ("import xlab, xlab.cli, xlab.models; print(xlab.__file__); print(xlab.cli.DEFAULT_CONFIG.is_file())")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": ""},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0].startswith(str(target)) and out[1] == "True"
