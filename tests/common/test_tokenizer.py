import json
import shutil

import pytest

from tests.helpers import WORDS, cut_short_, load_script, one_line_error, tiny
from tests.interop.helpers import write_gpt2_folder_
from xlab.cli import main
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


# --- tokenizer files cut short, through the scripts ------------------------------------------------
@pytest.mark.parametrize("fraction", [0.0, 0.5])
def test_an_export_whose_tokenizer_is_cut_short_is_named(tiny_export, tmp_path, capsys, fraction):
    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    cut_short_(export / "tokenizer.model", fraction)
    for script, args in (("infer", [export, "hello"]), ("manage", ["inspect", export]),
                         ("manage", ["export-hf", export, "-o", tmp_path / "hf"])):
        error = one_line_error(load_script(script).main, args, capsys)
        assert f"{export / 'tokenizer.model'} is not a readable sentencepiece model" in error
    assert not (tmp_path / "hf").exists()


def test_a_corpus_file_that_breaks_the_tokenizer_training_is_named_as_itself(tmp_path, corpus_dir, capsys):
    lines = "".join(json.dumps({"text": p.read_text()}) + "\n" for p in sorted(corpus_dir.glob("*.txt")))
    broken = tmp_path / "docs.jsonl"
    broken.write_text(lines[: len(lines) // 2])  # the last line stops inside its string
    args = ["fit", *tiny(tmp_path, [{"kind": "jsonl", "path": str(broken)}])]
    error = one_line_error(main, args, capsys)
    assert error.startswith(f"error: {broken}:") and "is not valid JSON" in error and "sentencepiece" not in error


def test_a_pretrained_tokenizer_cut_short_is_named(tmp_path, corpus_dir, capsys):
    folder = write_gpt2_folder_(tmp_path / "gpt2", corpus_dir)
    cut_short_(folder / "tokenizer.json", 0.5)
    args = ["fit", *tiny(tmp_path, [{"kind": "text_folder", "path": str(corpus_dir)}]),
            "--data.init_args.tokenizer_path", folder]
    assert f"{folder / 'tokenizer.json'} is not valid JSON" in one_line_error(main, args, capsys)
