"""xlab/dialogue/episode.py: the episode schema's bad input, and malformed JSONL lines named by file and
line or skipped and counted."""

from __future__ import annotations

import json

import pytest

from xlab.common.errors import XLabError
from xlab.dialogue.episode import Episode, Turn, read_episodes


def episode(n_turns=6, trained=lambda t: t % 2 == 1, context="A cafe."):
    turns = [Turn("User" if t % 2 == 0 else "Bot", f"words of turn {t}", trained(t)) for t in range(n_turns)]
    return Episode("e1", "test", turns, context, {"Bot": "I like tea."})


def test_an_episode_with_no_turns_or_no_trained_turn_is_refused():
    with pytest.raises(XLabError, match="has no turns"):
        Episode("e", "t", []).check()
    with pytest.raises(XLabError, match="no turn marked train"):
        Episode("e", "t", [Turn("A", "x", False)]).check()


def test_malformed_jsonl_lines_fail_with_file_and_line_or_are_skipped_and_counted(tmp_path, capsys):
    path = tmp_path / "eps.jsonl"
    good = episode().to_json()
    path.write_text(good + "\n{not json\n" + json.dumps({"id": "x", "turns": []}) + "\n" + good + "\n")
    with pytest.raises(XLabError, match=r"eps.jsonl:2: .*on_error: skip"):
        list(read_episodes(path))
    report = []
    assert len(list(read_episodes(path, "skip", report))) == 2
    assert [line.split(": ")[0].rsplit("/", 1)[1] for line in report] == ["eps.jsonl:2", "eps.jsonl:3"]
    assert "skipped 2 malformed line(s)" in capsys.readouterr().out
