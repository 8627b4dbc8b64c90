"""Helpers shared by the dialogue tests: synthetic conversations whose replies follow from the
history (each keeps to one topic), so a tiny model learns to rank and produce replies; the turns a
chat test pipes into infer.py and the replies it prints."""

from __future__ import annotations

import random
from pathlib import Path

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


def replies_of(stdout: str) -> list[str]:
    replies = [line for line in stdout.splitlines() if line.strip()]
    assert all(r.startswith("Bot: ") and len(r) > len("Bot: ") for r in replies), stdout
    assert not any("User:" in r or "<|turn_end|>" in r for r in replies)
    return replies


TURNS = "do you like apple or pear ?\nwhat about plum ?\n"
