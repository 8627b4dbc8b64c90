"""The episode: one conversation, the unit every dialogue reader yields and training consumes.

One JSON object per line of a built dataset:

    {"id": "chitchat-0a1b...", "source": "chitchat:ChitChat",
     "context": "You are in the Watchtower. ...",            # setting or scenario, may be ""
     "personas": {"Court Wizard": "I am a wizard ..."},      # by speaker, may be {}
     "turns": [{"speaker": "Soldier", "text": "Yes it is", "action": null, "emote": null, "train": true}, ...]}

`train` says which turns the model learns to produce: a human-human corpus trains every speaker,
an assistant corpus only the assistant. An episode with no turns, or none to train on, teaches
nothing and is refused where it is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from xlab.common.errors import XLabError

OnError = Literal["skip", "fail"]


@dataclass
class Turn:
    speaker: str
    text: str
    train: bool = True
    action: str | None = None
    emote: str | None = None


@dataclass
class Episode:
    id: str
    source: str
    turns: list[Turn]
    context: str = ""
    personas: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Any) -> Episode:
        """An episode from its JSON object; a wrong layout raises ValueError saying what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, found {type(data).__name__}")
        missing = [k for k in ("id", "turns") if k not in data]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        if not isinstance(data["turns"], list):
            raise ValueError("'turns' is not a list")
        turns = []
        for i, turn in enumerate(data["turns"]):
            if not isinstance(turn, dict) or not isinstance(turn.get("speaker"), str) \
                    or not isinstance(turn.get("text"), str):
                raise ValueError(f"turn {i} needs a string 'speaker' and a string 'text'")
            turns.append(Turn(turn["speaker"], turn["text"], bool(turn.get("train", True)),
                              turn.get("action"), turn.get("emote")))
        personas = data.get("personas") or {}
        if not isinstance(personas, dict):
            raise ValueError("'personas' is not an object of speaker: persona")
        return cls(str(data["id"]), str(data.get("source", "")), turns, str(data.get("context") or ""),
                   {str(k): str(v) for k, v in personas.items()})

    def problem(self) -> str | None:
        """Why this episode cannot be trained on, or None."""
        if not self.turns:
            return f"episode {self.id!r} has no turns"
        if not any(t.train for t in self.turns):
            return f"episode {self.id!r} has no turn marked train"
        return None

    def check(self) -> Episode:
        problem = self.problem()
        if problem:
            raise XLabError(f"{problem}: every episode needs at least one turn the model learns to produce.")
        return self

    def speakers(self) -> list[str]:
        return list(dict.fromkeys([*self.personas, *(t.speaker for t in self.turns)]))


def read_episodes(path: str | Path, on_error: OnError = "fail", report: list[str] | None = None) -> Iterator[Episode]:
    """Episodes of a built JSONL file. A malformed line stops with its file and line number, or with
    `on_error="skip"` is counted, its problem appended to `report`, and a summary printed at the end."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise XLabError(f"episode file {path} does not exist: build one with `./manage.py build-dataset`.")
    skipped = 0
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                episode = Episode.from_dict(json.loads(line))
                problem = episode.problem()
                if problem:
                    raise ValueError(problem)
            except (ValueError, json.JSONDecodeError) as error:
                message = f"{path}:{number}: {' '.join(str(error).split())}"
                if on_error == "fail":
                    raise XLabError(f"{message}: fix the line, or set on_error: skip to leave bad lines out.") from None
                skipped += 1
                if report is not None:
                    report.append(message)
                continue
            yield episode
    if skipped:
        print(f"xlab: skipped {skipped} malformed line(s) of {path} (on_error: skip)", flush=True)
