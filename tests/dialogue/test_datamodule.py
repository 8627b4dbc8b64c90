"""DialogueDataModule: split by episode, the tokenizer's turn-end token, masked batches, and bad input."""

from __future__ import annotations

import json

import pytest

from tests.dialogue.helpers import topic_episodes, write_episodes
from xlab.common.errors import XLabError
from xlab.common.tokenizer import IGNORE_INDEX
from xlab.datamodules.base import DataModule
from xlab.dialogue.datamodule import DialogueDataModule


def module(tmp_path, episodes, **settings) -> DialogueDataModule:
    settings = {"vocab_size": 320, "max_len": 32, "batch_size": 4, "cache_dir": str(tmp_path / "cache"),
                "split_fractions": (0.6, 0.2, 0.2, 0.0), **settings}
    return DialogueDataModule(episodes=episodes, **settings)


def test_episodes_are_split_whole_and_batches_learn_only_replies(tmp_path, topic_file):
    dm = module(tmp_path, [str(topic_file)])
    assert isinstance(dm, DataModule) and not hasattr(dm, "sources")  # a data module that reads no corpus
    dm.setup("fit")
    ids = {split: set(dm.document_ids(split)) for split in ("train", "val", "test")}
    assert ids["train"] and ids["val"] and ids["test"] and not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"])
    tok = dm.tokenizer
    end = tok["<|turn_end|>"]
    assert dm.sos_id == tok.sos_id and dm.pad_id == tok.pad_id
    batch = next(iter(dm.train_dataloader()))
    learned = batch["labels"][batch["labels"] != IGNORE_INDEX]
    assert (learned == end).any()
    text = tok.decode([i for i in learned.tolist() if i != end])
    assert "like" in text and "do you like" not in text and "User" not in text and "Context" not in text
    assert batch["input_ids"].shape[1] <= 32


def test_the_checkpointed_tokenizer_comes_back(tmp_path, topic_file):
    dm = module(tmp_path, [str(topic_file)])
    state = dm.state_dict()
    again = module(tmp_path, [str(topic_file)])
    again.load_state_dict(state)
    assert again.tokenizer.to_bytes() == dm.tokenizer.to_bytes()


def test_the_turn_end_token_is_recorded_for_generation(tmp_path, topic_file):
    from xlab.common.checkpoint import generation_facts

    dm = module(tmp_path, [str(topic_file)], turn_end="<|eot|>")
    state = dm.state_dict()
    assert state["generation_facts"] == {"turn_end": "<|eot|>"} and dm.tokenizer.encode("<|eot|>") == [
        dm.tokenizer["<|eot|>"]]
    assert generation_facts({"state_dict": {}, "DialogueDataModule": state}) == {"turn_end": "<|eot|>"}
    assert generation_facts({"state_dict": {}, "XLabDataModule": {"tokenizer_model": b""}}) == {}  # before it was


def test_unmasked_training_learns_every_token_but_evaluation_stays_masked(tmp_path, topic_file):
    dm = module(tmp_path, [str(topic_file)], mask_turns=False)
    dm.setup("fit")
    def learned(loader):  # share of the real (unpadded) positions that are learned, over the whole split
        batches = list(loader)
        labelled = sum((b["labels"] != IGNORE_INDEX).sum().item() for b in batches)
        return labelled / sum((b["input_ids"] != dm.pad_id).sum().item() for b in batches)

    # Whole splits, not a first batch: which windows come first depends on the shuffle.
    assert learned(dm.train_dataloader()) > 0.9 and learned(dm.val_dataloader()) < 0.8


def test_eval_examples_rank_against_replies_of_other_episodes(tmp_path, topic_file):
    # A context of 128: room for the prefix and a turn of history beside the longest candidate.
    dm = module(tmp_path, [str(topic_file)], eval_examples=10, candidates=5, max_len=128, reply_tokens=32)
    dm.setup("validate")
    examples = dm.eval_examples("val")
    assert len(examples) == 10 and all(len(e["negatives"]) == 4 for e in examples)
    assert examples == dm.eval_examples("val")  # the same examples at every validation
    ex = examples[0]
    assert dm.tokenizer.decode(ex["prompt"]).endswith("Bot:") and ex["body"][-1] == dm.tokenizer["<|turn_end|>"]
    # The PMI ranking's prompt without history: the same context and speaker, no turns.
    prior = dm.tokenizer.decode(ex["prior"])
    assert prior.startswith("Context: A talk about") and prior.endswith("Bot:") and "User:" not in prior
    assert "User:" in dm.tokenizer.decode(ex["prompt"])  # never an episode's first turn: it answers nothing
    for e in examples:  # every candidate fits after the shared prompt; the generated reply has its room
        assert all(len(e["prompt"]) + min(len(b), 64) <= 128 for b in [e["body"], *e["negatives"]])
        assert len(e["reply_prompt"]) <= 128 - 32 and dm.tokenizer.decode(e["reply_prompt"]).endswith("Bot:")


def test_a_speaker_named_like_a_special_token_is_refused(tmp_path):
    eps = topic_episodes(30)
    eps[3].turns[0].speaker = "<|turn_end|>"
    path = write_episodes(tmp_path / "bad.jsonl", eps)
    with pytest.raises(XLabError, match="speaker name '<|turn_end|>' contains the special token"):
        module(tmp_path, [str(path)]).setup("fit")


def test_malformed_lines_fail_or_are_skipped_and_reported(tmp_path, capsys):
    path = write_episodes(tmp_path / "eps.jsonl", topic_episodes(40))
    with path.open("a") as f:
        f.write('{"id": "broken", "turns": "nope"}\n')
        f.write(json.dumps({"id": "silent", "turns": [{"speaker": "User", "text": "hi", "train": False}]}) + "\n")
    with pytest.raises(XLabError, match=r"eps.jsonl:41: 'turns' is not a list"):
        module(tmp_path, [str(path)]).setup("fit")
    dm = module(tmp_path, [str(path)], on_error="skip")
    dm.setup("fit")
    assert "skipped 2 malformed line(s)" in capsys.readouterr().out
    assert sum(len(dm.document_ids(s)) for s in ("train", "val", "test", "predict")) == 40


def test_settings_out_of_range_and_unknown_modules_are_one_line_errors(tmp_path, topic_file):
    with pytest.raises(XLabError, match="candidates=1"):
        module(tmp_path, [str(topic_file)], candidates=1)
    with pytest.raises(XLabError, match="no class 'Nope': use chitchat:ChitChat"):
        module(tmp_path, ["chitchat:Nope"])
