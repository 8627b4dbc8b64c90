"""manage.py's commands that build models: export-checkpoint, import-hf, export-hf (inspect is in describe.py)."""

from __future__ import annotations

import argparse

from xlab.interop.describe import describe, megabytes, state_rows
from xlab.interop.export import export_checkpoint_
from xlab.interop.export_hf import export_hf_
from xlab.interop.import_hf import import_hf_


def export_checkpoint(args: argparse.Namespace) -> int:
    out = export_checkpoint_(args.checkpoint, args.out, force=args.force, keep_memory=not args.empty_memory)
    before, after = describe(args.checkpoint)["file_bytes"], describe(out)
    state = "".join(f", {value:,} {what} {unit}".rstrip() for what, unit, value in state_rows(after))
    print(f"exported {args.checkpoint} -> {out} ({megabytes(after['file_bytes'])}{state}; "
          f"checkpoint {megabytes(before)})")
    return 0


def import_hf(args: argparse.Namespace) -> int:
    out = import_hf_(args.path, args.out, tokenizer=args.tokenizer, force=args.force)
    print(f"imported {args.path} -> {out}")
    return 0


def export_hf(args: argparse.Namespace) -> int:
    out = export_hf_(args.path, args.out, force=args.force)
    print(f"exported {args.path} -> {out} (transformers: AutoModelForCausalLM / AutoTokenizer.from_pretrained)")
    return 0
