"""Splits that hold by volume: long documents cut into sections before the split, and the per-split
report of documents, tokens and bytes with a warning when a split's byte share is far off."""

from __future__ import annotations

import json
import random

from tests.helpers import WORDS, write_corpus
from tests.helpers import xlab_data as make
from xlab.datamodules import XLabDataModule
from xlab.datamodules.sections import DEFAULT_SECTION_BYTES, cut, sectioned
from xlab.datamodules.sources import Document
from xlab.datamodules.split_report import add_shares, far_splits
from xlab.datamodules.splits import SPLITS, split_of

FRACTIONS = (0.9, 0.05, 0.025, 0.025)


def prose(paragraphs: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choices(WORDS, k=rng.randint(20, 120))).capitalize() + ".\n\n"
                   for _ in range(paragraphs))


def test_sections_join_back_fit_the_size_and_end_at_paragraphs():
    text = prose(300)
    sections = cut(text, 4096)
    assert "".join(sections) == text and len(sections) > 10
    assert all(len(s.encode()) <= 4096 for s in sections)
    assert all(s.endswith("\n\n") for s in sections)  # every cut is at a paragraph boundary


def test_a_paragraph_or_line_over_the_size_is_cut_at_lines_then_characters():
    one_line = "é" * 5000 + "\n" + "x" * 100  # multi-byte characters: cut between characters, never inside one
    sections = cut(one_line, 1000)
    assert "".join(sections) == one_line
    assert all(len(s.encode()) <= 1000 for s in sections)
    lines = "\n".join(["word " * 30] * 100)  # no blank line anywhere: cut at line ends
    assert all(s.endswith("\n") for s in cut(lines, 1000)[:-1])


def test_only_long_documents_are_cut_and_the_cut_is_stable():
    long, short = Document("big", prose(200)), Document("small", "A short one.")
    stats: dict[str, int] = {}
    out = list(sectioned([short, long], 4096, stats))
    assert out[0] == short  # a document under the size keeps its id, so its split does not move
    assert [d.id for d in out[1:]] == [f"big#{i}" for i in range(len(out) - 1)]
    assert stats == {"documents_cut": 1, "sections": len(out) - 1}
    # The cut depends on the document alone: other documents around it change nothing.
    grown = list(sectioned([Document(f"new{i}", prose(3, i)) for i in range(5)] + [long, short], 4096))
    assert [d for d in grown if d.id.startswith("big#")] == out[1:]
    assert list(sectioned([long], None)) == [long]


def huge_corpus(tmp_path, split: str = "val"):
    """The test corpus plus one document about five times the size of all the others together,
    named so that the hash puts it in `split` (validation: the case that hurt)."""
    folder = write_corpus(tmp_path / "corpus")
    name = next(f"huge{i}.txt" for i in range(1000) if split_of(f"text_folder:huge{i}.txt", FRACTIONS) == split)
    others = sum(f.stat().st_size for f in folder.glob("*.txt"))
    (folder / name).write_text(prose(int(5 * others / 400)), encoding="utf-8")
    return folder, name


def test_one_huge_document_decides_a_split_unless_it_is_cut(tmp_path, capsys):
    folder, name = huge_corpus(tmp_path)
    whole = make(folder, tmp_path / "whole", section_bytes=None).meta
    out, err = capsys.readouterr()
    assert whole["splits"]["val"]["byte_share"] > 0.5  # one document holds most of the corpus, in validation
    assert "the val split holds" in err and "section_bytes" in err  # ... and the build says so
    assert "xlab: val" in out and "documents" in out  # the per-split table

    cut_meta = make(folder, tmp_path / "cut", section_bytes=8192).meta
    err = capsys.readouterr().err
    assert "warning" not in err
    shares = {s: cut_meta["splits"][s]["byte_share"] for s in SPLITS}
    assert shares["val"] < 0.15 and shares["train"] > 0.75, shares  # the huge document no longer decides a split
    sections = cut_meta["sections"]
    assert sections["documents_cut"] == 1 and sections["sections"] > 40 and sections["section_bytes"] == 8192
    for split in SPLITS:  # the meta's numbers are the files' numbers
        entry = cut_meta["splits"][split]
        assert entry["fraction"] == FRACTIONS[SPLITS.index(split)]
        assert entry["documents"] == len(make(folder, tmp_path / "cut", section_bytes=8192).document_ids(split))


def test_sections_of_one_document_spread_over_the_splits_and_decode_back(tmp_path):
    folder, name = huge_corpus(tmp_path)
    dm = make(folder, tmp_path, section_bytes=8192)
    dm.setup()
    pieces = {}
    for split in SPLITS:
        offsets = dm.document_offsets(split)
        for i, doc_id in enumerate(dm.document_ids(split)):
            if doc_id.startswith(f"text_folder:{name}#"):
                pieces[int(doc_id.rsplit("#", 1)[1])] = (split, dm.tokenizer.decode(dm.tokens[split][offsets[i]:offsets[i + 1]]))
    assert len({split for split, _ in pieces.values()}) >= 3
    assert "".join(pieces[i][1] for i in sorted(pieces)) == (folder / name).read_text(encoding="utf-8")


def test_the_default_cuts_above_32_kib_and_the_setting_is_in_the_cache_key(tmp_path):
    assert DEFAULT_SECTION_BYTES == 32 * 1024
    assert XLabDataModule().hparams.section_bytes == DEFAULT_SECTION_BYTES
    folder = write_corpus(tmp_path / "c", documents=2)
    assert make(folder, tmp_path).cache_folder != make(folder, tmp_path, section_bytes=None).cache_folder


def test_byte_shares_far_from_their_fractions_are_named():
    splits = {s: {"documents": 10, "tokens": 0, "bytes": b} for s, b in zip(SPLITS, (900, 50, 25, 25))}
    add_shares(splits, FRACTIONS)
    assert far_splits(splits) == []
    splits["val"]["bytes"] = 900
    add_shares(splits, FRACTIONS)
    assert [line.split()[1] for line in far_splits(splits)] == ["val"]
    json.dumps(splits)  # what goes to meta.json stays plain JSON
