"""xlab/dialogue/chat.py: the prompt holds the prefix and the most recent whole turns that fit; a reply
ends at the turn-end token (the one the checkpoint recorded, unless --turn-end names another) and
is exactly what greedy decoding by full recomputation gives; streaming prints the same reply; a
text model whose tokenizer lacks the turn-end token is refused in one line."""

from __future__ import annotations

import argparse
import io
import sys

import pytest
import torch

from tests.helpers import WORDS, load_script, sharp_model
from xlab.common.errors import XLabError
from xlab.common.tokenizer import Tokenizer
from xlab.dialogue.chat import Chat, chat, chat_command
from xlab.dialogue.render import DEFAULT_TURN_END
from xlab.inference import GenerationSettings
from xlab.interop.export import Loaded

OTHER_END = "<|eot|>"
MAX_LEN = 64


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    lines = [f"User: {' '.join(WORDS[(7 * i + j) % 90] for j in range(6))} ?" for i in range(300)]
    return Tokenizer.train(lines, vocab_size=320, extra_special_tokens=[DEFAULT_TURN_END, OTHER_END])


def test_the_prompt_keeps_the_prefix_and_the_most_recent_whole_turns(tokenizer):
    conversation = Chat(tokenizer, DEFAULT_TURN_END, "User", "Bot", persona="kalo mine", context="a talk")
    said = ["kalo mine ruta", "shi vo", "pe da gri zu an", "el or", "ka lo mi ne ru ta"]
    for i, text in enumerate(said):
        conversation.add("User" if i % 2 == 0 else "Bot", text)
    end = tokenizer[DEFAULT_TURN_END]
    # Written out: <s>, the prefix text, then `Name:` and ` text<turn-end>` per turn, then `Bot:`.
    prefix = [tokenizer.sos_id] + tokenizer.encode("Context: a talk\nBot's persona: kalo mine\n")
    turns = [tokenizer.encode(f"{'User' if i % 2 == 0 else 'Bot'}:") + tokenizer.encode(" " + text) + [end]
             for i, text in enumerate(said)]
    header = tokenizer.encode("Bot:")
    assert conversation.prefix == prefix and conversation.headers[1] + conversation.bodies[1] == turns[1]
    lengths = [len(t) for t in turns]
    for budget in range(len(prefix) + len(header), len(prefix) + sum(lengths) + len(header) + 3):
        room = budget - len(prefix) - len(header)
        kept = max(k for k in range(len(turns) + 1) if sum(lengths[len(turns) - k:]) <= room)
        expected = prefix + [t for turn in turns[len(turns) - kept:] for t in turn] + header
        assert conversation.prompt(budget) == expected, budget
    # No room for the prefix: only <s> stays, with the turns that fit after it.
    for budget in range(1 + len(header), len(prefix) + len(header)):
        room = budget - 1 - len(header)
        kept = max(k for k in range(len(turns) + 1) if sum(lengths[len(turns) - k:]) <= room)
        expected = prefix[:1] + [t for turn in turns[len(turns) - kept:] for t in turn] + header
        assert conversation.prompt(budget) == expected, budget
    assert conversation.prompt(1 + len(header)) == [prefix[0]] + header
    with pytest.raises(XLabError, match=r"the context of 2 tokens cannot hold a speaker name and a reply"):
        conversation.prompt(2)


def test_speaker_names_with_a_colon_or_the_turn_end_are_refused(tokenizer):
    with pytest.raises(XLabError, match=r"--user-name / --bot-name: speaker name 'Bo:t' is empty or contains ':'"):
        Chat(tokenizer, DEFAULT_TURN_END, "User", "Bo:t")
    with pytest.raises(XLabError, match=r"speaker name 'Me<\|turn_end\|>' contains the special token '<\|turn_end\|>'"):
        Chat(tokenizer, DEFAULT_TURN_END, f"Me{DEFAULT_TURN_END}", "Bot")


def greedy_by_recomputation(model, prompt: list[int], steps: int, ends: set[int]) -> list[int]:
    """Argmax of the whole sequence every step until an end token (not included)."""
    ids, new = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(torch.tensor([ids]))[0, -1].argmax())
            if token in ends:
                break
            ids.append(token)
            new.append(token)
    return new


@pytest.fixture(scope="module")
def ending_model(tokenizer):
    """A model whose greedy first reply to "kalo mine" ends with <|eot|> after a few tokens: the head
    rows of <|eot|> and of the greedy reply's first new token there are swapped."""
    model = sharp_model(vocab_size=len(tokenizer), max_len=MAX_LEN, tie_weights=False)
    end = tokenizer[OTHER_END]
    prompt = first_prompt(tokenizer, OTHER_END)
    free = greedy_by_recomputation(model, prompt, 12, {end, tokenizer.eos_id})
    k = next(k for k in range(2, len(free)) if free[k] not in free[:k])
    with torch.no_grad():
        head = model.lm_head.weight
        head[[free[k], end]] = head[[end, free[k]]]
    assert greedy_by_recomputation(model, prompt, 12, {end, tokenizer.eos_id}) == free[:k]
    return model, free[:k]


