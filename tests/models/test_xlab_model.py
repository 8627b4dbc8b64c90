import itertools
import math

import pytest
import torch

from xlab.common.errors import XLabError
from xlab.models import XLabModel

SWITCHES = list(itertools.product(["learned", "sinusoidal", "rotary"], ["gelu", "swiglu"],
                                  ["layernorm", "rmsnorm"], ["pre", "post"]))


def tiny(**kwargs) -> XLabModel:
    torch.manual_seed(0)
    return XLabModel(**{"vocab_size": 97, "max_len": 32, "n_layer": 2, "n_head": 4, "n_embd": 32, **kwargs}).eval()


@pytest.mark.parametrize("positions, activation, norm, norm_position", SWITCHES)
def test_kv_cache_matches_full_recomputation(positions, activation, norm, norm_position):
    model = tiny(positions=positions, activation=activation, norm=norm, norm_position=norm_position)
    tokens = torch.randint(0, 97, (3, 24))
    full = model(tokens)
    cache = model.new_cache(3)
    pieces = [model(tokens[:, :10], cache=cache), model(tokens[:, 10:13], cache=cache)]
    pieces += [model(tokens[:, i:i + 1], cache=cache) for i in range(13, 24)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-4)
    assert cache.length == 24


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_left_padding_does_not_change_the_real_tokens(positions):
    model = tiny(positions=positions)
    tokens = torch.randint(4, 97, (1, 12))
    reference = model(tokens)
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), tokens], 1)
    real = torch.cat([torch.zeros(1, 5, dtype=torch.bool), torch.ones(1, 12, dtype=torch.bool)], 1)
    out = model(padded, positions=(real.cumsum(1) - 1).clamp(min=0), padding_mask=real)
    torch.testing.assert_close(out[:, 5:], reference, atol=1e-5, rtol=1e-4)


def test_causality_future_tokens_change_no_past_logit():
    model = tiny(positions="rotary")
    tokens = torch.randint(0, 97, (1, 20))
    changed = tokens.clone()
    changed[0, 12:] = (changed[0, 12:] + 1) % 97
    torch.testing.assert_close(model(tokens)[:, :12], model(changed)[:, :12])
    assert not torch.allclose(model(tokens)[:, 12:], model(changed)[:, 12:])


def test_tied_head_shares_the_embedding_and_untied_does_not():
    tied = tiny()
    assert tied.lm_head.weight is tied.transformer.wte.weight
    untied = tiny(tie_weights=False)
    assert untied.lm_head.weight is not untied.transformer.wte.weight


def test_initial_loss_is_near_uniform():
    model = tiny()
    tokens = torch.randint(0, 97, (4, 33))
    loss, stats = model.loss_and_stats({"input_ids": tokens[:, :-1], "labels": tokens[:, 1:],
                                        "num_bytes": torch.full((4,), 64)})
    assert abs(loss.item() - math.log(97)) < 0.3
    assert stats["tokens"] == 128


def test_no_weight_decay_on_norms_biases_and_embeddings():
    model = tiny(positions="learned")
    decay, no_decay = model.parameter_groups(0.1)
    decayed = {id(p) for p in decay["params"]}
    assert id(model.transformer.wte.weight) not in decayed and id(model.transformer.wpe.weight) not in decayed
    assert id(model.transformer.h[0].attn.c_attn.weight) in decayed
    assert id(model.transformer.h[0].attn.c_attn.bias) not in decayed
    assert id(model.transformer.h[0].ln_1.weight) not in decayed
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_sequences_beyond_max_len_are_refused():
    with pytest.raises(ValueError, match="max_len"):
        tiny()(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("kwargs", [{"n_embd": 30, "n_head": 4}, {"n_embd": 36, "n_head": 4, "positions": "rotary"}])
def test_bad_shapes_are_clear_errors(kwargs):
    with pytest.raises(XLabError):
        tiny(**kwargs)


def test_loading_a_checkpoint_of_another_model_kind_is_refused(tmp_path):
    model = tiny()
    path = tmp_path / "other.ckpt"
    hparams = {**model.hparams, "_class_path": "xlab.models.LanguageModelThatDoesNotExist"}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams}, path)
    with pytest.raises(XLabError, match="not an XLab model"):
        XLabModel.load_from_checkpoint(path)


def test_load_from_checkpoint_round_trip(tmp_path):
    model = tiny(positions="rotary")
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": "2.6.6"}, path)
    loaded = XLabModel.load_from_checkpoint(path).eval()
    tokens = torch.randint(0, 97, (1, 10))
    torch.testing.assert_close(loaded(tokens), model(tokens))
