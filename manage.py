#!/usr/bin/env python3
"""Manage XLab checkpoints, exports and data.

Usage:
    ./manage.py export-checkpoint CKPT [-o OUT] [--force] [--empty-memory]
    ./manage.py inspect CKPT_OR_EXPORT [--json]
    ./manage.py import-hf HF_DIR [-o OUT] [--tokenizer SPM_MODEL] [--force]
    ./manage.py export-hf CKPT_OR_EXPORT -o DIR [--force]
    ./manage.py prepare-data [-c RECIPE.yaml] [--section.key value ...]
    ./manage.py build-retrieval -c RECIPE.yaml [-o DIR] [--max-len N]
    ./manage.py build-dataset [-o OUTPUT_NAME] [-m MODULES] [-f FILTERS] [-p N] [-v]
    ./manage.py COMMAND --help

An export is a folder of safetensors weights, config.json, generation.json and the tokenizer:
a fraction of a training checkpoint's size, and loadable without unpickling anything.

Adding a command: a `Command` (name, help, options, and the "module:function" that runs it) in
`COMMANDS` below, or in a family's `cli.py` for the family's own commands. The function is imported
only when its command runs, so that `--help` stays instant.
"""

from __future__ import annotations

import argparse

from xlab.common.errors import XLabError, exit_with, run_script
from xlab.common.lazy import resolve
from xlab.common.plugins import Command, option
from xlab.families import commands as family_commands

COMMANDS = (
    Command(
        "export-checkpoint",
        "write a Lightning checkpoint as an export folder (weights, config, tokenizer, generation defaults)",
        (option("checkpoint", metavar="CKPT", help="a .ckpt written by training"),
         option("-o", "--out", metavar="OUT", help="export folder (default: <ckpt stem>-export beside the checkpoint)"),
         option("--force", action="store_true", help="replace OUT if it exists and is not empty"),
         option("--empty-memory", action="store_true",
                help="a model with a memory: export the weights with an empty memory instead of the checkpoint's entries")),
        run="xlab.interop.commands:export_checkpoint",
    ),
    Command(
        "inspect",
        "show model kind, parameter count, step, validation loss, tokenizer size and settings",
        (option("path", metavar="CKPT_OR_EXPORT", help="a .ckpt file or an export folder"),
         option("--json", action="store_true", help="print one JSON object instead of text")),
        run="xlab.interop.describe:inspect",
    ),
    Command(
        "import-hf",
        "convert a local transformers GPT-2 folder (save_pretrained) into an XLab export",
        (option("path", metavar="HF_DIR", help="folder with config.json and the weights of a GPT2LMHeadModel"),
         option("-o", "--out", metavar="OUT", help="export folder (default: <HF_DIR>-xlab beside it)"),
         option("--tokenizer", metavar="SPM_MODEL",
                help="a sentencepiece tokenizer.model to use instead of the folder's own GPT-2 tokenizer files"),
         option("--force", action="store_true", help="replace OUT if it exists and is not empty")),
        run="xlab.interop.commands:import_hf",
    ),
    Command(
        "export-hf",
        "write a checkpoint or export as a transformers folder (GPT2LMHeadModel or LlamaForCausalLM + fast tokenizer)",
        (option("path", metavar="CKPT_OR_EXPORT", help="a .ckpt file or an export folder"),
         option("-o", "--out", required=True, metavar="DIR", help="the folder to write (AutoModelForCausalLM loads it)"),
         option("--force", action="store_true", help="replace DIR if it exists and is not empty")),
        run="xlab.interop.commands:export_hf",
    ),
    Command(
        "prepare-data",
        "build a recipe's tokenizer, data caches and (RETRO) database without training, and report them",
        (),
        run="xlab.cli:prepare_data_command",
        reads_config=True,
    ),
)


def all_commands() -> dict[str, Command]:
    found: dict[str, Command] = {}
    for command in (*COMMANDS, *family_commands()):
        if command.name in found:
            raise ValueError(f"two commands are named {command.name!r}")
        found[command.name] = command
    return found


def build_parser(commands: dict[str, Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="manage.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands.values():
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        if command.reads_config:
            sub.add_argument("-c", "--config", action="append", default=[], metavar="YAML",
                             help="a recipe, as xlab.py reads it (repeatable; later files win; none: "
                                  "conf/defaults.yaml)")
            sub.epilog = "Other --section.key value settings are read as xlab.py fit reads them."
        for each in command.options:
            each.add_to(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    commands = all_commands()
    parser = build_parser(commands)
    args, overrides = parser.parse_known_args(argv)
    command = commands[args.command]
    if overrides and not command.reads_config:
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    try:
        if not command.reads_config:
            return resolve(command.run)(args)
        config = [arg for path in args.config for arg in ("-c", path)]
        extra = command.overrides(args) if command.overrides is not None else []
        datamodule = resolve("xlab.cli:data_module_from_config")([*config, *extra, *overrides])
        return resolve(command.run)(args, datamodule)
    except XLabError as error:
        exit_with(error)


if __name__ == "__main__":
    run_script(main)
