"""The default corpus: CPython's reference documentation, shipped inside the standard library.

`pydoc_data.topics` holds ~465 KB of English prose and code, so the out-of-the-box run needs no
network and no files in the repository. Each topic is cut at paragraph breaks into pieces of
about `piece_chars` characters: 79 topics alone are too few documents for a 2.5% split.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from pydoc_data.topics import topics

from xlab.datamodules.sources.base import Document, Source, register


@register
class EmbeddedCorpus(Source):
    kind = "embedded"

    def __init__(self, piece_chars: int = 2000):
        self.piece_chars = piece_chars

    def __iter__(self) -> Iterator[Document]:
        for name in sorted(topics):
            for i, piece in enumerate(_pieces(topics[name], self.piece_chars)):
                yield Document(f"pydoc/{name}/{i}", piece)

    def fingerprint(self) -> dict[str, Any]:
        # The text changes with the Python version that ships it.
        return {"kind": self.kind, "piece_chars": self.piece_chars, "python": sys.version.split()[0]}


def _pieces(text: str, target: int) -> Iterator[str]:
    piece = ""
    for paragraph in text.split("\n\n"):
        piece = f"{piece}\n\n{paragraph}" if piece else paragraph
        if len(piece) >= target:
            yield piece
            piece = ""
    if piece.strip():
        yield piece
