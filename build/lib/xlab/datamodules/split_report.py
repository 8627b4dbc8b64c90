"""What each split holds once the cache is built: documents, tokens, bytes, and a warning when
its share of the bytes is far from the fraction it was asked for.

The split is by document hash, so a few very large documents can pull a split's volume far from
its fraction (validation measuring mostly one file and costing as much as training); the report
makes that visible at build time, and `meta.json` keeps the same numbers.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from xlab.datamodules.splits import SPLITS

# A split is warned about when it holds over twice its fraction of the bytes and at least five
# points of the corpus more: then a few documents decide it. Small corpora (and sections, which
# are large next to short documents) move small splits by a few points without anything wrong;
# a split that holds too little is the mirror of one that holds too much, which is named.
FAR = 2.0
SLACK = 0.05


def add_shares(splits: dict[str, dict[str, Any]], fractions: Sequence[float]) -> None:
    """Record each split's fraction and share of the bytes in its entry (for meta.json)."""
    total = sum(s["bytes"] for s in splits.values()) or 1
    for name, fraction in zip(SPLITS, fractions):
        splits[name]["fraction"] = fraction
        splits[name]["byte_share"] = round(splits[name]["bytes"] / total, 6)


def far_splits(splits: dict[str, dict[str, Any]]) -> list[str]:
    """Warnings, one line each, for splits whose byte share is far from their fraction."""
    out = []
    for name, s in splits.items():
        share, fraction = s["byte_share"], s["fraction"]
        if share <= FAR * fraction or share - fraction < SLACK:
            continue
        out.append(f"the {name} split holds {share:.1%} of the corpus's bytes for a fraction of {fraction:.1%} "
                   f"({s['documents']} documents): a few large documents decide it; lower data.section_bytes "
                   "so long documents are cut into sections, or change data.split_salt.")
    return out


def report_splits(splits: dict[str, dict[str, Any]], fractions: Sequence[float], sections: dict[str, int] | None = None,
                  out=None, err=None) -> list[str]:
    """Print the per-split table and any warnings; returns the warnings."""
    out, err = out or sys.stdout, err or sys.stderr
    add_shares(splits, fractions)
    print(f"xlab: {'split':<8} {'documents':>10} {'tokens':>13} {'bytes':>14}  bytes (asked)", file=out)
    for name, s in splits.items():
        print(f"xlab: {name:<8} {s['documents']:>10,} {s['tokens']:>13,} {s['bytes']:>14,}  "
              f"{s['byte_share']:6.1%} ({s['fraction']:.1%})", file=out)
    if sections and sections.get("documents_cut"):
        print(f"xlab: {sections['documents_cut']:,} documents over {sections['section_bytes']:,} bytes were cut "
              f"into {sections['sections']:,} sections", file=out)
    warnings = far_splits(splits)
    for line in warnings:
        print(f"xlab: warning: {line}", file=err)
    out.flush()
    return warnings
