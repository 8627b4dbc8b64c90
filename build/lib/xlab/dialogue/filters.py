"""Filters: drop bad training examples, not whole conversations.

An example is one trained turn with the turns before it, so a filter that refuses an example
clears that turn's `train` flag: the turn stays in the episode as history for the next ones, it
is just not a reply the model learns to produce. An episode left with no trained turn is dropped.
Filters see the whole collection, so duplicates are found across modules; where a filter has
to choose (which of many repeats to keep) it draws from a seeded generator.

    duplicates        the same reply to the same previous turn seen before
    length            replies outside [min_chars, max_chars]
    unicode           broken text: floods of combining marks, replacement characters, control characters
    near_duplicates   replies that normalise (ParlAI rules) to a text seen more than max_repeats times:
                      a random max_repeats of them are kept
"""

from __future__ import annotations

import random
import unicodedata
from collections import defaultdict
from typing import Any

import yaml

from xlab.common.errors import XLabError
from xlab.dialogue.episode import Episode
from xlab.dialogue.text import normalize_answer

Example = tuple[int, int]  # (episode index, turn index)


def _examples(episodes: list[Episode]) -> list[Example]:
    return [(e, t) for e, ep in enumerate(episodes) for t, turn in enumerate(ep.turns) if turn.train]


class Filter:
    name = ""

    def rejects(self, episodes: list[Episode]) -> set[Example]:
        raise NotImplementedError


class Duplicates(Filter):
    name = "duplicates"

    def rejects(self, episodes):
        seen, out = set(), set()
        for e, t in _examples(episodes):
            before = episodes[e].turns[t - 1].text if t else ""
            key = (before, episodes[e].turns[t].text)
            (out.add((e, t)) if key in seen else seen.add(key))
        return out


class Length(Filter):
    name = "length"

    def __init__(self, min_chars: int = 1, max_chars: int = 1000):
        if min_chars < 0 or max_chars < min_chars:
            raise XLabError(f"filter length: need 0 <= min_chars <= max_chars, got {min_chars} and {max_chars}.")
        self.min_chars, self.max_chars = min_chars, max_chars

    def rejects(self, episodes):
        return {(e, t) for e, t in _examples(episodes)
                if not self.min_chars <= len(episodes[e].turns[t].text.strip()) <= self.max_chars}


class BrokenUnicode(Filter):
    name = "unicode"

    def __init__(self, max_combining: int = 3):
        self.max_combining = max_combining

    def broken(self, text: str) -> bool:
        if text.isascii():  # the common case: only control characters can be wrong
            return any(c < " " and c not in "\n\t" or c == "\x7f" for c in text)
        run = 0
        for char in text:
            if char == "\ufffd" or (unicodedata.category(char) == "Cc" and char not in "\n\t"):
                return True
            run = run + 1 if unicodedata.combining(char) else 0
            if run > self.max_combining:
                return True
        return False

    def rejects(self, episodes):
        return {(e, t) for e, t in _examples(episodes) if self.broken(episodes[e].turns[t].text)}


class NearDuplicates(Filter):
    name = "near_duplicates"

    def __init__(self, max_repeats: int = 20, seed: int = 0):
        self.max_repeats, self.seed = max_repeats, seed

    def rejects(self, episodes):
        groups: dict[str, list[Example]] = defaultdict(list)
        for e, t in _examples(episodes):
            groups[normalize_answer(episodes[e].turns[t].text)].append((e, t))
        rng, out = random.Random(self.seed), set()
        for key in sorted(groups):
            members = groups[key]
            if len(members) > self.max_repeats:
                keep = set(rng.sample(range(len(members)), self.max_repeats))
                out.update(m for i, m in enumerate(members) if i not in keep)
        return out


FILTERS = {f.name: f for f in (Duplicates, Length, BrokenUnicode, NearDuplicates)}


def build_filter(spec: str | dict[str, Any]) -> Filter:
    """A filter from `name`, `name?option=value&...` or {filter: name, option: value}."""
    if isinstance(spec, dict):
        options = dict(spec)
        name = options.pop("filter", None)
    else:
        name, _, query = str(spec).partition("?")
        options = {k: yaml.safe_load(v) for k, _, v in (p.partition("=") for p in query.split("&") if p)}
    if name not in FILTERS:
        raise XLabError(f"there is no filter {name!r}: use one of {', '.join(FILTERS)}.")
    try:
        return FILTERS[name](**options)
    except TypeError as error:
        raise XLabError(f"filter {name}: {error}.") from None


def apply_filters(episodes: list[Episode], filters: list[Filter]) -> tuple[list[Episode], dict[str, int]]:
    """Clear `train` on every rejected example, drop episodes left with nothing to train on; counts
    of examples each filter rejected (and of episodes dropped)."""
    counts = {}
    for f in filters:
        rejected = f.rejects(episodes)
        counts[f.name] = len(rejected)
        for e, t in rejected:
            episodes[e].turns[t].train = False
    kept = [ep for ep in episodes if ep.problem() is None]
    counts["episodes_dropped"] = len(episodes) - len(kept)
    return kept, counts
