"""Every dialogue reader on data the test writes in the dataset's own layout, and on a wrong layout."""

from __future__ import annotations

import json
import pickle

import pytest

from xlab.common.errors import XLabError
from xlab.dialogue.modules import build_module


def episodes(spec):
    return list(build_module(spec).episodes())


def test_chitchat_joins_a_senders_consecutive_messages(tmp_path):
    path = tmp_path / "dataset.json"
    msg = lambda text, who: {"text": text, "timestamp": "2018-05-02T19:38:15Z", "sender": who}
    path.write_text(json.dumps({"u1": {"prompt": "", "ratings": {}, "start": "", "messages": [
        [msg("Hello", "a"), msg("How are you?", "a")], [msg("fine", "b")], [msg("good", "a")]]}}))
    (ep,) = episodes(f"chitchat:ChitChat={path}")
    assert ep.id == "chitchat-u1" and ep.source == "chitchat:ChitChat"
    assert [(t.speaker, t.text, t.train) for t in ep.turns] == [
        ("User", "Hello How are you?", True), ("Bot", "fine", True), ("User", "good", True)]
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(XLabError, match="expected layout"):
        episodes(f"chitchat:ChitChat={path}")


def test_chitchat_reads_the_installed_package():
    (ep,) = list(build_module({"module": "chitchat:ChitChat", "limit": 1}).episodes())
    assert len(ep.turns) > 2 and {t.speaker for t in ep.turns} == {"User", "Bot"}


def test_chatterbot_trains_the_answers_only(tmp_path):
    (tmp_path / "english").mkdir()
    (tmp_path / "english" / "greetings.yml").write_text(
        "categories:\n- greetings\nconversations:\n- - Hello\n  - Hi there\n- - How are you?\n  - Fine.\n  - Good.\n")
    eps = episodes(f"chatterbot:Chatterbot={tmp_path}")
    assert [[(t.speaker, t.text, t.train) for t in e.turns] for e in eps] == [
        [("User", "Hello", False), ("Bot", "Hi there", True)],
        [("User", "How are you?", False), ("Bot", "Fine.", True), ("User", "Good.", False)]]
    (tmp_path / "english" / "greetings.yml").write_text("- just\n- a list\n")
    with pytest.raises(XLabError, match=r"expected layout \(\{categories"):
        episodes(f"chatterbot:Chatterbot={tmp_path}")


def test_chatterbot_reads_the_installed_package():
    eps = list(build_module({"module": "chatterbot:Chatterbot", "limit": 3}).episodes())
    assert len(eps) == 3 and all(e.turns[1].train for e in eps)


def test_sharegpt(tmp_path):
    path = tmp_path / "chats.json"
    path.write_text(json.dumps([{"id": "c1", "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}]))
    (ep,) = episodes(f"sharegpt:ShareGPT={path}")
    assert ep.id == "sharegpt-c1" and ep.context == "Be brief."
    assert [(t.speaker, t.text, t.train) for t in ep.turns] == [("User", "Hi", False), ("Bot", "Hello!", True)]
    path.write_text(json.dumps([{"messages": []}]))
    with pytest.raises(XLabError, match=r"expected layout .*conversations.*found keys \['messages'\]"):
        episodes(f"sharegpt:ShareGPT={path}")


def test_openai_messages(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "system", "content": "You help."},
                                             {"role": "user", "content": "2+2?"},
                                             {"role": "assistant", "content": "4"}]}) + "\n")
    (ep,) = episodes(f"openai:OpenAIChat={path}")
    assert ep.context == "You help." and [(t.speaker, t.train) for t in ep.turns] == [("User", False), ("Bot", True)]
    path.write_text(json.dumps({"conversations": []}) + "\n")
    with pytest.raises(XLabError, match=r"train.jsonl:1 is not in the expected layout .*messages"):
        episodes(f"openai:OpenAIChat={path}")


def light_episode():
    return {"setting": {"name": "Watchtower", "category": "castle", "description": "The tower is tall."},
            "agents": [{"name": "court wizard", "persona": "I am a wizard."}, {"name": "soldier", "persona": "I guard."}],
            "speech": ["A quiet night.", "Yes it is", "Have any come up?"],
            "emote": [None, None, "ponder"], "action": [None, "hug court wizard", None]}


