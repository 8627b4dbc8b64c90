"""Captioning an image file with a CaptionModel checkpoint or export: `infer.py CKPT --image PATH`.

The image goes through the data's transform (`xlab.captions.images`) at the encoder's image size;
the prompt is `<s>` plus the style's token; every sampling and beam option of infer.py applies.
"""

from __future__ import annotations

import sys
import time

import torch

from xlab.errors import XLabError

STYLE_PREFIX = "<style:"


def known_styles(tokenizer) -> list[str]:
    """The styles a tokenizer has tokens for (their names, spaces restored)."""
    pieces = (tokenizer.id_to_piece(i) for i in range(len(tokenizer)))
    return sorted(p[len(STYLE_PREFIX):-1].replace("_", " ") for p in pieces
                  if p.startswith(STYLE_PREFIX) and p.endswith(">"))


def caption_prompt(tokenizer, style: str | None) -> list[int]:
    """`<s>` and the style's token; an unknown style is an error listing the known ones."""
    from xlab.captions.dataset import prompt_ids

    if style:
        styles = known_styles(tokenizer)
        if style not in styles:
            listed = ", ".join(styles) if styles else "none: this model was trained without styles"
            raise XLabError(f"style {style!r} is not one this model knows; known styles: {listed}.")
    return prompt_ids(tokenizer, style)


def caption_image(loaded, image_path: str, style: str | None, settings, seed: int | None = None) -> list[str]:
    """The caption(s) of one image file."""
    from xlab.captions.images import load_pixels
    from xlab.models import CaptionModel

    model, tokenizer = loaded.model, loaded.tokenizer
    if not isinstance(model, CaptionModel):
        raise XLabError(f"--image needs a CaptionModel checkpoint; this one holds a {type(model).__name__}.")
    if model.hparams.encoder == "features":
        raise XLabError("this CaptionModel reads precomputed features, not images: caption with the features "
                        "pipeline it was trained on, or train it with encoder: conv or hf.")
    prompt = caption_prompt(tokenizer, style)
    from dataclasses import replace

    room = int(model.hparams.max_len) - model.prefix_len  # what the image prefix leaves for text
    if settings.block_size is not None and settings.block_size > room:  # an export's default is the whole max_len
        settings = replace(settings, block_size=room)
    pixels = load_pixels(image_path, model.pixels.image_size, what="--image")[None].to(model.device)
    with torch.inference_mode():
        prefix = model.encode({"pixels": pixels})
    results = model.caption(prefix, [prompt], settings, decode=tokenizer.decode, seed=seed)[0]
    return [tokenizer.decode(tokens) for tokens in results]


def caption_command(args, device: str, merged_settings) -> int:
    """infer.py's --image: load, caption, print each caption; the speed goes to stderr."""
    from dataclasses import replace

    from xlab.export import load

    loaded = load(args.checkpoint, device=device)
    settings = merged_settings(loaded, args)
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
