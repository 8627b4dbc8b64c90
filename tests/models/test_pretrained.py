"""Pretrained tokenizers in the data module and starting weights in XLabModel: same logits as
`transformers` after `init_from` a GPT-2, a Llama or an XLab export; the tokenizer protocol on a
byte-level BPE; and every bad input as a one-line error that names the problem."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.helpers import xlab_data
from tests.interop.helpers import END, write_gpt2_folder_
from xlab import inference
from xlab.common.errors import XLabError
from xlab.common.pretrained_tokenizer import PretrainedTokenizer
from xlab.common.tokenizer import tokenizer_from_bytes
from xlab.models import XLabModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

TEXT = "  Grüße,\tçà —\n\n 日本語 🙂🚀 x  "


@pytest.fixture(scope="module")
def gpt2(corpus_dir, tmp_path_factory):
    return write_gpt2_folder_(tmp_path_factory.mktemp("pretrained") / "gpt2", corpus_dir, initializer_range=0.2)


def llama_folder_(folder, vocab_size=64, **overrides):
    config = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, initializer_range=0.2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**config, **overrides})).eval()
    model.save_pretrained(folder)
    return model


def test_pretrained_tokenizer_keeps_the_protocol(gpt2):
    tok = PretrainedTokenizer.from_folder(gpt2, ["<speaker1>", "<style>"])
    assert len(tok) == tok.base_size + 2 and tok.added_tokens == 2
    assert tok.eos_token == tok.sos_token == tok.pad_token == tok.unk_token == END
    assert tok.sos_id == tok.eos_id == tok.pad_id == tok.unk_id == tok[END]
    assert tok.encode("a <speaker1>b") [-2:] == [tok["<speaker1>"], tok["b"]]
    assert tok.decode([tok.sos_id, *tok.encode(TEXT), tok.eos_id]) == TEXT  # specials decode to nothing
    assert tok.encode_batch([TEXT, "b"]) == [tok.encode(TEXT), tok.encode("b")]
    assert tok.id_to_piece(tok["<style>"]) == "<style>"
    sizes = tok.token_bytes()
    assert sizes[tok.eos_id] == 0 and int(sizes[tok.encode(TEXT)].sum()) == len(TEXT.encode("utf-8"))
    again = tokenizer_from_bytes(tok.to_bytes())
    assert isinstance(again, PretrainedTokenizer) and again.encode(TEXT) == tok.encode(TEXT)
    assert again.base_size == tok.base_size and b"pickle" not in tok.to_bytes()[:20]
    with pytest.raises(KeyError):
        tok["<not a token>"]


def test_data_module_uses_the_pretrained_tokenizer(gpt2, corpus_dir, tmp_path):
    data = xlab_data(corpus_dir, tmp_path, tokenizer_path=str(gpt2), special_tokens=["<speaker1>"])
    tok = data.make_tokenizer([])
    assert isinstance(tok, PretrainedTokenizer) and len(tok) == data.vocab_size and data.added_tokens == 1
    assert (data.sos_id, data.eos_id, data.pad_id) == (tok.sos_id, tok.eos_id, tok.pad_id)
    data.setup("fit")
    state = data.state_dict()
    restored = xlab_data(corpus_dir, tmp_path / "other")
    restored.load_state_dict(state)
    assert restored.tokenizer.encode(TEXT) == tok.encode(TEXT)
    trained = xlab_data(corpus_dir, tmp_path, special_tokens=["<speaker1>"])
    spm = trained.make_tokenizer(p.read_text() for p in sorted(corpus_dir.glob("*.txt")))
    assert len(spm) == trained.vocab_size and spm.encode("<speaker1>") == [spm["<speaker1>"]]
    assert trained.cache_folder != data.cache_folder and trained.added_tokens == 0


@pytest.mark.parametrize("kind", ["gpt2", "llama", "llama-gqa", "export", "checkpoint"])
def test_init_from_gives_the_folders_logits(kind, gpt2, tmp_path):
    from xlab.interop.export import SPM_TOKENIZER, write_export_

    if kind == "gpt2":
        folder, hf = gpt2, transformers.AutoModelForCausalLM.from_pretrained(gpt2).eval()
        vocab = hf.config.vocab_size
    elif kind.startswith("llama"):
        folder = tmp_path / kind
        hf, vocab = llama_folder_(folder, num_attention_heads=4, num_key_value_heads=2 if kind == "llama-gqa" else 4), 64
    else:  # an XLab export, or a checkpoint (.ckpt) as a Trainer saves it: weights and hyperparameters
        folder, vocab = tmp_path / kind, 64
        source = XLabModel(vocab_size=vocab, max_len=32, n_layer=1, n_head=2, n_embd=16, positions="rotary",
                           norm="rmsnorm", activation="swiglu", bias=False)
        if kind == "export":
            write_export_(folder, source, {SPM_TOKENIZER: b""}, "sentencepiece", {})
        else:
            folder = tmp_path / "source.ckpt"
            torch.save({"state_dict": source.state_dict(), "hyper_parameters": dict(source.hparams)}, folder)
    model = XLabModel(vocab_size=vocab, max_len=24, init_from=str(folder)).eval()
    tokens = torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(0))
    reference = hf(tokens).logits if kind.startswith(("gpt2", "llama")) else source(tokens)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference, atol=1e-5, rtol=1e-5)
    own = kind in ("export", "checkpoint")
    assert model.hparams.init_from is None and model.hparams.n_layer == (1 if own else 2)
    assert model.hparams.n_kv_head == (2 if kind == "llama-gqa" else None)
    if not own:  # the KV cache holds the folder's key/value heads, and decoding agrees
        prompt = tokens[0, :4]
        mine = inference.sample(model, prompt, output_length=8, temperature=0).tolist()
        theirs = hf.generate(prompt[None], attention_mask=torch.ones(1, 4, dtype=torch.long), do_sample=False,
                             max_new_tokens=8, min_new_tokens=8, eos_token_id=None, pad_token_id=0)
        assert mine == theirs[0, 4:].tolist()


def test_added_tokens_grow_the_embedding_with_mean_rows(tmp_path):
    llama_folder_(tmp_path / "llama")
    model = XLabModel(vocab_size=66, added_tokens=2, max_len=16, init_from=str(tmp_path / "llama"))
    wte, head = model.transformer.wte.weight, model.lm_head.weight
    assert wte.shape[0] == head.shape[0] == 66
    torch.testing.assert_close(wte[64], wte[:64].mean(0))
    torch.testing.assert_close(head[65], head[:64].mean(0))


def test_bad_inputs_are_one_line_errors(gpt2, tmp_path):
    def fails(match, **settings):
        with pytest.raises(XLabError, match=match):
            XLabModel(**{"vocab_size": 64, "max_len": 16, **settings})

    llama_folder_(tmp_path / "llama")
    fails(r"tokenizer has 70 tokens but the pretrained model .* has 64", vocab_size=70, init_from=str(tmp_path / "llama"))
    fails(r"has 64 plus 2 added special tokens", vocab_size=65, added_tokens=2, init_from=str(tmp_path / "llama"))
    fails(r"contradicts the model settings n_layer=3 \(the folder has 2\), positions='sinusoidal' \(the folder "
          r"has 'rotary'\): remove them", n_layer=3, positions="sinusoidal", init_from=str(tmp_path / "llama"))
    fails("max_len=100 exceeds the 64 positions", max_len=100, init_from=str(tmp_path / "llama"))

    (tmp_path / "empty").mkdir()
    fails(r"missing config.json; model.safetensors .*save_pretrained", init_from=str(tmp_path / "empty"))
    llama_folder_(tmp_path / "gelu", hidden_act="gelu")
    fails(r"cannot express hidden_act='gelu' \(only silu", init_from=str(tmp_path / "gelu"))
    transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32).save_pretrained(tmp_path / "bert")
    torch.save({}, tmp_path / "bert" / "pytorch_model.bin")
    fails(r"'bert' model .*supported architectures are GPT-2 \(gpt2\), Llama \(llama\), Qwen3", init_from=str(tmp_path / "bert"))

    # Pickled weights: tensors load with weights_only=True, anything else is refused.
    pickled = tmp_path / "pickled"
    hf = llama_folder_(pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(hf.state_dict(), pickled / "pytorch_model.bin")
    XLabModel(vocab_size=64, max_len=16, init_from=str(pickled))
    torch.save({"weights": hf.state_dict(), "note": object.__new__(EvilNote)}, pickled / "pytorch_model.bin")
    fails(r"pytorch_model.bin cannot be loaded safely \(weights_only=True refused it", init_from=str(pickled))

    with pytest.raises(XLabError, match="is missing tokenizer.json, vocab.json, merges.txt"):
        PretrainedTokenizer.from_folder(tmp_path / "llama")
    no_eos = tmp_path / "no-eos"
    no_eos.mkdir()
    (no_eos / "tokenizer.json").write_bytes((gpt2 / "tokenizer.json").read_bytes())
    (no_eos / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    with pytest.raises(XLabError, match="has no eos_token"):
        PretrainedTokenizer.from_folder(no_eos)


class EvilNote:
    """A class a pickle would have to import and run: safe loading refuses it."""


def test_memory_gpt2_starts_from_the_folder_with_its_tokenizer(gpt2):
    from xlab.memory import MemoryGPT2

    tok = PretrainedTokenizer.from_folder(gpt2, ["<speaker1>"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(gpt2).eval()
    model = MemoryGPT2(vocab_size=len(tok), added_tokens=tok.added_tokens, pretrained_path=str(gpt2), n_layer=2,
                       n_head=2, n_embd=32, max_len=16, use_memory=False).eval()
    tokens = torch.tensor([[tok.sos_id, *tok.encode("Document 1. Kalo <speaker1>")]])
    with torch.no_grad():
        logits = model(tokens)
        assert logits.shape[-1] == len(tok) == hf.config.vocab_size + 1
        torch.testing.assert_close(logits[0, :3, :-1], hf(tokens[:, :3]).logits[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(XLabError, match="vocab_size=400.*the model asks for vocab_size=4096"):
        MemoryGPT2(vocab_size=4096, pretrained_path=str(gpt2), n_layer=2, n_head=2, n_embd=32, max_len=16)
