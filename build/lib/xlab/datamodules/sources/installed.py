"""Real text that every Debian-based machine with Python already has, as sources that need no
network and no files of their own:

    stdlib     the running Python's standard library, its .py files (tests, site-packages, idlelib
               and lib2to3 left out): licence headers, shared idioms, near-copies between modules
    licences   /usr/share/common-licenses/* and /usr/share/doc/*/copyright: hundreds of packages
               quoting the same few licences (GPL, LGPL, Apache, BSD, MIT) around their own names

Both are corpora where a long context, a memory or a retrieval database has something to find
again. Exact duplicates are read once (many packages install the same copyright file), and a
document is cut at `max_chars` (one Boost copyright file alone is 2 MB). The fingerprint lists
every file's name, size and modification time, so an upgrade of the machine builds a new cache.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xlab.common.errors import XLabError
from xlab.datamodules.sources.base import Document, Source, register

LEFT_OUT = ("site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3")


class InstalledFiles(Source):
    """Text files the machine has installed, read once each, identical copies once in all."""

    def __init__(self, max_chars: int | None = 65536):
        if max_chars is not None and max_chars < 1:
            raise XLabError(f"{self.kind} source max_chars={max_chars} must be positive, or null for whole files.")
        self.max_chars = max_chars

    def files(self) -> list[tuple[str, Path]]:
        """(document id, path) of every file, in a stable order."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Document]:
        seen: set[bytes] = set()
        for doc_id, path in self.files():
            text = path.read_bytes().decode("utf-8", "replace")
            digest = hashlib.sha256(text.encode()).digest()
            if text.strip() and digest not in seen:
                seen.add(digest)
                yield Document(doc_id, text[: self.max_chars] if self.max_chars else text)

    def fingerprint(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for doc_id, path in self.files():
            stat = path.stat()
            digest.update(f"{doc_id}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return {"kind": self.kind, "max_chars": self.max_chars, "files": digest.hexdigest()}


@register
class StandardLibrary(InstalledFiles):
    kind = "stdlib"

    def files(self) -> list[tuple[str, Path]]:
        root = Path(sysconfig.get_paths()["stdlib"])
        found = []
        for name in sorted(glob.glob(str(root / "**" / "*.py"), recursive=True)):
            parts = Path(os.path.relpath(name, root)).parts
            if not set(parts[:-1]) & set(LEFT_OUT):
                found.append((f"stdlib/{'/'.join(parts)}", Path(name)))
        if not found:
            raise XLabError(f"the standard library at {root} has no .py files: this Python ships compiled modules only.")
        return found


@register
class Licences(InstalledFiles):
    kind = "licences"

    def files(self) -> list[tuple[str, Path]]:
        names = sorted(glob.glob("/usr/share/common-licenses/*")) + sorted(glob.glob("/usr/share/doc/*/copyright"))
        found = [(f"licences/{os.path.relpath(name, '/usr/share')}", Path(name)) for name in names
                 if os.path.isfile(name)]
        if not found:
            raise XLabError("no licence texts in /usr/share/common-licenses or /usr/share/doc/*/copyright: this "
                            "machine is not Debian-based; use a text_folder source instead.")
        return found
