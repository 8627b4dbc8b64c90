"""The build step behind `manage.py build-dataset`: modules -> episodes -> filters -> one JSONL file.

The output is written aside and renamed when complete, and an existing file is never replaced,
so a file with the name is always a whole build. Without a name it is called
`rev-{git short hash}-args{hash of the modules and filters}.jsonl`: the same code and arguments
give the same name. Outside a git checkout the revision part is `rev-nogit`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from xlab.common.errors import XLabError
from xlab.common.files import written_aside_
from xlab.dialogue.episode import Episode
from xlab.dialogue.filters import Filter, apply_filters, build_filter
from xlab.dialogue.modules import PACKAGED, DialogueModule, build_module
from xlab.dialogue.render import episode_text

DEFAULT_FILTERS = ("duplicates", "length", "unicode", "near_duplicates")


def git_short_hash(folder: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def default_name(modules: list[str], filters: list[str], folder: Path | None = None) -> str:
    folder = folder or Path(__file__).resolve().parent
    args = hashlib.sha256(json.dumps({"modules": modules, "filters": filters}).encode()).hexdigest()[:8]
    return f"rev-{git_short_hash(folder) or 'nogit'}-args{args}"


def output_path(name: str | None, modules: list[str], filters: list[str]) -> Path:
    path = Path(name or default_name(modules, filters))
    if path.suffix != ".jsonl":
        path = path.with_name(path.name + ".jsonl")
    if path.exists():
        raise XLabError(f"{path} exists and is never overwritten: choose another name with -o, or remove it.")
    return path


def collect(modules: list[DialogueModule], limit: int | None = None, verbose: bool = False) -> list[Episode]:
    """Every module's episodes in order, with a progress bar of the counts per module."""
    episodes, counts = [], {}
    with tqdm(desc="episodes", unit=" ep", file=sys.stderr, disable=limit is not None and not verbose) as bar:
        for module in modules:
            counts[module.name] = 0
            for episode in module.episodes():
                if limit is not None and len(episodes) >= limit:
                    break
                episodes.append(episode)
                counts[module.name] += 1
                bar.update()
                if counts[module.name] % 500 == 0:
                    bar.set_postfix(counts)
            bar.set_postfix(counts)
    return episodes


def build_dataset(module_specs: Iterable[str] | None = None, filter_specs: Iterable[str] | None = None,
                  name: str | None = None, print_episodes: int | None = None, verbose: bool = False,
                  out=None) -> Path | None:
    """Write the episodes of `module_specs` (default: the packaged modules) after `filter_specs`
    (default: all filters) to a new JSONL file, or print `print_episodes` of them instead."""
    out = out or sys.stdout
    specs = list(module_specs or PACKAGED)
    filter_names = list(DEFAULT_FILTERS if filter_specs is None else filter_specs)
    if name is not None and print_episodes is not None:
        raise XLabError("-o and -p exclude each other: print episodes or write a file, not both.")
    path = output_path(name, specs, filter_names) if print_episodes is None else None
    modules = [build_module(s) for s in specs]
    filters: list[Filter] = [build_filter(f) for f in filter_names]
    episodes = collect(modules, print_episodes, verbose)
    episodes, counts = apply_filters(episodes, filters)
    if verbose:
        print(f"filters (examples rejected): {counts}", file=sys.stderr)
    if print_episodes is not None:
        for episode in episodes[:print_episodes]:
            print("--- new episode ---", file=out)
            print(episode_text(episode), file=out)
        return None
    if not episodes:
        raise XLabError("no episode is left to write: check the modules' data and the filters.")
    with written_aside_(path) as tmp, tmp.open("w", encoding="utf-8") as file:
        for episode in episodes:
            file.write(episode.to_json() + "\n")
    turns = sum(len(e.turns) for e in episodes)
    print(f"wrote {len(episodes):,} episodes ({turns:,} turns) from {len(modules)} module(s) to {path}", file=out)
    return path


def build_dataset_command(args: argparse.Namespace) -> int:
    """manage.py build-dataset."""
    if args.print_episodes is not None and args.print_episodes < 1:
        raise XLabError(f"-p {args.print_episodes}: print at least one episode.")
    modules = [m.strip() for m in args.modules.split(",") if m.strip()] if args.modules else None
    filters = None if args.filters is None else [f.strip() for f in args.filters.split(",") if f.strip()]
    build_dataset(modules, filters, args.output_name, args.print_episodes, args.verbose)
    return 0
