"""Sources of text every Debian-based machine with Python has (`xlab/datamodules/sources/installed.py`)."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from xlab.common.errors import XLabError
from xlab.datamodules.sources import build_source


def test_the_standard_library_is_its_own_py_files_without_tests_or_installed_packages():
    documents = list(build_source({"kind": "stdlib", "max_chars": 5000}))
    ids = [d.id for d in documents]
    assert "stdlib/os.py" in ids and "stdlib/json/decoder.py" in ids
    assert not [i for i in ids if "/test/" in i or "site-packages" in i or "idlelib" in i]
    os_source = (Path(sysconfig.get_paths()["stdlib"]) / "os.py").read_text()
    assert next(d.text for d in documents if d.id == "stdlib/os.py") == os_source[:5000]
    assert max(len(d.text) for d in documents) == 5000
    assert len(set(d.text for d in documents)) == len(documents)  # identical files are read once


def test_licences_are_read_once_each_and_named_by_their_path():
    documents = list(build_source({"kind": "licences"}))
    ids = {d.id for d in documents}
    assert "licences/common-licenses/GPL-3" in ids or any(i.startswith("licences/common-licenses/") for i in ids)
    assert all(i.startswith(("licences/common-licenses/", "licences/doc/")) for i in ids)
    assert len({d.text for d in documents}) == len(documents)


def test_the_fingerprint_follows_the_files_and_the_cut():
    one, two = build_source({"kind": "stdlib"}), build_source({"kind": "stdlib", "max_chars": 100})
    assert one.fingerprint()["files"] == two.fingerprint()["files"] and one.fingerprint() != two.fingerprint()
    with pytest.raises(XLabError, match="max_chars=0 must be positive"):
        build_source({"kind": "stdlib", "max_chars": 0})
