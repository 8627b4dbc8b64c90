"""xlab/files.py: what is written aside lands whole or not at all, and leaves no temporary behind."""

from __future__ import annotations

import pytest

from xlab.common.files import write_bytes_, write_text_, written_aside_, written_aside_together_


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_file_lands_only_when_its_block_succeeds(tmp_path):
    target = write_text_(tmp_path / "a.json", "old")
    with pytest.raises(RuntimeError, match="disk full"):
        with written_aside_(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and listing(tmp_path) == ["a.json"]
    write_bytes_(target, b"new")
    assert target.read_bytes() == b"new" and listing(tmp_path) == ["a.json"]


def test_a_folder_replaces_a_non_empty_folder_and_a_failed_one_keeps_it(tmp_path):
    target = tmp_path / "cache"
    target.mkdir()
    (target / "stale.bin").write_bytes(b"x")
    with written_aside_(target) as tmp:
        tmp.mkdir()
        (tmp / "meta.json").write_text("{}")
    assert listing(target) == ["meta.json"] and listing(tmp_path) == ["cache"]
    with pytest.raises(KeyboardInterrupt):
        with written_aside_(target) as tmp:
            tmp.mkdir()
            (tmp / "half.bin").write_bytes(b"y")
            raise KeyboardInterrupt
    assert listing(target) == ["meta.json"] and listing(tmp_path) == ["cache"]


def test_files_written_together_land_together_in_order(tmp_path):
    a, b = tmp_path / "report.json", tmp_path / "index.faiss"
    with pytest.raises(ValueError):
        with written_aside_together_(a, b) as (ta, tb):
            ta.write_text("report")
            tb.write_text("index")
            raise ValueError
    assert listing(tmp_path) == []
    with written_aside_together_(a, b) as (ta, tb):
        ta.write_text("report")
        tb.write_text("index")
    assert a.read_text() == "report" and b.read_text() == "index" and listing(tmp_path) == [b.name, a.name]


def test_files_written_together_are_renamed_in_the_order_given(tmp_path):
    a, b = tmp_path / "report.json", tmp_path / "index.faiss"
    b.mkdir()
    (b / "in-the-way").write_text("")  # renaming a file onto a non-empty folder fails
    with pytest.raises(OSError):
        with written_aside_together_(a, b) as (ta, tb):
            ta.write_text("report")
            tb.write_text("index")
    assert a.read_text() == "report" and listing(tmp_path) == [b.name, a.name]
