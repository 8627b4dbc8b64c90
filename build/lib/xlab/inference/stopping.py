"""Stop strings: text-level ends of a sequence, which need the tokenizer's `decode`."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class StopStrings:
    """Tells whether the newest tokens of a sequence completed one of the stop strings.

    Only a tail of the tokens is decoded: every token stands for at least one byte, and a stop
    string of c characters has at most 4c UTF-8 bytes, so 4c tokens (plus a few for a multi-byte
    character cut at the tail's start) always cover a stop string that ends at the newest token.
    """

    def __init__(self, stops: Sequence[str], decode: Callable[[list[int]], str]):
        self.stops, self.decode = list(stops), decode
        self.tail = 4 * max(len(s) for s in self.stops) + 4

    def __call__(self, tokens: list[int]) -> bool:
        text = self.decode(tokens[-self.tail:])
        return any(stop in text for stop in self.stops)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to (not including) the first stop string in it."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]
