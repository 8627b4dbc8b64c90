"""A sentencepiece tokenizer that round-trips any text and travels as bytes inside checkpoints.

Settings chosen for a lossless round trip: identity normalisation, no whitespace collapsing, no
dummy prefix, byte fallback for characters outside the vocabulary, and newline as its own piece
(sentencepiece trains on lines, so a newline would otherwise always cost a byte-fallback token).
The ids of the four special tokens are fixed, so a model can rely on them without the data.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import sentencepiece as spm

from xlab.common.errors import XLabError
from xlab.common.files import write_bytes_
from xlab.common.pretrained_tokenizer import MAGIC, PretrainedTokenizer

PAD, UNK, SOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
PAD_ID, UNK_ID, SOS_ID, EOS_ID = 0, 1, 2, 3
IGNORE_INDEX = -100  # labels with this value are skipped by the loss and the metrics
NEWLINE = "\n"


class Tokenizer:
    """Sentencepiece model plus the special-token conventions the models use.

    `tokenizer[tokenizer.sos_token]` is the id of a token, `encode` / `decode` convert text, and
    `len(tokenizer)` is the vocabulary size including the special tokens.
    """

    sos_token, eos_token, pad_token, unk_token = SOS, EOS, PAD, UNK

    def __init__(self, model_proto: bytes, source: str = "the tokenizer"):
        self._proto = bytes(model_proto)
        # sentencepiece accepts empty bytes and fails only at the first encode; a cut-short model
        # fails in C++ with a RuntimeError naming its own source line: both are the file's fault.
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        except RuntimeError:
            self._sp = None
        if self._sp is None or self._sp.get_piece_size() == 0:
            raise XLabError(f"{source} is not a readable sentencepiece model (empty, cut short or corrupt): copy or "
                            "write it again (an export: re-export its checkpoint; a cache: reprocess it).")

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        lines: Iterable[str],
        vocab_size: int,
        model_type: Literal["bpe", "unigram"] = "bpe",
        extra_special_tokens: Iterable[str] = (),
        character_coverage: float = 0.9995,
        max_sentences: int = 2_000_000,
    ) -> Tokenizer:
        """Train on an iterator of lines; memory is bounded by `max_sentences` (sampled)."""
        if vocab_size < 16:
            raise XLabError(f"tokenizer vocab_size={vocab_size} is too small: use at least 16 (e.g. 4096).")
        model = io.BytesIO()
        source = _Lines(lines)
        # sentencepiece counts the 256 byte-fallback pieces in the vocabulary.
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(source),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                split_digits=True,
                byte_fallback=True,
                allow_whitespace_only_pieces=True,
                character_coverage=character_coverage,
                user_defined_symbols=[NEWLINE, *extra_special_tokens],
                pad_id=PAD_ID, unk_id=UNK_ID, bos_id=SOS_ID, eos_id=EOS_ID,
                pad_piece=PAD, unk_piece=UNK, bos_piece=SOS, eos_piece=EOS,
                hard_vocab_limit=model_type == "bpe",
                input_sentence_size=max_sentences,
                shuffle_input_sentence=True,
                max_sentence_length=1 << 16,
                num_threads=2,
                minloglevel=2,
            )
        except RuntimeError as e:
            if source.error is not None:  # the corpus's own one-line error, not sentencepiece's wrapping of it
                raise source.error from None
            raise XLabError(_explain_training_failure(str(e), vocab_size)) from None
        return cls(model.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise XLabError(f"tokenizer model {path} does not exist: pass the tokenizer.model of a build or an export.")
        return cls(path.read_bytes(), source=str(path))

    def save_(self, path: str | Path) -> None:
        write_bytes_(path, self._proto)

    def to_bytes(self) -> bytes:
        return self._proto

    # --- use --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._sp.get_piece_size()

    def __getitem__(self, piece: str) -> int:
        index = self._sp.piece_to_id(piece)
        if index == UNK_ID and piece != UNK:
            raise KeyError(f"{piece!r} is not a token of this tokenizer")
        return index

    @property
    def sos_id(self) -> int:
        return SOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts, num_threads=-1)

    def decode(self, ids: Iterable[int]) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, index: int) -> str:
        return self._sp.id_to_piece(index)

    def token_bytes(self) -> np.ndarray:
        """UTF-8 length of each token's text: the denominator of bits per byte.

        Special tokens stand for no text and count 0; byte-fallback pieces count 1.
        """
        sizes = np.zeros(len(self), dtype=np.int64)
        for i in range(len(self)):
            if self._sp.is_control(i) or self._sp.is_unknown(i):
                continue
            if self._sp.is_byte(i):
                sizes[i] = 1
            else:
                sizes[i] = len(self._sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
        return sizes


def _nonempty(lines: Iterable[str]) -> Iterator[str]:
    # Empty lines carry nothing to learn and sentencepiece rejects an input made only of them.
    for line in lines:
        if line.strip():
            yield line


class _Lines:
    """The training lines, keeping the XLabError their reading raised (a corpus file that is not
    JSON or UTF-8): sentencepiece turns it into "INTERNAL: XLabError: ..." inside its own error."""

    def __init__(self, lines: Iterable[str]):
        self.lines, self.error = lines, None

    def __iter__(self) -> Iterator[str]:
        try:
            yield from _nonempty(self.lines)
        except XLabError as error:
            self.error = error
            raise


def _explain_training_failure(message: str, vocab_size: int) -> str:
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    if "smaller than required_chars" in message:
        return (f"vocab_size={vocab_size} is too small to hold every character of the corpus plus 256 byte "
                "tokens: raise data.vocab_size.")
    if "Vocabulary size" in message or "vocab_size" in message:
        return (f"the training corpus cannot support a vocabulary of {vocab_size} tokens ({first}): "
                "lower data.vocab_size or add more text.")
    if "no sentence" in message.lower() or "empty" in message.lower():
        return "the training split has no text to train the tokenizer on: add documents to the corpus."
    return f"sentencepiece could not train the tokenizer: {first}"


def tokenizer_from_bytes(data: bytes, source: str = "the checkpoint's tokenizer"):
    """The tokenizer a checkpoint carries: a pretrained Hugging Face one (its bytes start with
    `pretrained_tokenizer.MAGIC`) or a sentencepiece model (a protobuf, which never starts so)."""
    data = bytes(data)
    if data.startswith(MAGIC):
        return PretrainedTokenizer.from_bytes(data, source)
    return Tokenizer(data, source)


def load_tokenizer(path: str | Path):
    """`tokenizer_from_bytes` of a file (a cache's or an export's `tokenizer.model`)."""
    path = Path(path)
    if not path.is_file():
        raise XLabError(f"tokenizer model {path} does not exist: pass the tokenizer.model of a build or an export.")
    return tokenizer_from_bytes(path.read_bytes(), str(path))
