#!/usr/bin/env python3
"""Manage XLab checkpoints and exports.

Usage:
    ./manage.py export-checkpoint CKPT [-o OUT] [--force] [--empty-memory]
    ./manage.py inspect CKPT_OR_EXPORT [--json]
    ./manage.py import-hf HF_DIR [-o OUT] [--tokenizer SPM_MODEL] [--force]
    ./manage.py export-hf CKPT_OR_EXPORT -o DIR [--force]
    ./manage.py build-retrieval -c RECIPE.yaml [-o DIR] [--max-len N]
    ./manage.py build-dataset [-o OUTPUT_NAME] [-m MODULES] [-f FILTERS] [-p N] [-v]
    ./manage.py COMMAND --help

An export is a folder of safetensors weights, config.json, generation.json and the tokenizer:
a fraction of a training checkpoint's size, and loadable without unpickling anything.

Adding a command: write one function `def name(args) -> int` under `@subcommand(name, help,
arg(...), ...)`; it is listed, parsed and run like the others. Import heavy modules inside the
function, so that `--help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xlab.errors import XLabError, exit_with, run_script


@dataclass
class Subcommand:
    name: str
    run: Callable[[argparse.Namespace], int]
    help: str
    arguments: tuple[tuple[tuple[str, ...], dict[str, Any]], ...]


SUBCOMMANDS: dict[str, Subcommand] = {}


def arg(*flags: str, **options: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """One `add_argument` call, written down for `subcommand`."""
    return flags, options


def subcommand(name: str, help: str, *arguments: tuple[tuple[str, ...], dict[str, Any]]):
    """Register the decorated function as the command `name`."""

    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        if name in SUBCOMMANDS:
            raise ValueError(f"two commands are named {name!r}")
        SUBCOMMANDS[name] = Subcommand(name, run, help, arguments)
        return run

    return register


# --- commands ------------------------------------------------------------------------------------
@subcommand(
    "export-checkpoint",
    "write a Lightning checkpoint as an export folder (weights, config, tokenizer, generation defaults)",
    arg("checkpoint", metavar="CKPT", help="a .ckpt written by training"),
    arg("-o", "--out", metavar="OUT", help="export folder (default: <ckpt stem>-export beside the checkpoint)"),
    arg("--force", action="store_true", help="replace OUT if it exists and is not empty"),
    arg("--empty-memory", action="store_true",
        help="MemoryGPT2: export the weights with an empty memory instead of the checkpoint's entries"),
)
def export_checkpoint(args: argparse.Namespace) -> int:
    from xlab.export import describe, export_checkpoint_

    out = export_checkpoint_(args.checkpoint, args.out, force=args.force, keep_memory=not args.empty_memory)
    before, after = describe(args.checkpoint)["file_bytes"], describe(out)
    state = "".join(f", {value:,} {what} {unit}".rstrip() for what, unit, value in _state(after))
    print(f"exported {args.checkpoint} -> {out} ({_megabytes(after['file_bytes'])}{state}; "
          f"checkpoint {_megabytes(before)})")
    return 0


@subcommand(
    "inspect",
    "show model kind, parameter count, step, validation loss, tokenizer size and settings",
    arg("path", metavar="CKPT_OR_EXPORT", help="a .ckpt file or an export folder"),
    arg("--json", action="store_true", help="print one JSON object instead of text"),
)
def inspect(args: argparse.Namespace) -> int:
    import json

    from xlab.export import describe

    facts = describe(args.path)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print(format_facts(facts))
    return 0


@subcommand(
    "import-hf",
    "convert a local transformers GPT-2 folder (save_pretrained) into an XLab export",
    arg("path", metavar="HF_DIR", help="folder with config.json and the weights of a GPT2LMHeadModel"),
    arg("-o", "--out", metavar="OUT", help="export folder (default: <HF_DIR>-xlab beside it)"),
    arg("--tokenizer", metavar="SPM_MODEL",
        help="a sentencepiece tokenizer.model to use instead of the folder's own GPT-2 tokenizer files"),
    arg("--force", action="store_true", help="replace OUT if it exists and is not empty"),
)
def import_hf(args: argparse.Namespace) -> int:
    from xlab.import_hf import import_hf_

    out = import_hf_(args.path, args.out, tokenizer=args.tokenizer, force=args.force)
    print(f"imported {args.path} -> {out}")
    return 0


@subcommand(
    "export-hf",
    "write a checkpoint or export as a transformers folder (GPT2LMHeadModel or LlamaForCausalLM + fast tokenizer)",
    arg("path", metavar="CKPT_OR_EXPORT", help="a .ckpt file or an export folder"),
    arg("-o", "--out", required=True, metavar="DIR", help="the folder to write (AutoModelForCausalLM loads it)"),
    arg("--force", action="store_true", help="replace DIR if it exists and is not empty"),
)
def export_hf(args: argparse.Namespace) -> int:
    from xlab.export_hf import export_hf_

    out = export_hf_(args.path, args.out, force=args.force)
    print(f"exported {args.path} -> {out} (transformers: AutoModelForCausalLM / AutoTokenizer.from_pretrained)")
    return 0


@subcommand(
    "build-retrieval",
    "build the RETRO retrieval database of a recipe's corpus (train split) ahead of training",
    arg("-c", "--config", required=True, metavar="YAML", help="a recipe whose data is a RetroDataModule"),
    arg("-o", "--out", metavar="DIR", help="database folder (default: under the corpus cache, where training looks)"),
    arg("--max-len", type=int, metavar="N", help="sequence length (default: the recipe's model max_len)"),
)
def build_retrieval(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from xlab.datamodules.retro import RetroDataModule

    path = Path(args.config)
    if not path.is_file():
        raise XLabError(f"config {path} does not exist.")
    config = yaml.safe_load(path.read_text()) or {}
    data = config.get("data") or {}
    if not str(data.get("class_path", "")).endswith("RetroDataModule"):
        raise XLabError(f"{path} does not use a RetroDataModule (data.class_path): nothing to retrieve from.")
    init_args = dict(data.get("init_args") or {})
    init_args["max_len"] = args.max_len or ((config.get("model") or {}).get("init_args") or {}).get("max_len", 256)
    if args.out:
        init_args["database_dir"] = args.out
    datamodule = RetroDataModule(**init_args)
    datamodule.setup("fit")  # builds the corpus cache and the database if missing, then opens and checks it
    db = datamodule.database
    sizes = db.manifest["sizes"]
    print(f"retrieval database: {db.out_dir}")
    print(f"  {sizes['n_chunks']:,} chunks of {db.chunk_size} tokens from {sizes['n_docs']:,} documents, "
          f"{sizes['n_seqs']:,} training sequences of {db.seq_len} tokens")
    print(f"  embedder {db.manifest['embedder']['spec']['kind']} (dim {sizes['dim']}), "
          f"index {db.manifest['index']['factory']} ({sizes['index_bytes'] / 1e6:.1f} MB), k={db.k}")
    if args.out:
        print(f"train with it: --data.init_args.database_dir {db.out_dir}")
    return 0


@subcommand(
    "build-dataset",
    "read dialogue modules into episodes, filter them, and write one JSONL file (or print a few)",
    arg("-o", "--output-name", metavar="NAME",
        help="file to write, without extension (.jsonl is added; an existing file is never overwritten); "
             "default rev-{git short hash}-args{hash of -m and -f}, rev-nogit-... outside a git checkout"),
    arg("-m", "--modules", metavar="MODULES",
        help="comma-separated module:Class[=PATH[?option=value&...]] (default: every module that needs no "
             "file: chitchat:ChitChat,chatterbot:Chatterbot); e.g. sharegpt:ShareGPT=data/chats.json"),
    arg("-f", "--filters", metavar="FILTERS",
        help="comma-separated filters, name[?option=value&...] (default: duplicates,length,unicode,"
             "near_duplicates; '' for none)"),
    arg("-p", "--print", type=int, metavar="N", dest="print_episodes",
        help="print N episodes instead of writing a file"),
    arg("-v", "--verbose", action="store_true", help="report per-module counts and what the filters removed"),
)
def build_dataset(args: argparse.Namespace) -> int:
    from xlab.dialogue.build import build_dataset as build

    if args.print_episodes is not None and args.print_episodes < 1:
        raise XLabError(f"-p {args.print_episodes}: print at least one episode.")
    modules = [m.strip() for m in args.modules.split(",") if m.strip()] if args.modules else None
    filters = None if args.filters is None else [f.strip() for f in args.filters.split(",") if f.strip()]
    build(modules, filters, args.output_name, args.print_episodes, args.verbose)
    return 0


# --- output --------------------------------------------------------------------------------------
def format_facts(facts: dict[str, Any]) -> str:
    lines = [
        f"{facts['format']}: {facts['path']}",
        f"model: {facts['model']}",
        f"parameters: {facts['parameters']:,}",
        *(f"{what}: {value:,} {unit}".rstrip() for what, unit, value in _state(facts)),
        f"step: {_or_unknown(facts.get('global_step'))}   epoch: {_or_unknown(facts.get('epoch'))}",
        f"validation: {_validation(facts)}",
        f"tokenizer: {_or_unknown(facts.get('tokenizer_size'))} tokens"
        + (f" ({facts['tokenizer_kind']})" if facts.get("tokenizer_kind") else ""),
        f"size on disk: {_megabytes(facts['file_bytes'])}",
        "settings:",
        *(f"  {key}: {value}" for key, value in facts["settings"].items()),
    ]
    if facts.get("generation"):
        lines += ["generation defaults:", *(f"  {k}: {v}" for k, v in facts["generation"].items())]
    return "\n".join(lines)


def _state(facts: dict[str, Any]) -> list[tuple[str, str, int]]:
    """The model's state summary as (what, unit, count): "memory_entries" is memory ... entries."""
    rows = []
    for key, value in facts.get("state", {}).items():
        what, _, unit = key.rpartition("_")
        rows.append((what or key, unit if what else "", value))
    return rows


def _validation(facts: dict[str, Any]) -> str:
    if facts.get("best_score") is None:
        return "unknown (no monitored ModelCheckpoint state)"
    return f"{facts['monitor']} best {facts['best_score']:.4f}, last {_or_unknown(facts.get('current_score'))}"


def _or_unknown(value: Any) -> str:
    if value is None:
        return "unknown"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


# --- entry point ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="manage.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in SUBCOMMANDS.values():
        sub = commands.add_parser(command.name, help=command.help, description=command.help)
        for flags, options in command.arguments:
            sub.add_argument(*flags, **options)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except XLabError as error:
        exit_with(error)


if __name__ == "__main__":
    run_script(main)
