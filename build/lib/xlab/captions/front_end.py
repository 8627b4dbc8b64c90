"""Captioning an image file with a CaptionModel checkpoint or export: `infer.py CKPT --image PATH`.

The image goes through the data's transform (`xlab.captions.images`) at the encoder's image size;
the prompt is `<s>` plus the style's token; every sampling and beam option of infer.py applies.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import torch

from xlab.captions.dataset import prompt_ids
from xlab.captions.images import load_pixels
from xlab.common.errors import XLabError

STYLE_PREFIX = "<style:"


def known_styles(tokenizer) -> list[str]:
    """The styles a tokenizer has tokens for (their names, spaces restored)."""
    pieces = (tokenizer.id_to_piece(i) for i in range(len(tokenizer)))
    return sorted(p[len(STYLE_PREFIX):-1].replace("_", " ") for p in pieces
                  if p.startswith(STYLE_PREFIX) and p.endswith(">"))


def caption_prompt(tokenizer, style: str | None) -> list[int]:
    """`<s>` and the style's token; an unknown style is an error listing the known ones."""
    if style:
        styles = known_styles(tokenizer)
        if style not in styles:
            listed = ", ".join(styles) if styles else "none: this model was trained without styles"
            raise XLabError(f"style {style!r} is not one this model knows; known styles: {listed}.")
    return prompt_ids(tokenizer, style)


def check_captioner(model, source: str) -> None:
    """XLabError unless `model` captions images (a CaptionModel that reads pixels)."""
    if not callable(getattr(model, "caption", None)):
        raise XLabError(f"--image needs a model trained to caption images (a CaptionModel); {source} holds a "
                        f"{type(model).__name__}: drop --image to continue a text prompt.")
    if model.hparams.encoder == "features":
        raise XLabError("this CaptionModel reads precomputed features, not images: caption with the features "
                        "pipeline it was trained on, or train it with encoder: conv or hf.")


def caption_image(loaded, image_path: str, style: str | None, settings, seed: int | None = None) -> list[str]:
    """The caption(s) of one image file."""
    model, tokenizer = loaded.model, loaded.tokenizer
    check_captioner(model, loaded.info.get("path", "the checkpoint"))
    prompt = caption_prompt(tokenizer, style)
    room = int(model.hparams.max_len) - model.prefix_len  # what the image prefix leaves for text
    if settings.block_size is not None and settings.block_size > room:  # an export's default is the whole max_len
        settings = replace(settings, block_size=room)
    pixels = load_pixels(image_path, model.pixels.image_size, what="--image")[None].to(model.device)
    with torch.inference_mode():
        prefix = model.encode({"pixels": pixels})
    results = model.caption(prefix, [prompt], settings, decode=tokenizer.decode, seed=seed)[0]
    return [tokenizer.decode(tokens) for tokens in results]


def caption_command(loaded, settings, args) -> int:
    """infer.py --image: caption, print each caption; the speed goes to stderr."""
    check_captioner(loaded.model, args.checkpoint)
    if args.output_length is None:
        settings = replace(settings, output_length=int(loaded.model.hparams.max_caption_tokens))
    began = time.perf_counter()
    captions = caption_image(loaded, args.image, args.style, settings, seed=args.seed)
    for i, text in enumerate(captions):
        if len(captions) > 1:
            print(f"--- caption {i + 1} of {len(captions)} ---")
        print(text, flush=True)
    print(f"[{len(captions)} caption(s) in {time.perf_counter() - began:.2f} s]", file=sys.stderr)
    return 0
