"""chitchat-dataset (pip, MIT): ~7,000 human-human conversations of the Chit Chat Challenge.

The package ships one `dataset.json`, `{uuid: {prompt, ratings, start, messages}}`, where
`messages` is a list of turns and each turn a list of consecutive messages `{text, timestamp,
sender}` from one sender: a turn's messages are joined with a space. Both people are human, so
every turn is trained; the first sender is named "User" and the other "Bot", the names the chat
front end uses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from xlab.common.errors import XLabError
from xlab.dialogue.episode import Episode, Turn
from xlab.dialogue.modules import DialogueModule

try:  # a requirement; without it, reading the packaged dataset says how to install it
    import chitchat_dataset
except ImportError:
    chitchat_dataset = None


def packaged_path() -> Path:
    if chitchat_dataset is None:
        raise XLabError("chitchat-dataset is not installed: pip install -r requirements.txt.")
    return Path(chitchat_dataset.__file__).parent / "dataset.json"


class ChitChat(DialogueModule):
    """Args: path: a dataset.json in the package's layout (default: the installed package's);
    names: what the first and second sender are called; limit: read at most this many."""

    def __init__(self, path: str | None = None, limit: int | None = None, names: tuple[str, str] = ("User", "Bot")):
        super().__init__(path, limit)
        self.names = tuple(names)

    def options(self):
        return {"names": list(self.names)}

    def read(self) -> Iterator[Episode]:
        path = self.path or packaged_path()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise self.wrong_layout(str(path), "one JSON object of conversations", f"invalid JSON ({error})") from None
        if not isinstance(data, dict):
            raise self.wrong_layout(str(path), "{uuid: {messages: [...]}}", f"a JSON {type(data).__name__}")
        for uuid, conversation in data.items():
            if not isinstance(conversation, dict) or not isinstance(conversation.get("messages"), list):
                raise self.wrong_layout(str(path), "{uuid: {messages: [[{text, sender}, ...], ...]}}",
                                        f"conversation {uuid!r} without a 'messages' list")
            turns, senders = [], []
            for turn in conversation["messages"]:
                if not isinstance(turn, list) or not all(isinstance(m, dict) and "text" in m for m in turn):
                    raise self.wrong_layout(str(path), "each turn a list of {text, sender} messages",
                                            f"{type(turn).__name__} in conversation {uuid!r}")
                if not turn:
                    continue
                sender = turn[0].get("sender")
                if sender not in senders:
                    senders.append(sender)
                name = self.names[min(senders.index(sender), 1)]
                turns.append(Turn(name, " ".join(str(m["text"]).strip() for m in turn), True))
            yield Episode(f"chitchat-{uuid}", self.name, turns)
