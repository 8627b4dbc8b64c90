import pytest

from tests.helpers import WORDS
from xlab.common.errors import XLabError
from xlab.common.tokenizer import EOS_ID, PAD_ID, SOS_ID, UNK_ID, Tokenizer

AWKWARD = [
    "  leading spaces, double  spaces and trailing   ",
    "tabs\tand\nnewlines\n\n\nand a carriage\r\nreturn",
    "ünïcödé, 日本語のテキスト, emoji 🙂🚀, math ∑∫√",
    "code: def f(x):\n    return {'a': [1, 2, 3]}  # comment",
    "",
    " ",
    "\n",
]


@pytest.fixture(scope="module")
def tokenizer():
    lines = [" ".join(WORDS[(i * 7 + j * 13) % len(WORDS)] for j in range(12)) + " fox" for i in range(400)]
    return Tokenizer.train(lines, vocab_size=400, extra_special_tokens=["<speaker1>"])


@pytest.mark.parametrize("text", AWKWARD)
def test_round_trip_is_lossless(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_tokens_have_fixed_ids_and_decode_to_nothing(tokenizer):
    assert (tokenizer[tokenizer.pad_token], tokenizer[tokenizer.unk_token]) == (PAD_ID, UNK_ID)
    assert (tokenizer[tokenizer.sos_token], tokenizer[tokenizer.eos_token]) == (SOS_ID, EOS_ID)
    ids = [SOS_ID, *tokenizer.encode("fox"), EOS_ID]
    assert tokenizer.decode(ids) == "fox"


def test_extra_special_token_is_one_piece(tokenizer):
    assert tokenizer.encode("<speaker1>") == [tokenizer["<speaker1>"]]


def test_unknown_piece_raises_key_error(tokenizer):
    with pytest.raises(KeyError):
        tokenizer["<never-seen>"]


def test_bytes_round_trip(tokenizer):
    clone = Tokenizer(tokenizer.to_bytes())
    assert len(clone) == len(tokenizer) == 400
    assert clone.encode(AWKWARD[2]) == tokenizer.encode(AWKWARD[2])


def test_token_bytes_sum_to_utf8_length(tokenizer):
    sizes = tokenizer.token_bytes()
    for text in AWKWARD:
        assert sizes[tokenizer.encode(text)].sum() == len(text.encode("utf-8"))


def test_unigram_may_stop_below_the_asked_size():
    lines = [f"alpha beta gamma {i}" for i in range(200)]
    tok = Tokenizer.train(lines, vocab_size=2000, model_type="unigram")
    assert 16 < len(tok) <= 2000
    assert tok.decode(tok.encode("alpha  beta\n")) == "alpha  beta\n"


def test_vocab_too_large_for_corpus_is_a_clear_error():
    with pytest.raises(XLabError, match="cannot support a vocabulary of 5000"):
        Tokenizer.train(["tiny corpus"] * 3, vocab_size=5000)


def test_empty_training_text_is_a_clear_error():
    with pytest.raises(XLabError, match="no text"):
        Tokenizer.train(["", "   "], vocab_size=300)
