"""A multi-turn chat with a model trained on dialogue episodes (`./infer.py CKPT --chat`).

The conversation is rendered exactly as the dialogue data module renders episodes for training
(`xlab/dialogue/render.py`): the prefix (context and the bot's persona), the recent turns as
`Name: text<turn-end>`, then the bot's header `Bot:`. Each reply ends at the turn-end token, the
end token, a stop string (by default the user's header, should the model start the user's turn)
or the token limit. The history keeps every turn; what reaches the model is windowed as in
training: the prefix and the most recent whole turns that leave room for the reply.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from typing import TextIO

import torch

from xlab.common.errors import XLabError
from xlab.dialogue.render import DEFAULT_TURN_END, Renderer
from xlab.inference import cut_at_stop, generate
from xlab.inference.printer import StreamPrinter


class Chat:
    """The state of one conversation: its prefix and turns, as token ids and as text."""

    def __init__(self, tokenizer, turn_end: str, user: str, bot: str, persona: str = "", context: str = ""):
        self.renderer = Renderer(tokenizer, turn_end)
        for name in (user, bot):
            self.renderer.check_speaker(name, "--user-name / --bot-name")
        self.user, self.bot = user, bot
        self.prefix = self.renderer.prefix(context, {bot: persona} if persona else {})
        self.headers: list[list[int]] = []
        self.bodies: list[list[int]] = []

    def add(self, speaker: str, text: str) -> None:
        self.headers.append(self.renderer.header(speaker))
        self.bodies.append(self.renderer.body(text))

    def prompt(self, budget: int) -> list[int]:
        return Renderer.prompt(self.prefix, self.headers, self.bodies, self.renderer.header(self.bot), budget)


def chat_command(loaded, settings, args) -> int:
    """infer.py --chat: the turn-end token is the one the checkpoint was trained with unless
    --turn-end names another (checkpoints from before it was recorded: the default one)."""
    turn_end = args.turn_end or loaded.facts.get("turn_end") or DEFAULT_TURN_END
    return chat(loaded, settings, args.user_name, args.bot_name, args.persona, args.context, turn_end, args.stream,
                args.seed)


def chat(loaded, settings, user: str = "User", bot: str = "Bot", persona: str = "", context: str = "",
         turn_end: str = DEFAULT_TURN_END, stream: bool = False, seed: int | None = None,
         stdin: TextIO | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Read the user's turns line by line until end of input (Ctrl-D); print each reply as `Bot: text`."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    tokenizer, model = loaded.tokenizer, loaded.model
    conversation = Chat(tokenizer, turn_end, user, bot, persona, context)
    max_len = int(model.hparams["max_len"])
    block = settings.block_size or max_len
    stops = [*settings.stop_strings, f"{user}:"]
    settings = replace(settings, eos_class=[conversation.renderer.turn_end_id, tokenizer.eos_id],
                       stop_strings=stops, num_samples=1, block_size=block)
    budget = block - min(settings.output_length, block // 2)
    generator = torch.Generator(device=model.device).manual_seed(seed) if seed is not None else None
    while True:
        print(f"{user}: ", end="", file=stderr, flush=True)
        line = stdin.readline()
        if not line:
            print(file=stderr)
            return 0
        if not line.strip():
            continue
        conversation.add(user, line.strip())
        prompt = torch.tensor(conversation.prompt(budget), device=model.device)
        printer = StreamPrinter(tokenizer.decode, stops, f"{bot}: ", stdout, strip_leading=True) if stream else None
        began = time.perf_counter()
        try:
            tokens = generate(model, [prompt], settings, decode=tokenizer.decode, stream=printer, generator=generator)[0][0]
        except XLabError as error:
            print(f"error: {error}", file=stderr)
            continue
        reply = cut_at_stop(tokenizer.decode(tokens), stops).strip()
        if printer is not None:
            printer.finish()
        else:
            print(f"{bot}: {reply}", file=stdout, flush=True)
        seconds = time.perf_counter() - began
        print(f"[{len(tokens)} tokens in {seconds:.2f} s]", file=stderr)
        conversation.add(bot, reply)
