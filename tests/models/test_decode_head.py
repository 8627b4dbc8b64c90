"""xlab.models.decode_head: one- and two-row decoding steps project through a transposed copy of
the head, which follows the weight whenever it changes; everything else uses the head itself."""

import torch
from torch import nn

from xlab import inference
from xlab.models import XLabModel
from xlab.models.decode_head import DecodeHead


def head_and_rows(rows=1, vocab=300, width=24):
    torch.manual_seed(0)
    return nn.Linear(width, vocab, bias=False), torch.randn(rows, 1, width)


def test_a_decoding_step_of_one_or_two_rows_uses_the_copy():
    head, _ = head_and_rows()
    project = DecodeHead()
    for rows in (1, 2):
        x = torch.randn(rows, 1, 24)
        with torch.inference_mode():
            out = project(head, x)
        torch.testing.assert_close(out, head(x).detach(), rtol=1e-5, atol=1e-6)
        assert project._copy is not None and project._copy.shape == (24, 300)


def test_the_copy_follows_the_weight_when_it_changes():
    head, x = head_and_rows()
    project = DecodeHead()
    with torch.inference_mode():
        before = project(head, x)
    optimizer = torch.optim.SGD(head.parameters(), lr=1.0)
    head(torch.randn(4, 24)).square().sum().backward()
    optimizer.step()  # an in-place update
    with torch.inference_mode():
        after = project(head, x)
        torch.testing.assert_close(after, head(x), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(before, after)
    with torch.no_grad():
        head.weight.copy_(torch.zeros_like(head.weight))  # as load_state_dict writes
    with torch.inference_mode():
        assert project(head, x).abs().max() == 0


def test_training_evaluation_and_larger_batches_use_the_head_itself():
    head, _ = head_and_rows()
    project = DecodeHead()
    x = torch.randn(1, 1, 24, requires_grad=True)
    assert torch.equal(project(head, x), head(x))  # autograd on: the head, which gradients need
    with torch.inference_mode():
        wide = torch.randn(3, 1, 24)
        assert torch.equal(project(head, wide), head(wide))
        long = torch.randn(1, 5, 24)
        assert torch.equal(project(head, long), head(long))
    assert project._copy is None


def test_greedy_decoding_of_a_model_is_unchanged():
    torch.manual_seed(0)
    model = XLabModel(vocab_size=97, max_len=32, n_layer=2, n_head=2, n_embd=32).eval()
    prompt = torch.tensor([3, 5, 7, 11])
    tokens = inference.sample(model, prompt, output_length=12, temperature=0)
    with torch.no_grad():  # the same choices from full forward passes, without a cache or the copy
        text = prompt.clone()
        for _ in range(12):
            text = torch.cat([text, model(text[None])[0, -1].argmax()[None]])
    assert tokens.tolist() == text[len(prompt):].tolist()
    assert model._decode_head._copy is not None
