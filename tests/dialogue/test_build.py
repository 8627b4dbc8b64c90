"""`manage.py build-dataset`: printing, writing, the output name rules, and the bad-input cases."""

from __future__ import annotations

import json
import re

import pytest

from tests.dialogue.helpers import topic_episodes, write_episodes
from tests.helpers import load_script


@pytest.fixture(scope="module")
def manage():
    return load_script("manage")


@pytest.fixture
def sharegpt(tmp_path):
    path = tmp_path / "chats.json"
    path.write_text(json.dumps([{"id": f"c{i}", "conversations": [
        {"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": f"answer number {i}"}]} for i in range(5)]))
    return path


def test_print_shows_episodes_with_context_and_speakers(manage, tmp_path, capsys):
    path = write_episodes(tmp_path / "eps.jsonl", topic_episodes(3))
    assert manage.main(["build-dataset", "-p", "1", "-m", f"episodes:Episodes={path}", "-f", ""]) == 0
    out = capsys.readouterr().out
    assert out.startswith("--- new episode ---\nContext: A talk about ")
    assert re.search(r"\nUser: do you like \w+ or \w+ \?\nBot: i like", out) and out.count("--- new episode ---") == 1


def test_print_reads_the_packaged_chitchat(manage, capsys):
    assert manage.main(["build-dataset", "-p", "1", "-m", "chitchat:ChitChat"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "--- new episode ---" and lines[1].startswith("User: ") and lines[2].startswith("Bot: ")


def test_writes_jsonl_named_by_revision_and_arguments_and_never_overwrites(manage, sharegpt, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert manage.main(["build-dataset", "-m", f"sharegpt:ShareGPT={sharegpt}", "-v"]) == 0
    (written,) = tmp_path.glob("rev-*.jsonl")
    assert re.fullmatch(r"rev-([0-9a-f]{4,}|nogit)-args[0-9a-f]{8}\.jsonl", written.name)
    lines = written.read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[0])["source"] == "sharegpt:ShareGPT"
    assert "wrote 5 episodes" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        manage.main(["build-dataset", "-m", f"sharegpt:ShareGPT={sharegpt}", "-v"])
    assert "exists and is never overwritten" in capsys.readouterr().err
    assert manage.main(["build-dataset", "-m", f"sharegpt:ShareGPT={sharegpt}", "-o", "mine"]) == 0
    assert (tmp_path / "mine.jsonl").is_file() and not list(tmp_path.glob("*.tmp-*"))


@pytest.mark.parametrize("args, message", [
    (["-o", "x", "-p", "1"], "-o and -p exclude each other"),
    (["-m", "nope:Nothing"], "there is no dialogue module 'nope': use one of chitchat:ChitChat"),
    (["-m", "chitchat:Chitchat"], "has no class 'Chitchat': use chitchat:ChitChat"),
    (["-m", "light:LightDialogue=/dev/null"], "allow_pickle: true"),
    (["-f", "shiny"], "there is no filter 'shiny'"),
])
def test_bad_input_is_one_line(manage, args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        manage.main(["build-dataset", *args])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
