"""xlab/dialogue/render.py: rendering with speaker names and the turn-end token, the loss mask,
windows at turn boundaries, prompts, and speaker names that are refused."""

from __future__ import annotations

import pytest

from xlab.common.errors import XLabError
from xlab.common.tokenizer import Tokenizer
from xlab.dialogue.episode import Episode, Turn
from xlab.dialogue.render import Renderer

END = "<|turn_end|>"


@pytest.fixture(scope="module")
def tokenizer():
    lines = [f"User: hello number {i}{END}Bot: fine thanks {i}{END}" for i in range(200)]
    return Tokenizer.train(lines, vocab_size=320, extra_special_tokens=[END])


def episode(n_turns=6, trained=lambda t: t % 2 == 1, context="A cafe."):
    turns = [Turn("User" if t % 2 == 0 else "Bot", f"words of turn {t}", trained(t)) for t in range(n_turns)]
    return Episode("e1", "test", turns, context, {"Bot": "I like tea."})


def test_the_loss_falls_on_trained_turns_bodies_and_their_turn_end(tokenizer):
    renderer = Renderer(tokenizer, END)
    r = renderer.render(episode())
    (ids, target), = Renderer.windows(r, 10_000)
    text = tokenizer.decode(ids)
    assert text.startswith("Context: A cafe.\nBot's persona: I like tea.\nUser: words of turn 0")
    end_id = tokenizer[END]
    assert ids.count(end_id) == 6 and ids[-1] == end_id
    learned = tokenizer.decode([i for i, t in zip(ids, target) if t and i != end_id])
    assert learned == " words of turn 1 words of turn 3 words of turn 5"
    assert sum(t for i, t in zip(ids, target) if i == end_id) == 3  # the trained turns' turn-end tokens


def test_windows_cut_at_turn_boundaries_and_learn_each_trained_turn_once(tokenizer):
    renderer = Renderer(tokenizer, END)
    r = renderer.render(episode(n_turns=12))
    size = len(r.prefix) + r.turn_length(0) + r.turn_length(1) + r.turn_length(2) + 2
    windows = Renderer.windows(r, size)
    assert len(windows) > 1 and all(len(ids) <= size for ids, _ in windows)
    end_id = tokenizer[END]
    learned = [tokenizer.decode([i for i, t in zip(ids, target) if t and i != end_id]) for ids, target in windows]
    assert "".join(learned) == "".join(f" words of turn {t}" for t in range(1, 12, 2))
    for ids, target in windows:
        assert ids[-1] == end_id and target[-1]  # each window ends on a trained turn's turn-end


def test_without_masking_every_new_token_is_learned(tokenizer):
    r = Renderer(tokenizer, END).render(episode())
    (ids, target), = Renderer.windows(r, 10_000, mask_turns=False)
    assert all(target[1:])


def test_a_speaker_name_with_a_special_token_is_refused(tokenizer):
    bad = Episode("e2", "test", [Turn(f"Bob{END}", "hi")])
    with pytest.raises(XLabError, match="speaker name .* contains the special token"):
        Renderer(tokenizer, END).render(bad)


def test_a_prompt_keeps_the_prefix_and_the_latest_whole_turns_that_fit(tokenizer):
    renderer = Renderer(tokenizer, END)
    r = renderer.render(episode(n_turns=8))
    header = renderer.header("Bot")
    budget = len(r.prefix) + r.turn_length(6) + r.turn_length(7) + len(header) + 1
    ids = Renderer.prompt(r.prefix, r.headers, r.bodies, header, budget)
    assert ids[: len(r.prefix)] == r.prefix and ids[-len(header):] == header and len(ids) <= budget
    assert tokenizer.decode(ids[len(r.prefix):]) == f"User: words of turn 6{END}Bot: words of turn 7{END}Bot:"
