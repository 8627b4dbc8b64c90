"""xlab/inference/printer.py: StreamPrinter prints the lead, then exactly the text the finished tokens
decode to, cut before a stop string; it decodes only the newest tokens, holds back what may still
become a stop string (never printing what it would have to take back), waits for a character's
last byte, shows only sequence 0, and with strip_leading leaves out the whitespace a reply starts with."""

from __future__ import annotations

import io

import pytest

from xlab.inference import cut_at_stop
from xlab.inference.printer import StreamPrinter


@pytest.fixture(scope="module")
def tokenizer(tiny_export):
    from xlab.interop.export import load

    return load(tiny_export).tokenizer


TEXT = "Document 3. Kalomi n\u00e9e \u65e5\u672c\u8a9e kaloshi done"  # multi-byte characters: byte pieces


@pytest.mark.parametrize("stops", [[], ["ka"], ["\u65e5\u672c", "zz"]])
def test_stream_printer_decodes_only_new_tokens_and_prints_the_same_text(tokenizer, capsys, stops):
    ids = tokenizer.encode(TEXT)
    assert any(tokenizer.id_to_piece(i).startswith("<0x") for i in ids)
    lengths = []

    def decode(tokens):
        lengths.append(len(tokens))
        return tokenizer.decode(tokens)

    printer = StreamPrinter(decode, stops, "P:")
    for token in ids:
        printer(0, token)
        printer(1, token)  # other sequences are not shown
    printer.finish()
    assert capsys.readouterr().out == "P:" + cut_at_stop(tokenizer.decode(ids), stops) + "\n"
    assert max(lengths) <= 5  # the anchor and the bytes of one character, never the whole text


def shown_step_by_step(tokenizer, text: str, stops: list[str], **options) -> tuple[list[str], str]:
    """What the printer has printed after each token, and in the end."""
    out = io.StringIO()
    printer = StreamPrinter(tokenizer.decode, stops, out=out, **options)
    seen = []
    for token in tokenizer.encode(text):
        printer(0, token)
        seen.append(out.getvalue())
    printer.finish()
    return seen, out.getvalue()


@pytest.mark.parametrize("stops", [["User:"], ["ka", "\n\n"], ["\u8a9e k"]])
def test_text_is_held_back_until_it_cannot_become_a_stop_string(tokenizer, stops):
    text = "Kalo nee User says \u65e5\u672c\u8a9e kalo\n\nUser: more kalo"
    seen, final = shown_step_by_step(tokenizer, text, stops)
    assert final == cut_at_stop(text, stops) + "\n"
    assert all(final.startswith(partial) for partial in seen)  # nothing printed is ever taken back
    assert not any(partial.endswith("\ufffd") for partial in seen)  # nor half a character
    held = len(max(stops, key=len)) - 1
    assert len(final) - 1 - len(seen[-1]) <= held  # at most a stop string's length less one waits for finish


def test_after_a_stop_string_nothing_more_is_printed(tokenizer):
    out = io.StringIO()
    printer = StreamPrinter(tokenizer.decode, ["Kalo"], out=out)
    for token in tokenizer.encode("done. Kalo mine Kalo"):
        printer(0, token)
    assert out.getvalue() == "done. " and printer.stopped
    printer(0, tokenizer.encode("x")[0])
    printer.finish()
    assert out.getvalue() == "done. \n"


def test_the_lead_comes_first_even_without_tokens(tokenizer):
    out = io.StringIO()
    printer = StreamPrinter(tokenizer.decode, ["zz"], "Bot: ", out)
    assert out.getvalue() == "Bot: "
    printer.finish()
    assert out.getvalue() == "Bot: \n"
    out = io.StringIO()
    printer = StreamPrinter(tokenizer.decode, [], "The cat", out)
    for token in tokenizer.encode(" kalo"):
        printer(0, token)
    printer.finish()
    assert out.getvalue() == "The cat kalo\n"  # the lead is the prompt: the continuation's space stays


@pytest.mark.parametrize("text", [" kalo mine", "\n \n  kalo  mine \n", "kalo"])
def test_strip_leading_leaves_out_only_the_whitespace_a_reply_starts_with(tokenizer, text):
    _, stripped = shown_step_by_step(tokenizer, text, ["User:"], strip_leading=True)
    assert stripped == text.lstrip() + "\n"
    _, kept = shown_step_by_step(tokenizer, text, ["User:"])
    assert kept == text + "\n"


def test_a_character_cut_off_at_the_end_is_printed_as_decode_gives_it(tokenizer):
    ids = tokenizer.encode("ka \u65e5")
    pieces = [tokenizer.id_to_piece(i) for i in ids]
    assert pieces[-3:] == ["<0xE6>", "<0x97>", "<0xA5>"]  # the character as three byte pieces
    out = io.StringIO()
    printer = StreamPrinter(tokenizer.decode, [], out=out)
    for token in ids[:-1]:
        printer(0, token)
    assert out.getvalue() == "ka "  # its first two bytes wait for the third
    printer.finish()
    assert out.getvalue() == "ka " + tokenizer.decode(ids[:-1])[3:] + "\n" == "ka \ufffd\ufffd\n"  # one per byte
