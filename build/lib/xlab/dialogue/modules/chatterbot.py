"""chatterbot-corpus (pip, BSD): YAML files of short conversations in many languages.

Each file under the package's `data/<language>/` is `{categories: [...], conversations: [[text,
text, ...], ...]}`; most conversations are a question and its answer. The first line is the
user's, then speakers alternate; only the bot's answers are trained (the questions are prompts).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import yaml

from xlab.common.errors import XLabError
from xlab.dialogue.episode import Episode
from xlab.dialogue.modules import DialogueModule, alternating

try:  # a requirement; without it, reading the packaged corpus says how to install it
    from chatterbot_corpus.corpus import DATA_DIRECTORY
except ImportError:
    DATA_DIRECTORY = None


def packaged_folder() -> Path:
    if DATA_DIRECTORY is None:
        raise XLabError("chatterbot-corpus is not installed: pip install -r requirements.txt.")
    return Path(DATA_DIRECTORY)


class Chatterbot(DialogueModule):
    """Args: path: a folder of YAML files in the corpus's layout (default: the installed package's
    data); language: the subfolder to read (e.g. english); limit: read at most this many."""

    def __init__(self, path: str | None = None, limit: int | None = None, language: str = "english"):
        super().__init__(path, limit)
        self.language = language

    def options(self):
        return {"language": self.language}

    def read(self) -> Iterator[Episode]:
        root = self.path or packaged_folder()
        folder = root / self.language if (root / self.language).is_dir() else root
        files = sorted(folder.glob("*.yml")) + sorted(folder.glob("*.yaml"))
        if not files:
            raise XLabError(f"{self.name}: no .yml files in {folder}: give the corpus's data folder and a language.")
        for file in files:
            try:
                data = yaml.safe_load(file.read_text(encoding="utf-8"))
            except yaml.YAMLError as error:
                raise self.wrong_layout(str(file), "YAML", f"a YAML error ({' '.join(str(error).split())[:120]})") from None
            if not isinstance(data, dict) or not isinstance(data.get("conversations"), list):
                found = f"keys {sorted(data)}" if isinstance(data, dict) else type(data).__name__
                raise self.wrong_layout(str(file), "{categories: [...], conversations: [[text, ...], ...]}", found)
            for i, conversation in enumerate(data["conversations"]):
                if not isinstance(conversation, list):
                    continue  # the packaged trivia.yml has a stray line among its conversations
                texts = [str(t).strip() for t in conversation if t is not None and str(t).strip()]
                if len(texts) < 2:
                    continue  # a lone line has no answer to learn
                yield Episode(f"chatterbot-{self.language}-{file.stem}-{i}", self.name,
                              alternating(texts, ("User", "Bot"), (False, True)))
