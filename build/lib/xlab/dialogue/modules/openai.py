"""OpenAI-style chat: `{"messages": [{"role": "system"|"user"|"assistant", "content": text}, ...]}`
per line (the fine-tuning file format), or a JSON array of such objects. System messages become
the context; only the assistant's turns are trained. Tool calls and tool results carry no text a
chat model speaks and are left out."""

from __future__ import annotations

from collections.abc import Iterator

from xlab.dialogue.episode import Episode, Turn
from xlab.dialogue.modules import DialogueModule
from xlab.dialogue.modules.jsonfile import json_records


class OpenAIChat(DialogueModule):
    """Args: path: a .jsonl / .json file or a folder of them; limit: read at most this many."""

    needs_path = True

    def read(self) -> Iterator[Episode]:
        layout = '{"messages": [{"role": "system"|"user"|"assistant", "content": text}, ...]}'
        for where, record in json_records(self.path, self.name):
            if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
                found = f"keys {sorted(record)}" if isinstance(record, dict) else type(record).__name__
                raise self.wrong_layout(where, layout, found)
            context, turns = [], []
            for message in record["messages"]:
                if not isinstance(message, dict) or "role" not in message:
                    raise self.wrong_layout(where, layout, f"a message {str(message)[:80]!r}")
                role, content = message["role"], message.get("content")
                if role in ("tool", "function") or content is None:
                    continue
                if isinstance(content, list):  # content parts: keep the text ones
                    content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
                if role in ("system", "developer"):
                    context.append(str(content))
                elif role in ("user", "assistant"):
                    speaker = message.get("name") or ("User" if role == "user" else "Bot")
                    turns.append(Turn(str(speaker), str(content), role == "assistant"))
                else:
                    raise self.wrong_layout(where, "'role' one of system, user, assistant, tool", f"{role!r}")
            yield Episode(f"openai-{where.rsplit('/', 1)[-1]}", self.name, turns, "\n".join(context))
