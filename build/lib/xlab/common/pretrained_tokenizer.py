"""A pretrained Hugging Face tokenizer (a `tokenizer.json` folder) behind the `Tokenizer` protocol.

Fine-tuning a pretrained model needs the tokenizer it was pretrained with: retraining
sentencepiece would change what every id means. `PretrainedTokenizer` reads a local folder
(`tokenizer.json` and `tokenizer_config.json`, as `save_pretrained` writes them; a folder with
only GPT-2's `vocab.json` and `merges.txt` is converted by `transformers`) and then runs on the
`tokenizers` library alone, so restoring one from a checkpoint needs no `transformers` import.

Special tokens follow the folder's `tokenizer_config.json`. Where the tokenizer lacks one:
- no start token (bos): documents start with the end token, as GPT-2 does (`<|endoftext|>`
  separates documents; GPT-2's bos and eos are that one token anyway);
- no pad token: the end token pads. Padding positions always get the label -100 (ignored), so
  the loss never trains on them, whatever id pads them;
- no unk token: the end token stands in (a byte-level BPE never produces an unknown token);
- no end token: refused, since documents could not be delimited.
The start, end, pad and unk tokens decode to nothing, as sentencepiece's control tokens do.
`extra_special_tokens` (the data's `special_tokens`) are added as special tokens, so they grow
the vocabulary by one id each, are never split, and decode to their text.

In checkpoints the tokenizer travels as bytes: `MAGIC` then JSON holding `tokenizer.json` and
the four special tokens (never pickle). `xlab.common.tokenizer.tokenizer_from_bytes`
tells these bytes from a sentencepiece model by that prefix.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, processors
from tokenizers import Tokenizer as Backend

from xlab.common.errors import XLabError
from xlab.common.files import write_bytes_

MAGIC = b"XLAB-HF-TOKENIZER\n"
# Files of a Hugging Face tokenizer folder that decide its behaviour (the cache key hashes them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt")
SAVE_HINT = ("on a machine with network access run `AutoTokenizer.from_pretrained(NAME).save_pretrained(DIR)` "
             "and copy DIR here")


def check_tokenizer_folder(path: str | Path) -> Path:
    """The folder, once it is known to hold a tokenizer; otherwise an error naming what is missing."""
    folder = Path(os.path.expanduser(str(path)))
    if not folder.is_dir():
        raise XLabError(f"tokenizer folder {folder} does not exist: {SAVE_HINT}.")
    if (folder / "tokenizer.json").is_file() or all((folder / f).is_file() for f in ("vocab.json", "merges.txt")):
        return folder
    missing = [f for f in ("tokenizer.json", "vocab.json", "merges.txt") if not (folder / f).is_file()]
    raise XLabError(f"tokenizer folder {folder} is missing {', '.join(missing)} (it needs tokenizer.json, or "
                    f"vocab.json and merges.txt): {SAVE_HINT}.")


def tokenizer_folder_fingerprint(path: str | Path) -> str:
    """A hash of the folder's tokenizer files: the cache is rebuilt when any of them changes."""
    folder = check_tokenizer_folder(path)
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
    return digest.hexdigest()[:16]


