"""LIGHT text-adventure dialogue, as ParlAI distributes it (`light_data.pkl`).

The file is a pickle: a list of episodes, each a dict with `setting` ({name, category,
description}), `agents` ([{name, persona}, {name, persona}]) and the aligned lists `speech`,
`emote` and `action` (entry i is agents[i % 2]'s turn; None where they did not speak, emote or
act). Unpickling can run code that the file names, so reading it needs `allow_pickle: true`, and
even then only plain lists, dicts, strings and numbers are accepted: any other object in the file
is refused before it is built.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator

from xlab.common.errors import XLabError
from xlab.dialogue.episode import Episode, Turn
from xlab.dialogue.modules import DialogueModule


class PlainUnpickler(pickle.Unpickler):
    """Builds builtin containers and scalars only: a reference to any class or function is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"the file asks to build {module}.{name}, which a LIGHT file never needs")


class LightDialogue(DialogueModule):
    """Args: path: light_data.pkl; allow_pickle: must be true to read it (see the module doc);
    limit: read at most this many."""

    needs_path = True

    def __init__(self, path: str | None = None, limit: int | None = None, allow_pickle: bool = False):
        super().__init__(path, limit)
        if not allow_pickle:
            raise XLabError(f"{self.name}: {self.path} is a pickle, and unpickling a file can run code it names: "
                            "set allow_pickle: true (light:LightDialogue=PATH?allow_pickle=true on the command line) "
                            "for a file from a source you trust; only plain data is accepted even then.")

    def options(self):
        return {"allow_pickle": True}

    def read(self) -> Iterator[Episode]:
        layout = "a pickled list of {setting, agents, speech, emote, action} dicts"
        try:
            data = PlainUnpickler(io.BytesIO(self.path.read_bytes())).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as error:
            raise self.wrong_layout(str(self.path), layout, f"an unreadable pickle ({error})") from None
        if not isinstance(data, list):
            raise self.wrong_layout(str(self.path), layout, f"a {type(data).__name__}")
        for i, ep in enumerate(data):
            if not isinstance(ep, dict) or not {"setting", "agents", "speech"} <= set(ep):
                found = f"keys {sorted(ep)[:8]}" if isinstance(ep, dict) else type(ep).__name__
                raise self.wrong_layout(f"{self.path} episode {i}", layout, found)
            agents = ep["agents"]
            names = [str(a.get("name", f"character {j}")).title() for j, a in enumerate(agents)]
            personas = {n: str(a.get("persona", "")) for n, a in zip(names, agents) if a.get("persona")}
            setting = ep["setting"] or {}
            context = f"You are in the {setting.get('name', 'unknown place')}.\n{setting.get('description', '')}".strip()
            speech, emote, action = ep["speech"], ep.get("emote") or [], ep.get("action") or []
            turns = []
            for t, text in enumerate(speech):
                em = emote[t] if t < len(emote) else None
                act = action[t] if t < len(action) else None
                if text is None and em is None and act is None:
                    continue
                turns.append(Turn(names[t % len(names)], str(text or ""), True, act, em))
            yield Episode(f"light-{i}", self.name, turns, context, personas)
