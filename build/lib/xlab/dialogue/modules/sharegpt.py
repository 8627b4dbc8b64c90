"""ShareGPT: `[{"id": ..., "conversations": [{"from": "human"|"gpt"|"system", "value": text}, ...]}, ...]`
(a JSON array, or one object per line). A system message becomes the context; only the
assistant's (`gpt`) turns are trained."""

from __future__ import annotations

from collections.abc import Iterator

from xlab.dialogue.episode import Episode, Turn
from xlab.dialogue.modules import DialogueModule
from xlab.dialogue.modules.jsonfile import json_records

ROLES = {"human": ("User", False), "user": ("User", False), "gpt": ("Bot", True), "assistant": ("Bot", True),
         "chatgpt": ("Bot", True), "bing": ("Bot", True), "bard": ("Bot", True)}


class ShareGPT(DialogueModule):
    """Args: path: a .json / .jsonl file or a folder of them; limit: read at most this many."""

    needs_path = True

    def read(self) -> Iterator[Episode]:
        layout = '{"conversations": [{"from": "human"|"gpt"|"system", "value": text}, ...]}'
        for where, record in json_records(self.path, self.name):
            if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
                found = f"keys {sorted(record)}" if isinstance(record, dict) else type(record).__name__
                raise self.wrong_layout(where, layout, found)
            context, turns = [], []
            for message in record["conversations"]:
                if not isinstance(message, dict) or "from" not in message or "value" not in message:
                    raise self.wrong_layout(where, layout, f"a message {str(message)[:80]!r}")
                role = str(message["from"]).lower()
                if role == "system":
                    context.append(str(message["value"]))
                elif role in ROLES:
                    name, train = ROLES[role]
                    turns.append(Turn(name, str(message["value"]), train))
                else:
                    raise self.wrong_layout(where, f"'from' one of system, {', '.join(ROLES)}", f"{role!r}")
            yield Episode(f"sharegpt-{record.get('id', where)}", self.name, turns, "\n".join(context))