def test_light_needs_the_pickle_opt_in_and_reads_plain_data(tmp_path):
    path = tmp_path / "light_data.pkl"
    path.write_bytes(pickle.dumps([light_episode()]))
    with pytest.raises(XLabError, match="allow_pickle: true"):
        episodes(f"light:LightDialogue={path}")
    (ep,) = episodes(f"light:LightDialogue={path}?allow_pickle=true")
    assert ep.context == "You are in the Watchtower.\nThe tower is tall."
    assert ep.personas == {"Court Wizard": "I am a wizard.", "Soldier": "I guard."}
    assert [(t.speaker, t.text, t.action, t.emote) for t in ep.turns] == [
        ("Court Wizard", "A quiet night.", None, None), ("Soldier", "Yes it is", "hug court wizard", None),
        ("Court Wizard", "Have any come up?", None, "ponder")]


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_light_refuses_a_pickle_that_builds_objects(tmp_path):
    path = tmp_path / "light_data.pkl"
    path.write_bytes(pickle.dumps([Payload()]))
    with pytest.raises(XLabError, match="builtins.print"):
        episodes({"module": "light:LightDialogue", "path": str(path), "allow_pickle": True})


def test_personachat_parlai_text_format(tmp_path):
    path = tmp_path / "train_both_original.txt"
    path.write_text("1 your persona: i like cats.\n2 your persona: i am tall.\n3 partner's persona: i ski.\n"
                    "4 hi , how are you ?\ti am great .\t\tno|i am great .\n5 do you ski ?\tno , i like cats .\n"
                    "1 your persona: i sing.\n2 __SILENCE__\thello there !\n")
    first, second = episodes(f"personachat:PersonaChat={path}")
    assert first.personas == {"Bot": "i like cats. i am tall.", "User": "i ski."}
    assert [(t.speaker, t.text, t.train) for t in first.turns] == [
        ("User", "hi , how are you ?", False), ("Bot", "i am great .", True),
        ("User", "do you ski ?", False), ("Bot", "no , i like cats .", True)]
    assert [(t.speaker, t.text) for t in second.turns] == [("Bot", "hello there !")]
    path.write_text("hello without a number\n")
    with pytest.raises(XLabError, match=r"personachat:PersonaChat: .*:1 is not in the expected layout"):
        episodes(f"personachat:PersonaChat={path}")


def test_dailydialog_eou_separated(tmp_path):
    path = tmp_path / "dialogues_text.txt"
    path.write_text("Say , Jim , how about a beer ? __eou__ You know that is tempting . __eou__ OK . __eou__\n")
    (ep,) = episodes(f"dailydialog:DailyDialog={tmp_path}")
    assert [(t.speaker, t.text) for t in ep.turns] == [
        ("User", "Say , Jim , how about a beer ?"), ("Bot", "You know that is tempting ."), ("User", "OK .")]
    path.write_text("no separators here\n")
    with pytest.raises(XLabError, match="__eou__"):
        episodes(f"dailydialog:DailyDialog={path}")


def test_cornell_movie_dialogs_latin1(tmp_path):
    sep = " +++$+++ "
    (tmp_path / "movie_lines.txt").write_bytes(sep.join(["L1", "u0", "m0", "BIANCA", "Café?"]).encode("latin-1") + b"\n"
                                               + sep.join(["L2", "u2", "m0", "CAMERON", "No."]).encode("latin-1") + b"\n")
    (tmp_path / "movie_conversations.txt").write_text(sep.join(["u0", "u2", "m0", "['L1', 'L2']"]) + "\n",
                                                      encoding="latin-1")
    (tmp_path / "movie_titles_metadata.txt").write_text(sep.join(["m0", "10 things", "1999", "6.9", "1", "[]"]) + "\n",
                                                        encoding="latin-1")
    (ep,) = episodes(f"cornell:CornellMovies={tmp_path}")
    assert ep.context == "A scene from 10 things (1999)."
    assert [(t.speaker, t.text) for t in ep.turns] == [("Bianca", "Café?"), ("Cameron", "No.")]
    (tmp_path / "movie_conversations.txt").write_text("u0 u2 m0 L1 L2\n")
    with pytest.raises(XLabError, match=r"4 fields separated by '\+\+\+\$\+\+\+'"):
        episodes(f"cornell:CornellMovies={tmp_path}")


def test_a_module_that_needs_a_file_says_so():
    with pytest.raises(XLabError, match="reads a local file: give its path"):
        build_module("sharegpt:ShareGPT")
    with pytest.raises(XLabError, match="does not exist"):
        build_module("sharegpt:ShareGPT=/nonexistent/chats.json")
