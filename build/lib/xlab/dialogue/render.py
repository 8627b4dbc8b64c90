"""Episodes as the model reads them: text with speaker names and a turn-end special token.

    <s>Context: {context}\n{Name}'s persona: {persona}\n{Speaker}: {text}<turn-end>{Speaker}: ...

Each piece is encoded on its own: the speaker header `Name:` and the body ` text<turn-end>`,
so the token boundaries in training are the ones a chat prompt ending in `Bot:` has at inference.
Loss falls on the bodies of trained turns (turn-end included: the model learns when to stop),
never on the context, personas, headers or the other speakers' turns.

Windows: an episode longer than the context is cut at turn boundaries. Each window holds the
prefix (context and personas; just <s> when it would leave no room), as much earlier history as
fits, and new turns ending on a trained turn; every trained turn is a target in exactly one window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xlab.common.errors import XLabError
from xlab.dialogue.episode import Episode, Turn

DEFAULT_TURN_END = "<|turn_end|>"  # the special token that closes every turn, unless a recipe names another


def turn_text(turn: Turn) -> str:
    """The words of a turn with its emote and action as stage directions: `*smile* *hug bob* Hi`."""
    parts = [f"*{turn.emote}*" if turn.emote else "", f"*{turn.action}*" if turn.action else "", turn.text]
    return " ".join(p for p in parts if p)


def prefix_text(context: str, personas: dict[str, str]) -> str:
    text = f"Context: {context}\n" if context else ""
    return text + "".join(f"{name}'s persona: {persona}\n" for name, persona in personas.items() if persona)


def episode_text(episode: Episode, turn_end: str = "") -> str:
    """The episode as readable text (`build-dataset -p`), or as the tokenizer trains on it."""
    sep = turn_end or "\n"
    turns = sep.join(f"{t.speaker}: {turn_text(t)}" for t in episode.turns)
    return prefix_text(episode.context, episode.personas) + turns + (turn_end if turn_end else "")


@dataclass
class Rendered:
    """Token ids of one episode: the prefix, then (header, body) per turn; body ends in turn-end."""

    id: str
    prefix: list[int]
    headers: list[list[int]] = field(default_factory=list)
    bodies: list[list[int]] = field(default_factory=list)
    trained: list[bool] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def turn_length(self, t: int) -> int:
        return len(self.headers[t]) + len(self.bodies[t])


def special_pieces(tokenizer) -> list[str]:
    """The tokenizer's start, end and padding pieces, where it names them."""
    return [p for p in (getattr(tokenizer, n, None) for n in ("sos_token", "eos_token", "pad_token")) if p]


class Renderer:
    """Encodes episodes with a tokenizer (any with encode, tok[piece], sos_id) and a turn-end piece;
    `reserved` are the pieces no speaker name may contain (the turn-end marker always is)."""

    def __init__(self, tokenizer, turn_end: str, reserved: list[str] | None = None):
        self.tokenizer, self.turn_end = tokenizer, turn_end
        try:
            self.turn_end_id = tokenizer[turn_end]
        except KeyError:
            raise XLabError(f"the turn-end marker {turn_end!r} is not a token of this tokenizer: train it with the "
                            "marker among its special tokens (the dialogue data module adds it).") from None
        self.reserved = [r for r in (reserved or []) + special_pieces(tokenizer) + [turn_end] if r]

    def check_speaker(self, name: str, where: str) -> None:
        clash = next((r for r in self.reserved if r in name), None)
        if clash or not name.strip() or ":" in name:
            why = f"contains the special token {clash!r}" if clash else "is empty or contains ':'"
            raise XLabError(f"{where}: speaker name {name!r} {why}: rename the speaker in the data.")

    def header(self, speaker: str) -> list[int]:
        return self.tokenizer.encode(f"{speaker}:")

    def body(self, text: str) -> list[int]:
        return self.tokenizer.encode(" " + text) + [self.turn_end_id]

    def prefix(self, context: str, personas: dict[str, str]) -> list[int]:
        text = prefix_text(context, personas)
        return [self.tokenizer.sos_id] + (self.tokenizer.encode(text) if text else [])

    def render(self, episode: Episode) -> Rendered:
        for speaker in episode.speakers():
            self.check_speaker(speaker, f"episode {episode.id!r}")
        r = Rendered(episode.id, self.prefix(episode.context, episode.personas))
        r.texts = [turn_text(turn) for turn in episode.turns]
        r.trained = [turn.train for turn in episode.turns]
        pieces = [f"{t.speaker}:" for t in episode.turns] + [" " + text for text in r.texts]
        # One call for the whole episode where the tokenizer encodes batches (sentencepiece does).
        batch = getattr(self.tokenizer, "encode_batch", None)
        ids = batch(pieces) if batch is not None else [self.tokenizer.encode(p) for p in pieces]
        n = len(episode.turns)
        r.headers = ids[:n]
        r.bodies = [b + [self.turn_end_id] for b in ids[n:]]
        return r

    # --- windows and prompts ------------------------------------------------------------------
    @staticmethod
    def windows(r: Rendered, size: int, mask_turns: bool = True) -> list[tuple[list[int], list[bool]]]:
        """(ids, target) pairs of at most `size` tokens; target[i] says whether token i is learned."""
        out, n, i = [], len(r.headers), 0
        while i < n:
            prefix = r.prefix
            if len(prefix) + r.turn_length(i) > size:
                prefix = prefix[:1]
            budget = size - len(prefix)
            if r.turn_length(i) > budget:
                i += 1  # one turn longer than the whole context: nothing whole to learn from
                continue
            e, used = i, 0
            while e < n and used + r.turn_length(e) <= budget:
                used += r.turn_length(e)
                e += 1
            last = max((t for t in range(i, e) if r.trained[t]), default=None)
            if last is None:
                i = e
                continue
            e = last + 1
            used = sum(r.turn_length(t) for t in range(i, e))
            s = i
            while s > 0 and used + r.turn_length(s - 1) <= budget:
                s -= 1
                used += r.turn_length(s)
            ids, target = list(prefix), [not mask_turns and s == 0 and i == 0] * len(prefix)
            for t in range(s, e):
                new = t >= i
                ids += r.headers[t] + r.bodies[t]
                target += [new and not mask_turns] * len(r.headers[t])
                target += [new and (r.trained[t] or not mask_turns)] * len(r.bodies[t])
            out.append((ids, target))
            i = e
        return out

    @staticmethod
    def prompt(prefix: list[int], headers: list[list[int]], bodies: list[list[int]], speaker_header: list[int],
               budget: int) -> list[int]:
        """prefix + the most recent whole turns that fit in `budget` tokens + the next speaker's header.
        The prefix goes (all but <s>) when it leaves no room for one turn's history."""
        if len(prefix) + len(speaker_header) > budget:
            prefix = prefix[:1]
        room = budget - len(prefix) - len(speaker_header)
        if room < 0:
            raise XLabError(f"the context of {budget} tokens cannot hold a speaker name and a reply: "
                            "use a model with a longer max_len or shorter names.")
        kept: list[int] = []
        for h, b in zip(reversed(headers), reversed(bodies)):
            if len(h) + len(b) > room - len(kept):
                break
            kept = h + b + kept
        return prefix + kept + speaker_header
