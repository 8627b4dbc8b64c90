"""Facts about a checkpoint or an export without building its model: `manage.py inspect`.

Reads the files with the ground floor only (torch, safetensors, the tokenizers), so it answers in
about a second: no model class is imported, and so neither is Lightning.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from xlab.common.checkpoint import read_checkpoint, saved_class_path, state_summary, tokenizer_bytes, training_info
from xlab.common.errors import XLabError
from xlab.common.export_format import (GENERATION, WEIGHTS, flatten_extra_states, is_extra_state, read_export_config,
                                       read_export_tokenizer, read_json, read_safetensors_shapes, unique_tensors)
from xlab.common.tokenizer import tokenizer_from_bytes


def describe(path: str | Path) -> dict[str, Any]:
    """Format, class, parameter count, the model's state summary, training facts, tokenizer and
    settings of the checkpoint file or export folder at `path`."""
    path = Path(path)
    if path.is_dir():
        return _describe_export(path)
    ckpt = read_checkpoint(path)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    flat, extras = flatten_extra_states(ckpt["state_dict"])
    tensors, _ = unique_tensors({k: v for k, v in flat.items() if not is_extra_state(k, extras)})
    try:
        tokenizer_size = len(tokenizer_from_bytes(tokenizer_bytes(ckpt, str(path))))
    except XLabError:
        tokenizer_size = None
    return {"path": str(path), "format": "checkpoint",
            "model": saved_class_path(ckpt) or "xlab.models.XLabModel (assumed: no class path saved)",
            "parameters": sum(t.numel() for t in tensors.values()), **training_info(ckpt),
            **_state(state_summary(ckpt)), "tokenizer_size": tokenizer_size,
            "settings": {k: v for k, v in hparams.items() if not k.startswith("_")},
            "file_bytes": path.stat().st_size}


def _describe_export(folder: Path) -> dict[str, Any]:
    config = read_export_config(folder)
    extras = config.get("extra_states", {})
    shapes = read_safetensors_shapes(folder / WEIGHTS)
    parameters = sum(_numel(shape) for k, shape in shapes.items() if not is_extra_state(k, extras))
    return {"path": str(folder), "format": "export", "model": config["model"]["class_path"],
            "parameters": parameters, **_state(config.get("state_summary", {})), **config.get("training", {}),
            "tokenizer_size": len(read_export_tokenizer(folder, config)),
            "tokenizer_kind": config["tokenizer"]["kind"], "settings": config["model"]["init_args"],
            "generation": read_json(folder / GENERATION),
            "file_bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())}


def _state(summary: dict[str, int]) -> dict[str, Any]:
    """The model's state summary as facts: each entry at the top level (`memory_entries`), and
    the whole under `state`, so a reader can tell them from the other facts."""
    return {**summary, "state": summary} if summary else {}


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def inspect(args: argparse.Namespace) -> int:
    """manage.py inspect."""
    facts = describe(args.path)
    print(json.dumps(facts, indent=2) if args.json else format_facts(facts))
    return 0


# --- output --------------------------------------------------------------------------------------
def format_facts(facts: dict[str, Any]) -> str:
    lines = [
        f"{facts['format']}: {facts['path']}",
        f"model: {facts['model']}",
        f"parameters: {facts['parameters']:,}",
        *(f"{what}: {value:,} {unit}".rstrip() for what, unit, value in state_rows(facts)),
        f"step: {_or_unknown(facts.get('global_step'))}   epoch: {_or_unknown(facts.get('epoch'))}",
        f"validation: {_validation(facts)}",
        f"tokenizer: {_or_unknown(facts.get('tokenizer_size'))} tokens"
        + (f" ({facts['tokenizer_kind']})" if facts.get("tokenizer_kind") else ""),
        f"size on disk: {megabytes(facts['file_bytes'])}",
        "settings:",
        *(f"  {key}: {value}" for key, value in facts["settings"].items()),
    ]
    if facts.get("generation"):
        lines += ["generation defaults:", *(f"  {k}: {v}" for k, v in facts["generation"].items())]
    return "\n".join(lines)


def state_rows(facts: dict[str, Any]) -> list[tuple[str, str, int]]:
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


def megabytes(size: int) -> str:
    return f"{size / 1e6:.2f} MB"
