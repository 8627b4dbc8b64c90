"""What a family adds to `infer.py` and `manage.py`, declared without importing the family.

A family's `cli.py` lists its infer.py options and mode (`FrontEnd`) and its manage.py commands
(`Command`); the code that runs them is named by a "module:function" reference (`xlab.common.lazy
.resolve`), imported only when it runs, so `--help` lists every option in a fraction of a second.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Option:
    """One `add_argument` call, written down."""

    flags: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    def add_to(self, group: argparse._ActionsContainer) -> None:
        group.add_argument(*self.flags, **self.settings)


def option(*flags: str, **settings: Any) -> Option:
    return Option(flags, settings)


@dataclass(frozen=True)
class FrontEnd:
    """A family's part of infer.py.

    title: the option group's heading in --help.
    options: its options.
    selected: whether the parsed arguments ask for this front end's mode (None: it has no mode).
    run: "module:function" taking (loaded, settings, args) and returning the exit status; it runs
        instead of plain prompt continuation when `selected` says so.
    prepare: called with (loaded, args) on every run before sampling (e.g. to let sampling write to
        a memory); it must not import the family's models.
    """

    title: str
    options: tuple[Option, ...]
    selected: Callable[[argparse.Namespace], bool] | None = None
    run: str | None = None
    prepare: Callable[[Any, argparse.Namespace], None] | None = None

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(self.title)
        for each in self.options:
            each.add_to(group)


@dataclass(frozen=True)
class Command:
    """A manage.py command: its name, help, options and the "module:function" that runs it
    (taking the parsed arguments, returning the exit status).

    reads_config: the command takes a recipe like `xlab.py fit` does (-c files and --key value
    overrides, conf/defaults.yaml without -c); manage.py reads it with the same parser and passes
    the data module it describes as the runner's second argument.
    overrides: more overrides the command's own options stand for (e.g. -o DIR for a data setting).
    """

    name: str
    help: str
    options: tuple[Option, ...]
    run: str
    reads_config: bool = False
    overrides: Callable[[argparse.Namespace], list[str]] | None = None
