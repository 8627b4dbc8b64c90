"""PersonaChat / ConvAI2 in ParlAI's text format (e.g. `train_self_original.txt`).

Every line starts with its number inside the episode; the numbers restart at 1 with each new
episode. Persona lines read `N your persona: ...` (the bot's) or `N partner's persona: ...` (the
user's, in the `both_` files); dialogue lines read `N partner text<TAB>bot reply[<TAB>reward
<TAB>cand1|cand2|...]`. Only the bot's replies are trained; ParlAI's `__SILENCE__` (the bot
speaking first) is left out.
"""

from __future__ import annotations

from collections.abc import Iterator

from xlab.dialogue.episode import Episode, Turn
from xlab.dialogue.modules import DialogueModule

SILENCE = "__SILENCE__"
LAYOUT = "lines 'N your persona: ...' and 'N partner text<TAB>bot reply', N restarting at 1 per episode"


class PersonaChat(DialogueModule):
    """Args: path: a ParlAI-format .txt file, or a folder of them; limit: read at most this many."""

    needs_path = True

    def read(self) -> Iterator[Episode]:
        files = sorted(self.path.glob("*.txt")) if self.path.is_dir() else [self.path]
        for file in files:
            episode: Episode | None = None
            count = 0
            for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                index, _, rest = line.partition(" ")
                if not index.isdigit():
                    raise self.wrong_layout(f"{file}:{number}", LAYOUT, f"{line[:60]!r}")
                if int(index) == 1 or episode is None:
                    if episode is not None:
                        yield episode
                    count += 1
                    episode = Episode(f"personachat-{file.stem}-{count}", self.name, [])
                if rest.startswith("your persona:") or rest.startswith("partner's persona:"):
                    who = "Bot" if rest.startswith("your") else "User"
                    fact = rest.split(":", 1)[1].strip()
                    episode.personas[who] = f"{episode.personas.get(who, '')} {fact}".strip()
                    continue
                fields = rest.split("\t")
                if len(fields) < 2:
                    raise self.wrong_layout(f"{file}:{number}", LAYOUT, f"a line without a tab: {line[:60]!r}")
                if fields[0].strip() and fields[0].strip() != SILENCE:
                    episode.turns.append(Turn("User", fields[0].strip(), False))
                episode.turns.append(Turn("Bot", fields[1].strip(), True))
            if episode is not None:
                yield episode
