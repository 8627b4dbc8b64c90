"""Episodes: a JSONL file written by `manage.py build-dataset` (or by hand, in the episode schema)."""

from __future__ import annotations

from collections.abc import Iterator

from xlab.dialogue.episode import Episode, OnError, read_episodes
from xlab.dialogue.modules import DialogueModule


class Episodes(DialogueModule):
    """Args: path: the .jsonl file; on_error: fail (stop at a malformed line, naming it) or skip
    (leave it out, count and report it); limit: read at most this many."""

    needs_path = True

    def __init__(self, path: str | None = None, limit: int | None = None, on_error: OnError = "fail"):
        super().__init__(path, limit)
        self.on_error = on_error

    def episodes(self) -> Iterator[Episode]:
        # Built episodes keep the source module they came from.
        for count, episode in enumerate(read_episodes(self.path, self.on_error)):
            if self.limit is not None and count >= self.limit:
                return
            yield episode
