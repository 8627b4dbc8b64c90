"""`manage.py export-hf`: tiny random XLab models, GPT-2-, Llama-, Qwen3- and Arcee-shaped, loaded back by
`transformers` give the same logits (1e-5, fp32) and greedy tokens; the converted sentencepiece
tokenizer encodes awkward text to XLab's ids; what cannot be expressed is refused by name."""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers import WORDS, load_script, sharp_model
from xlab import inference
from xlab.common.errors import XLabError
from xlab.common.export_format import SPM_TOKENIZER
from xlab.common.tokenizer import Tokenizer
from xlab.interop.export import load, write_export_

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

VOCAB = 400
SHAPES = {
    "gpt2": dict(positions="learned", norm="layernorm", activation="gelu", bias=True, tie_weights=True),
    "llama": dict(positions="rotary", norm="rmsnorm", activation="swiglu", bias=False, tie_weights=False,
                  norm_eps=1e-6, rope_base=500.0),
    "llama-gqa": dict(positions="rotary", norm="rmsnorm", activation="swiglu", bias=False, n_kv_head=1),
    "qwen3": dict(positions="rotary", norm="rmsnorm", activation="swiglu", bias=False, qk_norm=True),
    "arcee": dict(positions="rotary", norm="rmsnorm", activation="relu2", bias=False),
}
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "llama-gqa": "LlamaForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "arcee": "ArceeForCausalLM"}
AWKWARD = ("  Grüße,\tçà et là —\n\n  日本語のテキスト، مرحبا بالعالم   🙂🚀👩‍👩‍👧 ∑∫√ 12345\r\n"
           "    def f(x):\n        return {'a': [1, 2]}  \u00a0\u2003end  ")


@pytest.fixture(scope="module")
def spm() -> Tokenizer:
    lines = [" ".join(WORDS[(i * 7 + j * 13) % len(WORDS)] for j in range(12)) + " fox." for i in range(400)]
    return Tokenizer.train(lines, vocab_size=VOCAB, extra_special_tokens=["<speaker1>"])


def export_of(tmp_path, spm, shape: str):
    model = sharp_model(vocab_size=VOCAB, max_len=32, **SHAPES[shape])
    folder = write_export_(tmp_path / f"{shape}-xlab", model, {SPM_TOKENIZER: spm.to_bytes()}, "sentencepiece", {})
    out = tmp_path / f"{shape}-hf"
    assert load_script("manage").main(["export-hf", str(folder), "-o", str(out)]) == 0
    return model, out


@pytest.mark.parametrize("shape", sorted(ARCHITECTURES))
def test_round_trip_logits_and_greedy_tokens(tmp_path, spm, shape):
    model, out = export_of(tmp_path, spm, shape)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == ARCHITECTURES[shape]
    tokens = torch.randint(0, VOCAB, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, model(tokens), atol=1e-5, rtol=1e-5)
    for prompt in tokens[:, :5]:
        mine = inference.sample(model, prompt, output_length=12, temperature=0).tolist()
        theirs = hf.generate(prompt[None], attention_mask=torch.ones(1, 5, dtype=torch.long), do_sample=False,
                             max_new_tokens=12, min_new_tokens=12, eos_token_id=None, pad_token_id=0)
        assert mine == theirs[0, 5:].tolist()


def test_converted_tokenizer_gives_the_same_ids(tmp_path, spm):
    _, out = export_of(tmp_path, spm, "gpt2")
    hf = transformers.AutoTokenizer.from_pretrained(out)
    for text in (AWKWARD, AWKWARD + " <speaker1> fox", "\n".join(WORDS[:200])):
        ids = spm.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids
        assert hf.decode(ids) == spm.decode(ids) == text
    assert (hf.eos_token_id, hf.bos_token_id, hf.pad_token_id) == (spm.eos_id, spm.sos_id, spm.pad_id)


def test_inexpressible_models_and_targets_are_refused(tmp_path, spm):
    from xlab.interop.export_hf import export_hf_

    for settings, named in ((dict(positions="sinusoidal"), "positions='sinusoidal'"),
                            (dict(norm_position="post"), "norm_position='post'"),
                            (dict(positions="learned", activation="swiglu"), "activation='swiglu'"),
                            (dict(n_kv_head=1), "n_kv_head=1 cannot be exported as GPT-2")):
        model = sharp_model(vocab_size=VOCAB, **settings)
        folder = write_export_(tmp_path / "odd", model, {SPM_TOKENIZER: spm.to_bytes()}, "sentencepiece", {},
                               force=True)
        with pytest.raises(XLabError, match=named):
            export_hf_(folder, tmp_path / "odd-hf")
    _, out = export_of(tmp_path, spm, "gpt2")
    with pytest.raises(XLabError, match="not empty: pass --force"):
        export_hf_(tmp_path / "gpt2-xlab", out)
    assert export_hf_(tmp_path / "gpt2-xlab", out, force=True) == out
    unigram = Tokenizer.train([" ".join(WORDS[i:i + 9]) for i in range(300)], vocab_size=VOCAB, model_type="unigram")
    folder = write_export_(tmp_path / "uni", sharp_model(vocab_size=len(unigram)), {SPM_TOKENIZER: unigram.to_bytes()},
                           "sentencepiece", {})
    with pytest.raises(XLabError, match="unigram"):
        export_hf_(folder, tmp_path / "uni-hf")


def test_memory_gpt2_exports_only_without_a_memory(tmp_path, spm):
    from xlab.interop.export_hf import export_hf_
    from xlab.memory import MemoryGPT2

    settings = dict(vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=32, max_len=16)
    plain = MemoryGPT2(use_memory=False, **settings).eval()
    folder = write_export_(tmp_path / "plain", plain, {SPM_TOKENIZER: spm.to_bytes()}, "sentencepiece", {})
    hf = transformers.AutoModelForCausalLM.from_pretrained(export_hf_(folder, tmp_path / "plain-hf")).eval()
    tokens = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, plain(tokens), atol=1e-5, rtol=1e-5)
    remembering = MemoryGPT2(use_memory=True, memory_size=64, **settings)
    folder = write_export_(tmp_path / "memory", remembering, {SPM_TOKENIZER: spm.to_bytes()}, "sentencepiece", {})
    with pytest.raises(XLabError, match="a MemoryGPT2 with a memory cannot be exported"):
        export_hf_(folder, tmp_path / "memory-hf")


def test_the_default_model_continues_a_prompt_in_transformers_as_in_infer(cli_checkpoint, tmp_path, capsys):
    """The default recipe's checkpoint, exported: `tok(prompt)` starts with `<s>` as XLab's training
    and infer.py do, so generate and the text-generation pipeline give infer.py's greedy text."""
    out = tmp_path / "hf"
    assert load_script("manage").main(["export-hf", str(cli_checkpoint), "-o", str(out)]) == 0
    capsys.readouterr()
    prompt = "Document 3. Kalo"
    assert load_script("infer").main([str(cli_checkpoint), prompt, "--greedy", "--limit", "10", "--device", "cpu"]) == 0
    expected = capsys.readouterr().out.rstrip("\n")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    xlab_tokenizer = load(cli_checkpoint).tokenizer
    assert tokenizer(prompt).input_ids == [xlab_tokenizer.sos_id, *xlab_tokenizer.encode(prompt)]
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    generated = model.generate(ids, do_sample=False, max_new_tokens=10)
    assert prompt + tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True) == expected
    pipe = transformers.pipeline("text-generation", model=model, tokenizer=tokenizer)
    assert pipe(prompt, do_sample=False, max_new_tokens=10)[0]["generated_text"] == expected
