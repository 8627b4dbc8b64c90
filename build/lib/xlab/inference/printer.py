"""Printing a sequence's text as its tokens arrive: infer.py's --stream, and chat replies.

Each token's text is the decode of (the last token already shown + the tokens since) minus the
decode of that anchor: the anchor keeps what a tokenizer does at the start of a text (such as
dropping the leading space of sentencepiece's first piece) out of the new text. Text is final
only once it does not end in U+FFFD (a character whose bytes have not all arrived), and the last
len(stop) - 1 characters may still become a stop string, which is not printed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from xlab.inference.stopping import cut_at_stop


class StreamPrinter:
    """A `stream(sequence, token)` callback for `xlab.inference.generate` that prints sequence 0.

    lead: printed first (infer.py: the prompt).
    strip_leading: leave out the whitespace the new text starts with (a chat reply after `Bot:`).
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: list[str], lead: str = "",
                 out: TextIO | None = None, strip_leading: bool = False):
        self.decode, self.stops, self.out = decode, stops, out or sys.stdout
        self.strip_leading = strip_leading
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.anchor: list[int] = []  # the last token whose text is in `self.text`
        self.pending: list[int] = []  # tokens since, whose text is not complete yet
        self.text = ""  # the new text so far (never the lead)
        self.printed = 0
        self.stopped = False
        if lead:
            print(lead, end="", file=self.out, flush=True)

    def __call__(self, sequence: int, token: int) -> None:
        if sequence != 0 or self.stopped:
            return
        self.pending.append(token)
        piece = self.decode(self.anchor + self.pending)[len(self.decode(self.anchor)):]
        if piece.endswith("\ufffd"):
            return
        self.anchor, self.pending = self.pending[-1:], []
        self.text += piece
        self._show(final=False)

    def finish(self) -> None:
        if not self.stopped:
            if self.pending:  # an incomplete character at the very end: print what decode makes of it
                self.text += self.decode(self.anchor + self.pending)[len(self.decode(self.anchor)):]
            self._show(final=True)
        print(file=self.out, flush=True)

    def _show(self, final: bool) -> None:
        if self.strip_leading and not self.text[:self.printed].strip():  # nothing but whitespace shown so far
            self.printed = max(self.printed, len(self.text) - len(self.text.lstrip()))
        # A stop string cannot start before `printed`: that text was held back long enough.
        start = max(0, self.printed - self.hold)
        window = self.text[start:]
        cut = cut_at_stop(window, self.stops)
        self.stopped = len(cut) < len(window)
        end = start + len(cut) if self.stopped or final else len(self.text) - self.hold
        if end > self.printed:
            print(self.text[self.printed:end], end="", file=self.out, flush=True)
            self.printed = end
