"""RETRO-fitting: a RetroModel whose decoder starts from a trained plain decoder (`init_from`).

The paper (Borgeaud et al. 2022, section 4.2) adds retrieval to a trained transformer and trains
only the neighbour encoder and the chunked cross-attention. Trained from scratch at CPU size,
the decoder paid for the untrained retrieval path (docs/retro.md: the same model with its
neighbours removed was worse than the plain decoder); a frozen decoder cannot pay, and with
`cca_zero_init` the fitted model starts with exactly the decoder's logits.

A starting decoder is an XLabModel (checkpoint or export) of RetroModel's decoder kind (rotary
positions, RMSNorm before each sublayer, a GELU MLP of 4 x n_embd, no biases, a tied head, plain
multi-head attention), or a RetroModel checkpoint, whose decoder alone is taken (one trained with
retrieval off is a plain decoder). Its shape must be the model's; its norm epsilon is taken over.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from xlab.common.checkpoint import read_checkpoint
from xlab.common.errors import XLabError
from xlab.models.pretrained import (StartingPoint, checkpoint_class_path, checkpoint_start, checkpoint_weights,
                                    read_starting_point)
from xlab.models.xlab_model import XLabModel

SHAPE = ("n_layer", "n_head", "n_embd", "rope_base", "vocab_size")
# XLabModel settings that RetroModel's decoder has fixed (blocks.py's Block with these = DecoderLayer's).
DECODER_KIND = dict(positions="rotary", norm="rmsnorm", norm_position="pre", activation="gelu", bias=False,
                    tie_weights=True, qk_norm=False, logit_softcap=None, value_embeddings=False)
# Parameters retrieval adds to a decoder (RetrievalTraining.retrieval_parameters), by name.
RETRIEVAL_NAME = re.compile(r"^(enc_in|encoder|enc_ln)\.|^layers\.\d+\.(ln_cca|cca)\.")


@dataclass
class Decoder:
    source: str  # the path, for messages
    settings: dict  # SHAPE values and norm_eps (None: torch's default for the dtype)
    state: dict  # the decoder's weights under RetroModel's names


def read_decoder(init_from: str, hp, norm_eps: float | None) -> Decoder:
    """The decoder at `init_from`, checked against the model's settings `hp` and `norm_eps`."""
    path = Path(init_from).expanduser()
    ckpt = read_checkpoint(path) if path.is_file() else None
    class_path = checkpoint_class_path(ckpt) if ckpt is not None else ""
    if ckpt is not None and not class_path.endswith((".XLabModel", ".RetroModel")):
        raise XLabError(f"init_from {path} holds a {class_path}: a RetroModel's decoder starts from an XLabModel or "
                        "a RetroModel.")
    if class_path.endswith(".RetroModel"):
        args = ckpt.get("hyper_parameters") or {}
        decoder = Decoder(str(path), {name: args.get(name) for name in SHAPE} | {"norm_eps": args.get("norm_eps")},
                          {name: value for name, value in checkpoint_weights(ckpt).items()
                           if not RETRIEVAL_NAME.match(name)})
    else:
        start = checkpoint_start(ckpt, path, XLabModel) if ckpt is not None else _read_folder(path)
        decoder = _from_xlab(start)
    for name in SHAPE:
        if hp[name] != decoder.settings[name]:
            fix = ("use the data settings (tokenizer) the decoder was trained with" if name == "vocab_size"
                   else f"set model {name} {decoder.settings[name]}")
            raise XLabError(f"model {name}={hp[name]} but the decoder in init_from {decoder.source} has "
                            f"{name}={decoder.settings[name]}: {fix}, a RETRO-fitted decoder keeps its shape.")
    if norm_eps is not None and norm_eps != decoder.settings["norm_eps"]:
        raise XLabError(f"model norm_eps={norm_eps} but the decoder in init_from {decoder.source} has "
                        f"{decoder.settings['norm_eps']}: remove norm_eps, the decoder decides it.")
    return decoder


def _read_folder(path: Path) -> StartingPoint:
    if path.is_dir():
        return read_starting_point(path, XLabModel)
    raise XLabError(f"init_from {path} does not exist: give the .ckpt or the export folder of a trained decoder "
                    "(docs/retro.md, RETRO-fitting).")


def _from_xlab(start: StartingPoint) -> Decoder:
    settings = start.settings
    kind = dict(DECODER_KIND, ffn_dim=4 * settings["n_embd"], n_kv_head=settings["n_head"])
    defaults = dict(ffn_dim=None, n_kv_head=None)  # None means the values above for an XLabModel
    for name, wanted in kind.items():
        if settings[name] != wanted and not (name in defaults and settings[name] is None):
            raise XLabError(f"init_from {start.source} ({start.kind}) has {name}={settings[name]!r}, a RetroModel's "
                            f"decoder has {name}={wanted!r}: train the decoder with model {name} {wanted} "
                            "(conf/retro-fit.yaml names the recipe).")
    renamed = {}
    for name, value in start.state.items():
        for old, new in (("transformer.h.", "layers."), ("transformer.wte.", "wte."), ("transformer.ln_f.", "ln_f.")):
            if name.startswith(old):
                name = new + name[len(old):]
        renamed[name] = value
    return Decoder(start.source, {name: settings[name] for name in SHAPE} | {"norm_eps": settings["norm_eps"]},
                   renamed)


def fit_decoder_(model, decoder: Decoder | None, freeze_decoder: bool | None) -> None:
    """Load `decoder` into `model` (a RetroModel built with its norm epsilon), freeze the decoder
    if asked (None: when a decoder was given) and record the settings a reload needs."""
    if decoder is not None:
        result = model.load_state_dict(decoder.state, strict=False)
        missing = [name for name in result.missing_keys if not RETRIEVAL_NAME.match(name)]
        if missing or result.unexpected_keys:
            raise XLabError(f"the decoder in init_from {decoder.source} does not fit the model: missing {missing[:4]}, "
                            f"unexpected {result.unexpected_keys[:4]}.")
        rank_zero_info(f"xlab: RETRO-fitting the decoder of {decoder.source}")
        # The weights now live in this model's checkpoints: a reload needs no init_from, but the
        # decoder's epsilon and the freezing.
        model.hparams.update(init_from=None, norm_eps=decoder.settings["norm_eps"])
    freeze = decoder is not None if freeze_decoder is None else freeze_decoder
    model.hparams.update(freeze_decoder=freeze)
    if freeze:
        mine = {id(p) for p in model.retrieval_parameters()}
        for param in model.parameters():
            param.requires_grad_(id(param) in mine)
