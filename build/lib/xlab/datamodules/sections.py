"""Long documents cut into sections before the split, so that no single document decides a split.

The split hashes document ids, so its fractions hold by count; by volume they hold only while no
document is a large share of the corpus. A 2 MB licence file among 5 MB of small ones put 41% of
the bytes in a 5% validation split. Cutting every document longer than `section_bytes` into
sections of about that size, each with its own id (`<id>#<n>`), lets the hash spread one long
document over the splits like many short ones.

The cut depends only on the document's own text: paragraph boundaries first, then line breaks,
then (for one enormous line) character positions. So it is deterministic, a document keeps its
sections when the corpus around it grows, and documents below the size keep their id and their
split. The sections' texts joined give back the document's text exactly.

The default, 32 KiB, is far above the size of most documents people train on (articles, posts,
files of source or prose are a few KiB), so ordinary corpora are split by document as before,
and a section still holds about 8k tokens: many training windows at the usual contexts of 256 to
2048 tokens. A corpus that needs documents whole (long-context training on books) sets
`section_bytes: null`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from xlab.datamodules.sources import Document

DEFAULT_SECTION_BYTES = 32 * 1024
SEPARATOR = "#"
_LINE_END = re.compile(r"(?<=\n)")


def sectioned(documents: Iterable[Document], section_bytes: int | None,
              stats: dict[str, int] | None = None) -> Iterator[Document]:
    """`documents`, with each one longer than `section_bytes` (UTF-8) replaced by its sections;
    `stats` counts the documents cut and the sections made."""
    for doc in documents:
        if not section_bytes or len(doc.text.encode("utf-8")) <= section_bytes:
            yield doc
            continue
        pieces = cut(doc.text, section_bytes)
        if stats is not None:
            stats["documents_cut"] = stats.get("documents_cut", 0) + 1
            stats["sections"] = stats.get("sections", 0) + len(pieces)
        for i, text in enumerate(pieces):
            yield Document(f"{doc.id}{SEPARATOR}{i}", text)


def cut(text: str, section_bytes: int) -> list[str]:
    """Pieces of `text`, each at most about `section_bytes`, cut at the coarsest boundary that fits."""
    pieces = _units(text, section_bytes, 0)
    sections, current, size = [], [], 0
    for piece, n in pieces:
        if current and size + n > section_bytes:
            sections.append("".join(current))
            current, size = [], 0
        current.append(piece)
        size += n
    if current:
        sections.append("".join(current))
    return sections


def _units(text: str, limit: int, level: int) -> list[tuple[str, int]]:
    """(piece, bytes) at paragraph, then line, then character level, each piece at most `limit` bytes."""
    if level == 0:
        parts = _paragraphs(text)
    elif level == 1:
        parts = _LINE_END.split(text)
    else:
        return _characters(text, limit)
    out = []
    for part in parts:
        if not part:
            continue
        n = len(part.encode("utf-8"))
        out.extend([(part, n)] if n <= limit else _units(part, limit, level + 1))
    return out


def _paragraphs(text: str) -> list[str]:
    """Paragraphs with their closing blank lines attached, so they join back to `text`."""
    parts, start = [], 0
    for match in re.finditer(r"\n[ \t]*\n\s*", text):
        parts.append(text[start:match.end()])
        start = match.end()
    parts.append(text[start:])
    return parts


def _characters(text: str, limit: int) -> list[tuple[str, int]]:
    out, start, size = [], 0, 0
    for i, ch in enumerate(text):
        n = len(ch.encode("utf-8"))
        if size + n > limit and i > start:
            out.append((text[start:i], size))
            start, size = i, 0
        size += n
    if start < len(text):
        out.append((text[start:], size))
    return out
