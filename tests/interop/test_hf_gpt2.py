"""XLabModel configured as GPT-2 against `transformers` GPT2LMHeadModel on the same random weights:
logits, greedy decoding and beam search must agree exactly; import-hf writes a usable export."""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers import TOKENIZER_SIZE, cut_short_, load_script, one_line_error
from xlab import inference
from xlab.common.errors import XLabError
from xlab.common.pretrained_tokenizer import PretrainedTokenizer
from xlab.interop.hf_gpt2 import xlab_from_gpt2

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

EOS = 2


def gpt2_config(**overrides):
    # initializer_range 0.2 (GPT-2 uses 0.02) makes the logits far from uniform, so greedy and
    # beam choices are not near-ties that rounding could flip between implementations.
    settings = dict(vocab_size=64, n_layer=2, n_head=2, n_embd=32, n_positions=64, bos_token_id=1,
                    eos_token_id=EOS, pad_token_id=0, initializer_range=0.2)
    return transformers.GPT2Config(**{**settings, **overrides})


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(gpt2_config()).eval()
    return hf, xlab_from_gpt2(hf)


def prompts(count: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 9, (count,), generator=generator).tolist()
    return [torch.randint(3, 64, (n,), generator=generator) for n in lengths]


def hf_generate(hf, prompt: torch.Tensor, **options) -> list[list[int]]:
    """New tokens of each returned sequence, cut at the first eos like ours."""
    out = hf.generate(prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      do_sample=False, pad_token_id=0, eos_token_id=EOS, **options)
    sequences = []
    for row in out[:, len(prompt):].tolist():
        sequences.append(row[: row.index(EOS)] if EOS in row else row)
    return sequences


def test_logits_match_transformers(pair):
    hf, ours = pair
    tokens = torch.randint(0, 64, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf(tokens).logits)


def test_untied_head_maps_too():
    torch.manual_seed(1)
    hf = transformers.GPT2LMHeadModel(gpt2_config(tie_word_embeddings=False)).eval()
    ours = xlab_from_gpt2(hf)
    assert not ours.hparams.tie_weights and ours.lm_head.weight is not ours.transformer.wte.weight
    tokens = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf(tokens).logits)


@pytest.mark.parametrize("options", [
    dict(),
    dict(min_length=6),
    dict(repetition_penalty=1.5, no_repeat_ngram_size=2),
])
def test_greedy_matches_generate(pair, options):
    hf, ours = pair
    hf_options = {"repetition_penalty": 1.0, **options}
    hf_options["min_new_tokens"] = hf_options.pop("min_length", 0)
    for prompt in prompts(6):
        mine = inference.sample(ours, prompt, output_length=16, eos_class=EOS, temperature=0, **options)
        assert [mine.tolist()] == hf_generate(hf, prompt, max_new_tokens=16, **hf_options)


@pytest.mark.parametrize("beams,length_penalty,early_stopping", [
    (2, 1.0, False), (3, 0.6, True), (4, 2.0, "never"), (3, -0.5, False), (5, 1.0, True),
])
def test_beam_search_matches_generate(pair, beams, length_penalty, early_stopping):
    hf, ours = pair
    for prompt in prompts(6, seed=beams):
        mine = inference.beam_search(ours, prompt, output_length=14, eos_class=EOS, num_beams=beams,
                                     length_penalty=length_penalty, early_stopping=early_stopping,
                                     num_return=2, min_length=1, no_repeat_ngram_size=3)
        reference = hf_generate(hf, prompt, num_beams=beams, length_penalty=length_penalty,
                                early_stopping=early_stopping, num_return_sequences=2, max_new_tokens=14,
                                min_new_tokens=1, no_repeat_ngram_size=3)
        assert [m.tolist() for m in mine] == reference


def test_unsupported_gpt2_settings_are_refused():
    hf = transformers.GPT2LMHeadModel(gpt2_config(activation_function="relu"))
    with pytest.raises(XLabError, match="activation_function"):
        xlab_from_gpt2(hf)


def write_hf_folder_(folder, vocab_size: int = 300):
    """A GPT-2 folder as save_pretrained writes it, with a byte-level BPE trained here."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["the cat sat on the mat", "dogs ran over the hills"] * 20, vocab_size=vocab_size,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer = transformers.GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                               eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    end = tokenizer.eos_token_id
    torch.manual_seed(2)
    hf = transformers.GPT2LMHeadModel(gpt2_config(vocab_size=len(tokenizer), bos_token_id=end, eos_token_id=end,
                                                  pad_token_id=None)).eval()
    hf.save_pretrained(folder)
    return hf


def test_import_hf_writes_an_export_with_the_gpt2_tokenizer(tmp_path):
    from xlab.interop.export import load

    hf = write_hf_folder_(tmp_path / "gpt2")
    load_script("manage").main(["import-hf", str(tmp_path / "gpt2"), "-o", str(tmp_path / "export")])
    loaded = load(tmp_path / "export")
    assert isinstance(loaded.tokenizer, PretrainedTokenizer)
    text = "the cat  sat, on é!"
    assert loaded.tokenizer.decode(loaded.tokenizer.encode(text)) == text
    assert loaded.tokenizer[loaded.tokenizer.eos_token] == loaded.generation.eos_class == hf.config.eos_token_id
    tokens = torch.tensor([loaded.tokenizer.encode("the dogs sat")])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(tokens), hf(tokens).logits)


def test_import_hf_needs_tokenizer_files_or_a_sentencepiece_model(tmp_path):
    hf = transformers.GPT2LMHeadModel(gpt2_config())
    hf.save_pretrained(tmp_path / "bare")
    from xlab.interop.import_hf import import_hf_

    with pytest.raises(XLabError, match="no tokenizer files"):
        import_hf_(tmp_path / "bare", tmp_path / "out")
    with pytest.raises(XLabError, match="not a transformers model directory"):
        import_hf_(tmp_path / "missing", tmp_path / "out")


def test_import_hf_with_a_sentencepiece_tokenizer(tmp_path, tiny_export):
    from xlab.datamodules import Tokenizer
    from xlab.interop.export import load
    from xlab.interop.import_hf import import_hf_

    spm = tiny_export / "tokenizer.model"
    transformers.GPT2LMHeadModel(gpt2_config()).save_pretrained(tmp_path / "small")
    with pytest.raises(XLabError, match=f"{TOKENIZER_SIZE} tokens but the model only 64"):
        import_hf_(tmp_path / "small", tmp_path / "out", tokenizer=spm)
    transformers.GPT2LMHeadModel(gpt2_config(vocab_size=TOKENIZER_SIZE)).save_pretrained(tmp_path / "matching")
    out = import_hf_(tmp_path / "matching", tokenizer=spm)
    assert out == tmp_path / "matching-xlab"
    loaded = load(out)
    assert isinstance(loaded.tokenizer, Tokenizer) and loaded.tokenizer.to_bytes() == spm.read_bytes()


def test_import_hf_refuses_a_tokenizer_cut_short_and_an_export(tmp_path, tiny_export, capsys):
    write_hf_folder_(tmp_path / "gpt2")
    cut_short_(tmp_path / "gpt2" / "tokenizer.json", 0.5)
    manage = load_script("manage").main
    error = one_line_error(manage, ["import-hf", tmp_path / "gpt2", "-o", tmp_path / "export"], capsys)
    assert "tokenizer.json is not valid JSON" in error and not (tmp_path / "export").exists()
    error = one_line_error(manage, ["import-hf", tiny_export, "-o", tmp_path / "export"], capsys)
    assert "is an XLab export already" in error
