"""xlab/interop/spm_to_hf.py: an XLab sentencepiece model as a `tokenizers` fast tokenizer gives the
same ids as sentencepiece, and decodes them to the same text, on varied text: runs of spaces, tabs,
newlines, accents, CJK, emoji and other characters outside the vocabulary (byte fallback), the
data's special tokens, and a few hundred random mixtures of them. A model that normalises its
input, and a unigram model, are refused."""

from __future__ import annotations

import io
import random

import pytest
import sentencepiece as spm_lib

from tests.helpers import WORDS
from xlab.common.errors import XLabError
from xlab.common.tokenizer import Tokenizer
from xlab.interop.spm_to_hf import SPACE, fast_tokenizer_json

tokenizers = pytest.importorskip("tokenizers")

SPECIAL = "<speaker1>"
TEXTS = [
    "", " ", "   ", "\n", "\n\n\n", "\t", " \t \n ",
    "kalo", " kalo", "kalo ", "  kalo  mine  ", "kalo\nmine", "kalo\n\n  mine\t\tru",
    "Grüße, çà et là — naïve café", "日本語のテキスト", "مرحبا بالعالم", "🙂🚀👩‍👩‍👧 ∑∫√",
    "12345 3.14159 2024-01-01", "def f(x):\n    return {'a': [1, 2]}\n", "\u00a0\u2003end\u3000",
    f"{SPECIAL}kalo {SPECIAL} mine{SPECIAL}", f"a\n{SPECIAL}\nb", "\u2581 already a sentencepiece space",
    "x" * 40, "ka" * 25, " " * 17 + "kalo",
]
ODD = ["é", "日", "🙂", "\u00a0", "\t", "\n", "  ", "ß", "∑", "\u2581", "Ω", "ü", "'", "\"", "{", "}", "9", SPECIAL]


@pytest.fixture(scope="module")
def spm() -> Tokenizer:
    lines = [" ".join(WORDS[(i * 7 + j * 13) % len(WORDS)] for j in range(12)) + " fox." for i in range(400)]
    return Tokenizer.train(lines + ["naïve café Grüße 2024"], vocab_size=400, extra_special_tokens=[SPECIAL])


@pytest.fixture(scope="module")
def fast(spm):
    return tokenizers.Tokenizer.from_str(fast_tokenizer_json(spm.to_bytes()))


def mixtures(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        parts = [rng.choice(WORDS) if rng.random() < 0.6 else rng.choice(ODD) for _ in range(rng.randint(1, 12))]
        texts.append("".join(p + rng.choice(["", " ", " ", "  ", "\n", "\t"]) for p in parts))
    return texts


def test_the_same_ids_and_text_as_sentencepiece(spm, fast):
    texts = TEXTS + mixtures(300)
    byte_pieces = 0
    for text in texts:
        ids = spm.encode(text)
        assert fast.encode(text, add_special_tokens=False).ids == ids, repr(text)
        # A literal U+2581 is sentencepiece's space: both read it back as one (the ids agree above).
        assert fast.decode(ids, skip_special_tokens=False) == spm.decode(ids) == text.replace(SPACE, " "), repr(text)
        byte_pieces += sum(spm.id_to_piece(i).startswith("<0x") for i in ids)
    assert byte_pieces > 100  # characters outside the vocabulary were exercised
    assert spm.encode(SPECIAL) == [spm[SPECIAL]] == fast.encode(SPECIAL, add_special_tokens=False).ids


def test_the_vocabulary_and_the_special_tokens_are_sentencepieces(spm, fast):
    vocab = fast.get_vocab(with_added_tokens=True)
    assert len(vocab) == len(spm) and all(vocab[spm.id_to_piece(i)] == i for i in range(len(spm)))
    for piece, index in (("<pad>", spm.pad_id), ("<unk>", spm.unk_id), ("<s>", spm.sos_id), ("</s>", spm.eos_id)):
        assert fast.token_to_id(piece) == index
    assert fast.decode([spm.sos_id, *spm.encode("kalo"), spm.eos_id]) == "kalo"  # specials decode to nothing
    assert fast.encode(" a").tokens[0].startswith(SPACE)  # spaces are written as U+2581, nothing else changes


def raw_model(**settings) -> bytes:
    model = io.BytesIO()
    lines = [" ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(10)) for i in range(300)]
    spm_lib.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=300,
                                       byte_fallback=True, minloglevel=2, **settings)
    return model.getvalue()


@pytest.mark.parametrize("settings", [dict(model_type="bpe"),  # sentencepiece's defaults: NFKC and a dummy prefix
                                      dict(model_type="bpe", normalization_rule_name="identity"),
                                      dict(model_type="bpe", add_dummy_prefix=False)])
def test_a_model_that_normalises_its_input_is_refused(settings):
    with pytest.raises(XLabError, match=r"normalises its input \(a dummy prefix or a normalisation rule\): only XLab's"):
        fast_tokenizer_json(raw_model(**settings))


def test_a_unigram_model_is_refused():
    unigram = Tokenizer.train([" ".join(WORDS[i:i + 9]) for i in range(300)], vocab_size=300, model_type="unigram")
    with pytest.raises(XLabError, match="unigram tokenizer cannot be converted with identical ids: train the model "
                                        "with data tokenizer_type: bpe"):
        fast_tokenizer_json(unigram.to_bytes())
