"""The synthetic recall source: facts, then questions about them, seeded."""

from __future__ import annotations

import pytest

from xlab.common.errors import XLabError
from xlab.datamodules.sources import build_source
from xlab.datamodules.sources.recall import FACT, QUESTION, RecallSource

SETTINGS = {"documents": 400, "facts": 4, "keys": 64, "values": 8, "seed": 3}


def parse(text: str, word: int = 4) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(facts, questions) as (key, value) pairs from a document's text."""
    facts, questions, i = [], [], 0
    while i < len(text):
        marker, key, value = text[i], text[i + 1:i + 1 + word], text[i + 1 + word:i + 1 + 2 * word]
        (facts if marker == FACT else questions).append((key, value))
        assert marker in (FACT, QUESTION)
        i += 1 + 2 * word
    return facts, questions


def test_documents_state_facts_then_ask_for_them_in_order():
    source = build_source({"kind": "recall", **SETTINGS})
    documents = list(source)
    assert len(documents) == SETTINGS["documents"]
    assert len({d.id for d in documents}) == len(documents)
    for document in documents[:50]:
        facts, questions = parse(document.text)
        assert len(facts) == SETTINGS["facts"] and questions == facts
        keys = [k for k, _ in facts]
        assert len(set(keys)) == len(keys) and all(k.isupper() for k in keys)
        assert all(v.islower() and v in source.values for _, v in facts)
    values = {v for d in documents for _, v in parse(d.text)[0]}
    assert values == set(source.values)  # every value gets used: answers are not guessable by frequency


def test_same_seed_same_documents_other_seed_other_documents():
    first = [d.text for d in RecallSource(**SETTINGS)]
    assert first == [d.text for d in RecallSource(**SETTINGS)]
    other = RecallSource(**{**SETTINGS, "seed": 4})
    assert first != [d.text for d in other]
    assert RecallSource(**SETTINGS).fingerprint() != other.fingerprint()


@pytest.mark.parametrize("setting", [{"facts": 0}, {"facts": 65}, {"values": 1}, {"documents": 0}, {"keys": "many"},
                                     {"keys": 10**6}])
def test_bad_settings_are_one_line_errors(setting):
    with pytest.raises(XLabError, match="recall source"):
        RecallSource(**{**SETTINGS, **setting})
