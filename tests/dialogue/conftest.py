"""Dialogue fixtures: a built episode file of synthetic conversations whose replies follow from the
history (each conversation keeps to one topic), so a tiny model learns to rank and produce replies."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from xlab.dialogue.episode import Episode, Turn

TOPICS = {
    "fruit": ["apple", "pear", "plum", "grape", "lemon", "melon"],
    "animal": ["cat", "dog", "horse", "mouse", "tiger", "sheep"],
    "colour": ["red", "blue", "green", "yellow", "purple", "orange"],
    "city": ["paris", "rome", "oslo", "lima", "cairo", "delhi"],
    "sport": ["tennis", "golf", "rugby", "hockey", "boxing", "rowing"],
    "tool": ["hammer", "saw", "drill", "wrench", "chisel", "pliers"],
    "music": ["piano", "violin", "drums", "flute", "guitar", "cello"],
    "weather": ["rain", "snow", "wind", "fog", "hail", "sun"],
}


def topic_episodes(count: int, seed: int = 0) -> list[Episode]:
    rng = random.Random(seed)
    episodes = []
    for i in range(count):
        topic = rng.choice(sorted(TOPICS))
        a, b, c, d, e, f = rng.sample(TOPICS[topic], 6)
        turns = [Turn("User", f"do you like {a} or {b} ?", False), Turn("Bot", f"i like {c} and {d} .", True),
                 Turn("User", f"what about {e} ?", False), Turn("Bot", f"{f} is fine too .", True)]
        episodes.append(Episode(f"topic-{i}", "test", turns, context=f"A talk about {topic}."))
    return episodes


def write_episodes(path: Path, episodes: list[Episode]) -> Path:
    path.write_text("".join(e.to_json() + "\n" for e in episodes), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def topic_file(tmp_path_factory) -> Path:
    return write_episodes(tmp_path_factory.mktemp("dialogue") / "topics.jsonl", topic_episodes(400))
