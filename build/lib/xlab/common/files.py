"""Writing files and folders so that nothing half-written is ever trusted.

Every writer goes to a temporary name beside its target and renames it into place only once
the content is complete: a crash, a full disk or a Ctrl-C leaves the old target (or nothing),
never a truncated one that a later run would read as finished. The rename is atomic on POSIX
because both names are on the same file system.

A temporary name carries the writer's host and process id. A process killed outright (SIGKILL,
a node lost) cannot remove its temporary file, so the next writer of the same target removes the
ones whose process is gone: on its own host only, since a process id says nothing about another
machine's processes on a shared file system.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
_OURS = re.compile(r"\.(?:tmp|old)-(?:(?P<host>[A-Za-z0-9_-]+)-)?(?P<pid>\d+)$")


def aside(path: Path) -> Path:
    """The temporary name a writer of `path` uses (one per process and host, so ranks never collide)."""
    return path.with_name(f"{path.name}.tmp-{HOST}-{os.getpid()}")


def remove_stale_(path: Path) -> list[Path]:
    """Remove the temporary files and folders beside `path` that writers of it left when they were
    killed: those of this host whose process no longer runs. Returns what was removed."""
    removed = []
    for candidate in path.parent.glob(f"{glob_escape(path.name)}.*-*"):
        found = _OURS.search(candidate.name[len(path.name):])
        if found is None or candidate.name != path.name + found.group(0):
            continue
        host, pid = found.group("host"), int(found.group("pid"))
        if (host is None or host == HOST) and pid != os.getpid() and not _running(pid):
            _remove(candidate)
            removed.append(candidate)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextmanager
def written_aside_(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path to write `path`'s content to; renames it into place on success,
    removes it on failure. Works for a file or a folder the caller creates at that path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_(path)
    tmp = aside(path)
    _remove(tmp)
    try:
        yield tmp
        replace_(tmp, path)
    finally:
        _remove(tmp)


@contextmanager
def written_aside_together_(*paths: str | Path) -> Iterator[tuple[Path, ...]]:
    """`written_aside_` for files that only make sense together: one temporary path each, all
    renamed into place in the order given once the block succeeds, none if it fails."""
    with ExitStack() as stack:
        # ExitStack leaves in reverse order of entry: enter the last path first.
        tmps = [stack.enter_context(written_aside_(path)) for path in reversed(paths)]
        yield tuple(reversed(tmps))


def replace_(tmp: Path, path: Path) -> None:
    """Move `tmp` onto `path`. A folder cannot be renamed onto a non-empty folder, so the old one
    steps aside first and goes only after the new one is in place."""
    if tmp.is_dir() and path.exists():
        old = path.with_name(f"{path.name}.old-{HOST}-{os.getpid()}")
        _remove(old)
        path.rename(old)
        tmp.rename(path)
        _remove(old)
    else:
        os.replace(tmp, path)


def write_text_(path: str | Path, text: str) -> Path:
    with written_aside_(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes_(path: str | Path, data: bytes) -> Path:
    with written_aside_(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# --- what a finished folder held ---------------------------------------------------------------
def file_sizes(folder: Path) -> dict[str, int]:
    """{path relative to `folder`: bytes} of every file under it: what a finished build wrote."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def size_mismatch(folder: Path, sizes: dict[str, int]) -> str | None:
    """How the files under `folder` differ from the `sizes` recorded when they were written (the
    first one missing or of another size, e.g. cut short by a copy or a full disk), or None."""
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} holds {path.stat().st_size:,} bytes, written with {size:,}"
    return None

