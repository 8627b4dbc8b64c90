"""The RETRO family's part of manage.py: building the retrieval database ahead of training."""

from __future__ import annotations

import argparse

from xlab.common.plugins import Command, option


def _overrides(args: argparse.Namespace) -> list[str]:
    """-o and --max-len as the recipe settings they stand for."""
    extra = ["--data.init_args.database_dir", args.out] if args.out else []
    return extra + (["--model.init_args.max_len", str(args.max_len)] if args.max_len else [])


COMMANDS = (
    Command(
        "build-retrieval",
        "build the RETRO retrieval database of a recipe's corpus (train split) ahead of training",
        (option("-o", "--out", metavar="DIR", help="database folder (default: under the corpus cache, where training looks)"),
         option("--max-len", type=int, metavar="N", help="sequence length (default: the recipe's model max_len)")),
        run="xlab.retro.commands:build_retrieval",
        reads_config=True,
        overrides=_overrides,
    ),
)
