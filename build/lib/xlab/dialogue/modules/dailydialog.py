"""DailyDialog: `dialogues_text.txt` (or the split files `dialogues_train.txt` ...), one dialogue per
line, utterances separated by `__eou__` (each also ends with it). Two people alternate, both
trained; they are named "User" and "Bot"."""

from __future__ import annotations

from collections.abc import Iterator

from xlab.dialogue.episode import Episode
from xlab.dialogue.modules import DialogueModule, alternating

EOU = "__eou__"


class DailyDialog(DialogueModule):
    """Args: path: a dialogues_*.txt file, or a folder holding them; limit: read at most this many."""

    needs_path = True

    def read(self) -> Iterator[Episode]:
        files = sorted(self.path.rglob("dialogues_*.txt")) if self.path.is_dir() else [self.path]
        files = [f for f in files if not f.name.startswith(("dialogues_act", "dialogues_emotion"))]
        if not files:
            raise self.wrong_layout(str(self.path), "a folder with dialogues_text.txt", "no dialogues_*.txt file")
        for file in files:
            for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                if EOU not in line:
                    raise self.wrong_layout(f"{file}:{number}", f"utterances each ending in {EOU}", f"{line[:60]!r}")
                texts = [u.strip() for u in line.split(EOU) if u.strip()]
                yield Episode(f"dailydialog-{file.stem}-{number}", self.name,
                              alternating(texts, ("User", "Bot"), (True, True)))
