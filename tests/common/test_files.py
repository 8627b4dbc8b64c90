"""xlab/files.py: what is written aside lands whole or not at all, and leaves no temporary behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from xlab.common import files
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


def killed_writer(target: Path) -> int:
    """The pid of a process that began writing `target` aside and was killed (SIGKILL) half way."""
    code = ("import sys, time\nfrom xlab.common.files import written_aside_\n"
            "with written_aside_(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half'); print(tmp, flush=True)\n"
            "    time.sleep(60)\n")
    writer = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    assert Path(writer.stdout.readline().strip()).exists()
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    return writer.pid


def test_the_next_writer_removes_what_a_killed_one_left(tmp_path):
    target = tmp_path / "episodes.jsonl"
    killed_writer(target)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith("episodes.jsonl.tmp-")
    write_text_(target, "whole\n")
    assert listing(tmp_path) == ["episodes.jsonl"] and target.read_text() == "whole\n"


def test_only_this_hosts_dead_writers_are_cleaned(tmp_path):
    target = tmp_path / "cache"
    dead = killed_writer(target)
    other_host = tmp_path / f"cache.tmp-elsewhere-{dead}"  # a process id of another machine says nothing here
    alive = tmp_path / f"cache.tmp-{files.HOST}-{os.getpid()}-x"  # not a name a writer uses: left alone
    running = tmp_path / f"cache.tmp-{files.HOST}-1"  # a running process's (pid 1)
    unrelated = tmp_path / "cache.tmp-notes"
    for path in (other_host, alive, running, unrelated):
        path.write_text("")
    removed = files.remove_stale_(target)
    assert [p.name for p in removed] == [f"cache.tmp-{files.HOST}-{dead}"]
    assert listing(tmp_path) == sorted(p.name for p in (other_host, alive, running, unrelated))
