"""Token-by-token decoding: greedy or sampling, for many rows at once, with a KV cache.

Each step is one forward pass of one token per row, score processing and a choice, all on the
device. The host looks at tokens only to stream them or test stop strings; otherwise it asks
whether every row has ended (every step on CPU, where asking is free; every few steps elsewhere,
where asking stalls the device queue).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from xlab.inference.context import SlidingContext
from xlab.inference.processors import ScoreProcessor, sample_token
from xlab.inference.settings import GenerationSettings
from xlab.inference.stopping import StopStrings

StreamCallback = Callable[[int, int], None]
_ACCELERATOR_CHECK_EVERY = 8


def sample_rows(model, rows: list[Tensor], settings: GenerationSettings, vocab_size: int, block_size: int,
                pad_id: int, decode: Callable | None = None, stream: StreamCallback | None = None,
                generator: torch.Generator | None = None) -> list[Tensor]:
    """The new tokens of each row (eos excluded, a completed stop string included)."""
    s = settings
    steps = s.output_length
    context = SlidingContext(model, rows, block_size, s.keep(block_size), steps, pad_id)
    process = ScoreProcessor(s, context, vocab_size)
    watcher = _HostWatcher(len(rows), s, decode, stream) if (stream or s.stop_strings) else None
    device = context.tokens.device
    check_every = 1 if device.type == "cpu" or watcher else _ACCELERATOR_CHECK_EVERY

    out = torch.full((len(rows), steps), pad_id, dtype=torch.long, device=device)
    lengths = torch.full((len(rows),), steps, dtype=torch.long, device=device)
    done = torch.zeros(len(rows), dtype=torch.bool, device=device)
    logits = context.prefill()
    for step in range(steps):
        scores = process(logits.float(), step)
        if s.greedy:
            token = scores.argmax(-1)
        else:
            token = sample_token(scores, s.temperature, s.top_k, s.top_p, generator)
        token = token.masked_fill_(done, pad_id)
        out[:, step] = token
        if len(process.eos):
            ended = torch.isin(token, process.eos) & ~done
            lengths.masked_fill_(ended, step)
            done |= ended
        if watcher is not None:
            for row in watcher.see(token.tolist(), step):
                lengths[row], done[row] = step + 1, True
        if step + 1 == steps or ((step + 1) % check_every == 0 and bool(done.all())):
            break
        logits = context.append(token)
        process.observe(token)
    return [out[i, :n] for i, n in enumerate(lengths.tolist())]


class _HostWatcher:
    """Host-side view of the tokens as they come: streams them and finds stop strings."""

    def __init__(self, rows: int, settings: GenerationSettings, decode: Callable | None, stream: StreamCallback | None):
        self.eos = set(settings.eos_ids)
        self.min_length = settings.min_length
        self.stops = StopStrings(settings.stop_strings, decode) if settings.stop_strings else None
        self.stream = stream
        self.live = [True] * rows
        self.history: list[list[int]] = [[] for _ in range(rows)]

    def see(self, tokens: list[int], step: int) -> list[int]:
        """Take this step's token of every row; return the rows a stop string just ended."""
        stopped = []
        for row, token in enumerate(tokens):
            if not self.live[row]:
                continue
            if token in self.eos:
                self.live[row] = False
                continue
            self.history[row].append(token)
            if self.stream is not None:
                self.stream(row, token)
            if self.stops is not None and step + 1 >= self.min_length and self.stops(self.history[row]):
                self.live[row] = False
                stopped.append(row)
        return stopped
