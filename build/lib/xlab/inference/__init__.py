"""Text generation for XLab models: sampling (temperature, top-k, top-p), greedy, beam search.

    from xlab import inference
    inputs = torch.tensor([tokenizer[tokenizer.sos_token]] + tokenizer.encode(prompt), device=model.device)
    outputs = inference.sample(model, inputs, output_length=100, block_size=model.hparams['max_len'],
                               eos_class=tokenizer[tokenizer.eos_token])
    text = tokenizer.decode(outputs)

`inputs` is one prompt (1-D tensor or list of ids), a batch of equal-length prompts (2-D
tensor) or a list of prompts of any lengths. The result holds only the new tokens, without the
eos: for one prompt a 1-D tensor (a list of them with num_samples > 1), for a batch a list with
one such entry per prompt. Every option of `GenerationSettings` is a keyword argument.

Any model works that implements `model.new_cache(batch_size, max_len)` and
`model(input_ids, cache=, positions=, padding_mask=) -> logits` (see `context.py`) and has
`vocab_size`, `max_len` (and optionally `pad_id`) in its hparams. A model's `prepare_sampling()`,
if it has one, runs first (RetroModel opens the retrieval database its checkpoint names).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from numbers import Integral
from typing import Any

import torch
from torch import Tensor

from xlab.common.errors import XLabError
from xlab.inference.beam import beam_rows
from xlab.inference.sampling import StreamCallback, sample_rows
from xlab.inference.settings import GenerationSettings
from xlab.inference.stopping import cut_at_stop

__all__ = ["GenerationSettings", "beam_search", "cut_at_stop", "generate", "sample"]

Prompts = Tensor | Sequence[int] | Sequence[Tensor | Sequence[int]]


def sample(model, inputs: Prompts, output_length: int = 256, block_size: int | None = None,
           eos_class: int | Sequence[int] | None = None, *, decode: Callable[[list[int]], str] | None = None,
           stream: StreamCallback | None = None, seed: int | None = None,
           generator: torch.Generator | None = None, **options: Any) -> Tensor | list:
    """Continue `inputs`; options are the fields of `GenerationSettings` (temperature, top_k,
    top_p, num_beams, length_penalty, early_stopping, repetition_penalty, no_repeat_ngram_size,
    min_length, exclude_tokens, stop_strings, num_samples, slide_keep).

    decode: The tokenizer's decode, needed for stop strings.
    stream: Called as stream(sequence, token) for each new token as it is produced; sequence is
        prompt_index * num_samples + sample_index. Beam search streams its results at the end.
    seed / generator: Make sampling reproducible (a generator on the model's device wins).
    """
    settings = GenerationSettings.from_dict(
        {"output_length": output_length, "block_size": block_size, "eos_class": eos_class, **options})
    return _shaped(model, inputs, settings, beam=None, decode=decode, stream=stream, seed=seed, generator=generator)


def beam_search(model, inputs: Prompts, output_length: int = 256, block_size: int | None = None,
                eos_class: int | Sequence[int] | None = None, *, num_beams: int = 4, length_penalty: float = 1.0,
                early_stopping: bool | str = False, num_return: int = 1,
                decode: Callable[[list[int]], str] | None = None, **options: Any) -> Tensor | list:
    """Beam search (same semantics as `transformers` generate), even with one beam; returns the
    best `num_return` hypotheses per prompt, shaped like `sample`'s result. Other options as in
    `sample`."""
    settings = GenerationSettings.from_dict(
        {"output_length": output_length, "block_size": block_size, "eos_class": eos_class, "num_beams": num_beams,
         "length_penalty": length_penalty, "early_stopping": early_stopping, "num_samples": num_return, **options})
    return _shaped(model, inputs, settings, beam=True, decode=decode)


def generate(model, prompts: list[Tensor], settings: GenerationSettings, *,
             decode: Callable[[list[int]], str] | None = None, stream: StreamCallback | None = None,
             seed: int | None = None, generator: torch.Generator | None = None,
             beam: bool | None = None) -> list[list[Tensor]]:
    """New tokens for each prompt (1-D tensors of any lengths): a list per prompt of num_samples tensors.

    beam: run beam search (default: when settings.num_beams > 1)."""
    vocab_size, max_len = int(_hparam(model, "vocab_size")), int(_hparam(model, "max_len"))
    settings.check(vocab_size, max_len, can_decode=decode is not None)
    if not prompts:
        raise XLabError("no prompt given: pass at least one.")
    for i, prompt in enumerate(prompts):
        if prompt.dim() != 1 or len(prompt) == 0:
            raise XLabError(f"prompt {i} is empty: start it with the tokenizer's sos token at least.")
        if int(prompt.max()) >= vocab_size or int(prompt.min()) < 0:
            raise XLabError(f"prompt {i} has token ids outside the vocabulary of {vocab_size}.")
    block_size = settings.block_size or max_len
    pad_id = int(_hparam(model, "pad_id", 0))
    getattr(model, "prepare_sampling", _nothing)()
    if generator is None and seed is not None:
        generator = torch.Generator(device=prompts[0].device).manual_seed(seed)
    with _decoding(model):
        if beam or (beam is None and settings.num_beams > 1):
            results = beam_rows(model, prompts, settings, vocab_size, block_size, pad_id, decode)
            _stream_results(results, stream)
            return results
        rows = [p for p in prompts for _ in range(settings.num_samples)]
        flat = sample_rows(model, rows, settings, vocab_size, block_size, pad_id, decode, stream, generator)
    n = settings.num_samples
    return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]


def _shaped(model, inputs: Prompts, settings: GenerationSettings, beam: bool | None, **kwargs: Any) -> Tensor | list:
    prompts, single = _as_prompts(inputs, _device(model))
    results = generate(model, prompts, settings, beam=beam, **kwargs)
    shaped = [r[0] if settings.num_samples == 1 else r for r in results]
    return shaped[0] if single else shaped


def _as_prompts(inputs: Prompts, device: torch.device) -> tuple[list[Tensor], bool]:
    """(prompts, whether `inputs` was a single prompt)."""
    if isinstance(inputs, Tensor):
        if inputs.dim() == 1:
            return [inputs.to(device, torch.long)], True
        if inputs.dim() == 2:
            return list(inputs.to(device, torch.long)), False
        raise XLabError(f"inputs must be a 1-D prompt or a 2-D batch of prompts, not {inputs.dim()}-D.")
    items = list(inputs)
    if all(isinstance(i, Integral) for i in items):
        return [torch.tensor(items, dtype=torch.long, device=device)], True
    return [torch.as_tensor(p, dtype=torch.long).to(device) for p in items], False


def _nothing() -> None:
    """What preparing a model without a `prepare_sampling` takes."""


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _hparam(model, name: str, default: Any = None) -> Any:
    hparams = getattr(model, "hparams", {})
    value = hparams.get(name, default)
    if value is None:
        raise XLabError(f"{type(model).__name__} has no '{name}' hyperparameter, which decoding needs.")
    return value


@contextmanager
def _decoding(model) -> Iterator[None]:
    """Evaluation mode without autograd for the duration; the caller's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _stream_results(results: list[list[Tensor]], stream: StreamCallback | None) -> None:
    if stream is None:
        return
    sequence = 0
    for hypotheses in results:
        for tokens in hypotheses:
            for token in tokens.tolist():
                stream(sequence, token)
            sequence += 1