def first_prompt(tokenizer, turn_end: str) -> list[int]:
    return ([tokenizer.sos_id] + tokenizer.encode("User:") + tokenizer.encode(" kalo mine") + [tokenizer[turn_end]]
            + tokenizer.encode("Bot:"))


def talk(loaded, lines: str, **options) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    settings = GenerationSettings(output_length=12, temperature=0.0)
    code = chat(loaded, settings, stdin=io.StringIO(lines), stdout=out, stderr=err, **options)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("stream", [False, True])
def test_the_turn_end_token_ends_the_reply_and_streaming_prints_the_same(tokenizer, ending_model, stream):
    model, reply = ending_model
    loaded = Loaded(model, tokenizer, GenerationSettings())
    code, out, err = talk(loaded, "kalo mine\n\n", turn_end=OTHER_END, stream=stream)
    assert code == 0
    assert out == f"Bot: {tokenizer.decode(reply).strip()}\n"
    assert f"[{len(reply)} tokens in " in err  # the turn-end token is not part of the reply


def test_later_turns_read_the_whole_conversation(tokenizer, ending_model):
    model, reply = ending_model
    loaded = Loaded(model, tokenizer, GenerationSettings())
    _, out, _ = talk(loaded, "kalo mine\nshi vo\n", turn_end=OTHER_END)
    first, second = out.splitlines()
    end = tokenizer[OTHER_END]
    history = first_prompt(tokenizer, OTHER_END)[: -len(tokenizer.encode("Bot:"))]
    bot_turn = tokenizer.encode("Bot:") + tokenizer.encode(" " + first.removeprefix("Bot: ")) + [end]
    prompt = history + bot_turn + tokenizer.encode("User:") + tokenizer.encode(" shi vo") + [end] + tokenizer.encode("Bot:")
    expected = greedy_by_recomputation(model, prompt, 12, {end, tokenizer.eos_id})
    assert second == f"Bot: {tokenizer.decode(expected).strip()}"


def chat_args(**given) -> argparse.Namespace:
    settings = dict(turn_end=None, user_name="User", bot_name="Bot", persona="", context="", stream=False, seed=None)
    return argparse.Namespace(**{**settings, **given})


@pytest.mark.parametrize("facts,option", [({"turn_end": OTHER_END}, None), ({"turn_end": "<|unknown|>"}, OTHER_END),
                                          ({}, OTHER_END)])
def test_chat_command_takes_the_recorded_turn_end_unless_told_another(tokenizer, ending_model, monkeypatch, capsys,
                                                                      facts, option):
    model, reply = ending_model
    loaded = Loaded(model, tokenizer, GenerationSettings(), facts=facts)
    monkeypatch.setattr(sys, "stdin", io.StringIO("kalo mine\n"))
    settings = GenerationSettings(output_length=12, temperature=0.0)
    assert chat_command(loaded, settings, chat_args(turn_end=option)) == 0
    assert capsys.readouterr().out == f"Bot: {tokenizer.decode(reply).strip()}\n"


def test_without_a_recorded_turn_end_the_default_one_is_used(tokenizer, ending_model, monkeypatch, capsys):
    model, _ = ending_model
    monkeypatch.setattr(sys, "stdin", io.StringIO("kalo mine\n"))
    settings = GenerationSettings(output_length=12, temperature=0.0)
    assert chat_command(Loaded(model, tokenizer, GenerationSettings()), settings, chat_args()) == 0
    default = tokenizer[DEFAULT_TURN_END]
    expected = greedy_by_recomputation(model, first_prompt(tokenizer, DEFAULT_TURN_END), 12, {default, tokenizer.eos_id})
    assert capsys.readouterr().out == f"Bot: {tokenizer.decode(expected).strip()}\n"
    with pytest.raises(XLabError, match=r"turn-end marker '<\|unknown\|>' is not a token of this tokenizer"):
        chat_command(Loaded(model, tokenizer, GenerationSettings(), facts={"turn_end": "<|unknown|>"}), settings,
                     chat_args())


def test_a_text_model_without_the_turn_end_token_is_refused_in_one_line(tiny_export, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    with pytest.raises(SystemExit) as exit_:
        load_script("infer").main([str(tiny_export), "--chat", "--greedy"])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and len(error.strip().splitlines()) == 1
    assert error.startswith("error: the turn-end marker '<|turn_end|>' is not a token of this tokenizer")
