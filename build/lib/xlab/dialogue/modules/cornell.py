"""Cornell Movie-Dialogs: a folder with `movie_lines.txt` and `movie_conversations.txt` (Latin-1,
fields separated by ` +++$+++ `), and optionally `movie_titles_metadata.txt`.

    movie_lines.txt           L1045 +++$+++ u0 +++$+++ m0 +++$+++ BIANCA +++$+++ They do not!
    movie_conversations.txt   u0 +++$+++ u2 +++$+++ m0 +++$+++ ['L194', 'L195', 'L196', 'L197']
    movie_titles_metadata.txt m0 +++$+++ 10 things i hate about you +++$+++ 1999 +++$+++ ...

Speakers are the characters, named as the script names them (title case); every line is trained.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from xlab.dialogue.episode import Episode, Turn
from xlab.dialogue.modules import DialogueModule

SEP = " +++$+++ "


class CornellMovies(DialogueModule):
    """Args: path: the corpus folder; limit: read at most this many conversations."""

    needs_path = True

    def _fields(self, file: Path, count: int) -> Iterator[tuple[str, list[str]]]:
        for number, line in enumerate(file.read_text(encoding="latin-1").splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split(SEP)
            if len(fields) < count:
                raise self.wrong_layout(f"{file}:{number}", f"{count} fields separated by '{SEP.strip()}'",
                                        f"{len(fields)} field(s): {line[:60]!r}")
            yield f"{file}:{number}", fields

    def read(self) -> Iterator[Episode]:
        folder = self.path
        files = {name: folder / name for name in ("movie_lines.txt", "movie_conversations.txt")}
        missing = [name for name, f in files.items() if not f.is_file()]
        if missing:
            raise self.wrong_layout(str(folder), "a folder with movie_lines.txt and movie_conversations.txt",
                                    f"no {', '.join(missing)}")
        lines = {f[0].strip(): (f[3].strip().title(), f[4].strip()) for _, f in self._fields(files["movie_lines.txt"], 5)}
        titles = {}
        if (folder / "movie_titles_metadata.txt").is_file():
            titles = {f[0].strip(): f"{f[1].strip()} ({f[2].strip()})"
                      for _, f in self._fields(folder / "movie_titles_metadata.txt", 3)}
        for where, fields in self._fields(files["movie_conversations.txt"], 4):
            try:
                ids = ast.literal_eval(fields[3].strip())
            except (ValueError, SyntaxError):
                ids = None
            if not isinstance(ids, list):
                raise self.wrong_layout(where, "a list of line ids like ['L194', 'L195']", f"{fields[3][:60]!r}")
            unknown = [i for i in ids if i not in lines]
            if unknown:
                raise self.wrong_layout(where, "line ids present in movie_lines.txt", f"unknown ids {unknown[:3]}")
            movie = fields[2].strip()
            context = f"A scene from {titles[movie]}." if movie in titles else ""
            turns = [Turn(lines[i][0] or "Someone", lines[i][1], True) for i in ids if lines[i][1]]
            yield Episode(f"cornell-{movie}-{ids[0]}", self.name, turns, context)
