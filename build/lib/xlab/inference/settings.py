"""Generation settings: one dataclass shared by `sample`, `infer.py` and an export's generation.json."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from xlab.common.errors import XLabError


@dataclass
class GenerationSettings:
    """How to continue a prompt.

    Args:
        output_length: Most new tokens per sequence.
        block_size: Context the model sees (default: the model's max_len); longer text slides.
        eos_class: Token id(s) that end a sequence; not part of the output.
        temperature: Softmax temperature; 0 means greedy (argmax), negative is an error.
        top_k: Sample among the k most likely tokens only.
        top_p: Sample from the smallest set of tokens whose probability reaches top_p, in (0, 1].
        num_beams: Beam search with this many beams when > 1 (deterministic: no temperature,
            top_k or top_p).
        length_penalty: Beam scores are log-probability / length ** length_penalty.
        early_stopping: Beam search stops once num_beams hypotheses are finished (True), when no
            running beam can beat the finished ones (False), or only at output_length ("never").
        repetition_penalty: Divides positive (multiplies negative) scores of tokens already in the
            text, prompt included; 1 disables.
        no_repeat_ngram_size: Never repeat an n-gram of this size (prompt included); 0 disables.
        min_length: New tokens before eos or a stop string may end a sequence.
        exclude_tokens: Token ids never produced.
        stop_strings: End a sequence when its new text contains one of these (kept in the output).
        num_samples: Sequences per prompt (beam search: best hypotheses returned, <= num_beams).
        slide_keep: When the text outgrows block_size, keep this many tokens (int) or this
            fraction of block_size (float in (0, 1)); default block_size - 1.
    """

    output_length: int = 256
    block_size: int | None = None
    eos_class: int | list[int] | None = None
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | Literal["never"] = False
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_length: int = 0
    exclude_tokens: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)
    num_samples: int = 1
    slide_keep: int | float | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def eos_ids(self) -> list[int]:
        if self.eos_class is None:
            return []
        if isinstance(self.eos_class, (list, tuple)):
            return [int(e) for e in self.eos_class]
        return [int(self.eos_class)]

    def keep(self, block_size: int) -> int:
        """Tokens kept when the window slides."""
        if self.slide_keep is None:
            return block_size - 1
        if isinstance(self.slide_keep, float):
            return max(1, int(self.slide_keep * block_size))
        return int(self.slide_keep)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GenerationSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise XLabError(f"unknown generation settings {unknown}: known are {sorted(known)}.")
        return cls(**values)

    def check(self, vocab_size: int, max_len: int, can_decode: bool) -> None:
        """Raise XLabError naming the first setting that is out of range."""
        for problem in _problems(self, vocab_size, max_len, can_decode):
            raise XLabError(problem)


def _problems(s: GenerationSettings, vocab_size: int, max_len: int, can_decode: bool):
    if s.output_length < 1:
        yield f"output_length={s.output_length}: generate at least one token."
    if s.block_size is not None and not 2 <= s.block_size <= max_len:
        yield f"block_size={s.block_size} must be between 2 and the model's max_len={max_len}."
    block = s.block_size or max_len
    if s.temperature < 0:
        yield f"temperature={s.temperature} is negative: use a positive value, or 0 for greedy decoding."
    if s.top_k is not None and s.top_k < 1:
        yield f"top_k={s.top_k} must be at least 1 (leave it unset to disable)."
    if s.top_p is not None and not 0 < s.top_p <= 1:
        yield f"top_p={s.top_p} must be in (0, 1]."
    if s.num_beams < 1:
        yield f"num_beams={s.num_beams} must be at least 1."
    if s.num_beams > vocab_size:
        yield f"num_beams={s.num_beams} is larger than the vocabulary ({vocab_size} tokens)."
    if s.num_beams > 1 and (s.temperature not in (0, 1) or s.top_k not in (None, 1) or s.top_p not in (None, 1)):
        yield "beam search is deterministic: drop temperature, top_k and top_p, or use num_beams=1 to sample."
    if s.num_beams > 1 and s.num_samples > s.num_beams:
        yield f"beam search returns at most num_beams={s.num_beams} hypotheses, not {s.num_samples}."
    if s.early_stopping not in (True, False, "never"):
        yield f"early_stopping={s.early_stopping!r} must be true, false or 'never'."
    if s.num_samples < 1:
        yield f"num_samples={s.num_samples} must be at least 1."
    if s.repetition_penalty <= 0:
        yield f"repetition_penalty={s.repetition_penalty} must be positive (1 disables it)."
    if s.no_repeat_ngram_size < 0:
        yield f"no_repeat_ngram_size={s.no_repeat_ngram_size} must be 0 (off) or positive."
    if not 0 <= s.min_length <= s.output_length:
        yield f"min_length={s.min_length} must be between 0 and output_length={s.output_length}."
    bad = [t for t in _as_list(s.exclude_tokens) + s.eos_ids if not 0 <= int(t) < vocab_size]
    if bad:
        yield f"token ids {bad} are outside the vocabulary of {vocab_size} tokens."
    if s.stop_strings and not can_decode:
        yield "stop strings need the tokenizer: pass decode=tokenizer.decode."
    if any(not stop for stop in s.stop_strings):
        yield "a stop string is empty: every stop string needs at least one character."
    if not 1 <= s.keep(block) < block:
        yield f"slide_keep={s.slide_keep} must keep between 1 and block_size - 1 = {block - 1} tokens."


def _as_list(values: Sequence[int] | None) -> list[int]:
    return [int(v) for v in values] if values else []
