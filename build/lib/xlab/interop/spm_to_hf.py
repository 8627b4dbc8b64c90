"""XLab's sentencepiece tokenizer as a `tokenizers` fast tokenizer that gives the same ids.

What has to match sentencepiece's encoder, setting by setting (see `datamodules.tokenizer`):
- identity normalisation, no dummy prefix: the normaliser only writes spaces as U+2581;
- user-defined symbols (newline, the data's special tokens) are never split or merged: they
  become added tokens, cut out of the text before the model runs;
- BPE: sentencepiece merges, anywhere in the text, the adjacent pair whose union is the piece
  with the best score. The equivalent merge list holds every split (left, right) of every piece
  into two pieces, ranked by the union's score; with no pre-tokeniser the whole text is one word,
  as it is for sentencepiece;
- unigram models are refused: `tokenizers`' Viterbi breaks ties differently;
- byte fallback: a character outside the vocabulary becomes its UTF-8 bytes, `<0x..>` pieces.
The control tokens `<pad> <unk> <s> </s>` are special added tokens, as in Hugging Face's own
conversions, so text spelling one of them literally is the one thing encoded differently.
"""

from __future__ import annotations

from typing import Any

from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

from xlab.common.errors import XLabError

SPACE = "\u2581"


def fast_tokenizer_json(proto: bytes) -> str:
    """`tokenizer.json` for the serialized sentencepiece model `proto`."""
    model = pb.ModelProto()
    model.ParseFromString(proto)
    Piece = pb.ModelProto.SentencePiece
    kinds = {Piece.NORMAL: "normal", Piece.UNKNOWN: "unknown", Piece.CONTROL: "control",
             Piece.USER_DEFINED: "user", Piece.BYTE: "byte", Piece.UNUSED: "unused"}
    pieces = [(p.piece, p.score, kinds[p.type]) for p in model.pieces]
    spec = model.trainer_spec
    if model.normalizer_spec.add_dummy_prefix or model.normalizer_spec.name not in ("identity", ""):
        raise XLabError("this sentencepiece model normalises its input (a dummy prefix or a normalisation rule): "
                        "only XLab's lossless settings can be converted.")
    unk = next(i for i, (_, _, kind) in enumerate(pieces) if kind == "unknown")
    if spec.model_type == pb.TrainerSpec.BPE:
        vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
        backend = Tokenizer(models.BPE(vocab=vocab, merges=_merges(pieces, vocab), unk_token=pieces[unk][0],
                                       byte_fallback=spec.byte_fallback, fuse_unk=True))
    elif spec.model_type == pb.TrainerSpec.UNIGRAM:
        # `tokenizers`' Viterbi breaks ties between equally likely segmentations differently
        # (runs of one repeated character, e.g. "****"), so some strings would get other ids.
        raise XLabError("a sentencepiece unigram tokenizer cannot be converted with identical ids: "
                        "train the model with data tokenizer_type: bpe to export it to transformers.")
    else:
        raise XLabError(f"sentencepiece model type {spec.model_type} cannot be converted: only bpe.")
    backend.normalizer = normalizers.Replace(" ", SPACE)
    backend.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_special_tokens([AddedToken(p, special=True, normalized=False)
                                for p, _, kind in pieces if kind in ("control", "unknown")])
    backend.add_tokens([AddedToken(p, special=False, normalized=False) for p, _, kind in pieces if kind == "user"])
    return backend.to_str()


def _merges(pieces: list[tuple[str, float, str]], vocab: dict[str, int]) -> list[tuple[str, str]]:
    mergeable = {p for p, _, kind in pieces if kind == "normal"}
    ranked: list[tuple[Any, tuple[str, str]]] = []
    for index, (piece, score, kind) in enumerate(pieces):
        if kind != "normal" or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                ranked.append(((-score, index, vocab[left], vocab[right]), (left, right)))
    ranked.sort()
    return [pair for _, pair in ranked]