class PretrainedTokenizer:
    """A `tokenizers.Tokenizer` plus the special-token conventions of `xlab.common.tokenizer.Tokenizer`."""

    def __init__(self, tokenizer_json: str, eos_token: str, sos_token: str | None = None,
                 pad_token: str | None = None, unk_token: str | None = None, base_size: int | None = None,
                 source: str = "the tokenizer"):
        self._json = tokenizer_json
        self._tok = _backend(tokenizer_json, source)
        self.eos_token = eos_token
        self.sos_token = sos_token or eos_token
        self.pad_token = pad_token or eos_token
        self.unk_token = unk_token or eos_token
        for role in ("eos_token", "sos_token", "pad_token", "unk_token"):
            if self._tok.token_to_id(getattr(self, role)) is None:
                raise XLabError(f"the tokenizer's {role} {getattr(self, role)!r} is not in its vocabulary: "
                                "fix tokenizer_config.json.")
        # Size before the data's special tokens were added: what a pretrained model was trained on.
        self.base_size = int(base_size if base_size is not None else len(self))
        self._control = sorted({self.sos_id, self.eos_id, self.pad_id, self.unk_id})

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def from_folder(cls, path: str | Path, extra_special_tokens: Iterable[str] = ()) -> PretrainedTokenizer:
        """Load a `save_pretrained` tokenizer folder; `extra_special_tokens` are added to it."""
        folder = check_tokenizer_folder(path)
        config = _read_json(folder / "tokenizer_config.json") | _read_json(folder / "special_tokens_map.json")
        specials = {role: _token_text(config.get(role)) for role in ("eos_token", "bos_token", "pad_token", "unk_token")}
        if (folder / "tokenizer.json").is_file():
            tokenizer_json = _read_text(folder / "tokenizer.json")
        else:
            tokenizer_json, found = _convert_with_transformers(folder)
            specials = {role: specials[role] or found[role] for role in specials}
        if not specials["eos_token"]:
            raise XLabError(f"the tokenizer in {folder} has no eos_token: documents need an end token; add "
                            '"eos_token": "<its end token>" to its tokenizer_config.json.')
        tokenizer = cls(tokenizer_json, specials["eos_token"], specials["bos_token"], specials["pad_token"],
                        specials["unk_token"], source=str(folder / "tokenizer.json"))
        return tokenizer.with_special_tokens(extra_special_tokens)

    def with_special_tokens(self, tokens: Iterable[str]) -> PretrainedTokenizer:
        """A copy with `tokens` added as special tokens (new ids at the end; existing ones kept)."""
        tokens = [t for t in dict.fromkeys(tokens) if t]
        if not tokens:
            return self
        backend = Backend.from_str(self._json)
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
        return PretrainedTokenizer(backend.to_str(), self.eos_token, self.sos_token, self.pad_token,
                                   self.unk_token, base_size=self.base_size)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "the checkpoint's tokenizer") -> PretrainedTokenizer:
        if not data.startswith(MAGIC):
            raise XLabError("these bytes are not an XLab Hugging Face tokenizer.")
        try:
            record = json.loads(data[len(MAGIC):].decode("utf-8"))
            fields = [record[key] for key in ("tokenizer_json", "eos_token", "sos_token", "pad_token", "unk_token")]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise XLabError(f"{source} is not a readable XLab Hugging Face tokenizer ({type(e).__name__}): copy or "
                            "write it again.") from None
        return cls(*fields, base_size=record.get("base_size"), source=source)

    def to_bytes(self) -> bytes:
        record = {"kind": "huggingface", "tokenizer_json": self._json, "eos_token": self.eos_token,
                  "sos_token": self.sos_token, "pad_token": self.pad_token, "unk_token": self.unk_token,
                  "base_size": self.base_size}
        return MAGIC + json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8")

    def save_(self, path: str | Path) -> None:
        write_bytes_(path, self.to_bytes())

    def transformers_files(self) -> dict[str, bytes]:
        """`hf_files` for `transformers` users: `tok(text)` gives XLab's ids for a prompt, the start
        token first, as XLab trains every document and prompts every model (a post-processor in
        tokenizer.json adds it; XLab's own `encode` never asks for it)."""
        backend = Backend.from_str(self._json)
        sos = self.sos_token
        backend.post_processor = processors.TemplateProcessing(
            single=f"{sos} $A", pair=f"{sos} $A {sos} $B", special_tokens=[(sos, self.sos_id)])
        files = PretrainedTokenizer(backend.to_str(), self.eos_token, sos, self.pad_token, self.unk_token,
                                    base_size=self.base_size).hf_files(add_bos_token=True)
        return files

    def hf_files(self, add_bos_token: bool = False) -> dict[str, bytes]:
        """`tokenizer.json` and `tokenizer_config.json` as `save_pretrained` would write them, so
        `AutoTokenizer.from_pretrained` (a `PreTrainedTokenizerFast`) loads the folder."""
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": self.sos_token,
                  "eos_token": self.eos_token, "pad_token": self.pad_token, "unk_token": self.unk_token,
                  "clean_up_tokenization_spaces": False, "add_bos_token": add_bos_token, "add_eos_token": False}
        return {"tokenizer.json": self._json.encode("utf-8"),
                "tokenizer_config.json": (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8")}

    # --- use --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __getitem__(self, piece: str) -> int:
        index = self._tok.token_to_id(piece)
        if index is None:
            raise KeyError(f"{piece!r} is not a token of this tokenizer")
        return index

    @property
    def sos_id(self) -> int:
        return self[self.sos_token]

    @property
    def eos_id(self) -> int:
        return self[self.eos_token]

    @property
    def pad_id(self) -> int:
        return self[self.pad_token]

    @property
    def unk_id(self) -> int:
        return self[self.unk_token]

    @property
    def added_tokens(self) -> int:
        """How many ids the data's special tokens added to the pretrained vocabulary."""
        return len(self) - self.base_size

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        control = set(self._control)
        return self._tok.decode([int(i) for i in ids if int(i) not in control], skip_special_tokens=False)

    def id_to_piece(self, index: int) -> str:
        return self._tok.id_to_token(index)

    def token_bytes(self) -> np.ndarray:
        """UTF-8 length of each token's text (bits per byte): 0 for the start, end, pad and unk
        tokens; byte-level pieces count one byte per character; byte-fallback pieces one byte."""
        byte_level = '"ByteLevel"' in json.dumps(json.loads(self._json).get("decoder"))
        added = {t.content for t in self._tok.get_added_tokens_decoder().values()}
        sizes = np.zeros(len(self), dtype=np.int64)
        for i in range(len(self)):
            piece = self._tok.id_to_token(i)
            if piece is None or i in self._control:
                continue
            if piece in added:
                sizes[i] = len(piece.encode("utf-8"))
            elif byte_level:
                sizes[i] = len(piece)  # GPT-2's alphabet maps each byte to one character
            elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                sizes[i] = 1
            else:
                sizes[i] = len(piece.replace("\u2581", " ").encode("utf-8"))
        return sizes


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise XLabError(f"{path} is not UTF-8 text (byte {e.start}): rewrite it with save_pretrained.") from None


def _backend(tokenizer_json: str, source: str) -> Backend:
    """The `tokenizers` object of a tokenizer.json text; text cut short is an error naming `source`."""
    try:
        json.loads(tokenizer_json)
    except json.JSONDecodeError as e:
        raise XLabError(f"{source} is not valid JSON (cut short or corrupt? {e}): rewrite it with save_pretrained "
                        "or copy it again.") from None
    try:
        return Backend.from_str(tokenizer_json)
    except Exception as e:  # noqa: BLE001 - `tokenizers` raises plain Exception for a file it cannot read
        raise XLabError(f"{source} is not a Hugging Face tokenizer ({' '.join(str(e).split())[:160]}): rewrite it "
                        "with save_pretrained.") from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise XLabError(f"{path} is not valid JSON ({e}): rewrite it with save_pretrained.") from None
    return value if isinstance(value, dict) else {}


def _token_text(value: Any) -> str | None:
    """A special token as written in tokenizer_config.json: a string, or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _convert_with_transformers(folder: Path) -> tuple[str, dict[str, str | None]]:
    """tokenizer.json for a folder that has only the slow files (GPT-2's vocab.json + merges.txt)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Start-up cost: transformers takes a second and ~60 MB, and only folders without tokenizer.json need it.
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise XLabError(f"cannot read the tokenizer in {folder}: {str(e).splitlines()[0]}") from None
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise XLabError(f"the tokenizer in {folder} is not a fast tokenizer: save it with tokenizer.json "
                        "(AutoTokenizer.from_pretrained(..., use_fast=True).save_pretrained(DIR)).")
    found = {"eos_token": tok.eos_token, "bos_token": tok.bos_token, "pad_token": tok.pad_token,
             "unk_token": tok.unk_token}
    return backend.to_str(), found
