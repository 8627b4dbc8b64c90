"""CaptionModel: an image encoder whose output prefixes XLabModel's decoder (ClipCap-style).

The encoder (`image_encoders.py`: a small conv net from pixels, a local Hugging Face CLIP / ViT,
or a map of precomputed features) gives P prefix embeddings; the decoder reads
`prefix, <s>, [<style:S>], caption..., </s>` with ordinary causal attention, and the loss counts
caption tokens only (the data's labels ignore the prompt). Decoding goes through `xlab.inference`
like every LM: `decoding_view(prefix)` is a model with the inference protocol whose cache holds
the prefix ahead of the text, so greedy, sampling and beam search all work unchanged.

Validation and test decode every image (greedy, or `eval_num_beams`) and log pycocoevalcap's
BLEU-1..4, METEOR, ROUGE-L and CIDEr-D (`evaluation.py`, run by the `GenerationMetrics` callback;
`val/cider` can drive checkpoint selection). With `scst: true` training is self-critical sequence
training (`scst.py`).

Two starting points, kept apart by name (XLabModel's single `init_from` would blur them):
    decoder_from      a pretrained decoder: a local GPT-2 / Llama folder or an XLab export, read by
                      XLabModel's `init_from` code; the folder decides the decoder's shape, and the
                      data's tokenizer must be its own (data tokenizer_path: the same folder)
    start_checkpoint  a CaptionModel checkpoint whose weights (encoder and decoder) this run starts
                      from: the SCST stage starts from the cross-entropy run's
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from xlab import inference
from xlab.captions.image_encoders import ConvEncoder, EncoderKind, FeatureEncoder, HFVisionEncoder, Mapping, PixelNorm
from xlab.captions.reward import CiderReward
from xlab.captions.scst import scst_step
from xlab.common.checkpoint import read_checkpoint
from xlab.common.errors import XLabError
from xlab.models.xlab_model import XLabModel

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CaptionModel(XLabModel):
    """Image captioning on XLabModel's decoder.

    Args (beyond XLabModel's):
        encoder: conv (from pixels), hf (local CLIP / ViT folder) or features (precomputed).
        image_size: Side the encoder reads (the conv encoder's input; hf uses its config's).
        image_mean, image_std: Normalisation of pixels in [0, 1] (CLIP's by default).
        conv_channels, prefix_grid: The conv encoder's width and its grid x grid prefix.
        vision_path: Folder of a transformers vision model (save_pretrained layout).
        vision_config: Filled in from vision_path when training starts, so a checkpoint rebuilds
            the encoder without the folder.
        freeze_vision: Keep the hf encoder's weights fixed (only the map and decoder learn).
        mapping: mlp (one vector -> prefix_len embeddings) or tokens (patch tokens, linear).
        prefix_len: Prefix embeddings made by the mlp mapping.
        feature_dim: Width of precomputed features.
        caption_metrics: Decode val / test images and log the COCO caption metrics.
        metric_tokenizer: ptb (the COCO standard, Java) or simple (Python); SCST uses it too.
        meteor: Compute METEOR (Java, ~16 s start, ~1.4 GB) in validation and test.
        eval_num_beams: Beams for the decoding scored in val / test (1: greedy).
        max_caption_tokens: Most tokens decoded per caption.
        decoder_from: Folder of a pretrained decoder (GPT-2 / Llama save_pretrained, or an XLab
            export); its architecture replaces the decoder settings, which must not contradict it.
        start_checkpoint: A CaptionModel checkpoint with the same settings to take the weights from
            when training starts (a resumed run's own checkpoint then wins).
        scst, scst_baseline, scst_samples, scst_ce_weight, scst_temperature: see `scst.py`.
    """

    def __init__(
        self,
        encoder: EncoderKind = "conv",
        image_size: int = 32,
        image_mean: tuple[float, float, float] = CLIP_MEAN,
        image_std: tuple[float, float, float] = CLIP_STD,
        conv_channels: int = 32,
        prefix_grid: int = 4,
        vision_path: str | None = None,
        vision_config: dict[str, Any] | None = None,
        freeze_vision: bool = True,
        mapping: Mapping = "mlp",
        prefix_len: int = 10,
        feature_dim: int = 512,
        caption_metrics: bool = True,
        metric_tokenizer: Literal["ptb", "simple"] = "ptb",
        meteor: bool = False,
        eval_num_beams: int = 1,
        max_caption_tokens: int = 32,
        decoder_from: str | None = None,
        start_checkpoint: str | None = None,
        scst: bool = False,
        scst_baseline: Literal["greedy", "mean"] = "greedy",
        scst_samples: int = 5,
        scst_ce_weight: float = 0.0,
        scst_temperature: float = 1.0,
        **kwargs: Any,
    ):
        if "init_from" in kwargs:  # XLabModel's one name for both would blur them
            raise XLabError("CaptionModel has no init_from: a pretrained decoder folder is decoder_from, a "
                            "CaptionModel checkpoint to start from (the SCST stage) is start_checkpoint.")
        if kwargs.get("document_mask"):  # its decoder reads embeddings (the image prefix), not tokens
            raise XLabError("CaptionModel has no document_mask: each of its windows holds one caption; set it false.")
        if kwargs.get("value_embeddings"):
            raise XLabError("CaptionModel has no value_embeddings: its decoder reads the image prefix as embeddings, "
                            "which have no tokens to look up; set it false.")
        super().__init__(init_from=decoder_from, **kwargs)
        # The decoder's weights now live in this model's checkpoints: rebuilding needs no folder.
        self.hparams.pop("init_from", None)
        self.hparams["decoder_from"] = None
        n_embd = self.hparams.n_embd
        if encoder == "conv":
            self.pixels = PixelNorm(image_size, image_mean, image_std)
            self.encoder = ConvEncoder(n_embd, conv_channels, prefix_grid)
        elif encoder == "hf":
            self.encoder = HFVisionEncoder(vision_path, vision_config, n_embd, prefix_len, mapping, freeze_vision)
            self.pixels = PixelNorm(self.encoder.image_size, image_mean, image_std)
            self.hparams["vision_config"] = self.encoder.config_dict  # the checkpoint rebuilds it without the folder
        else:
            self.encoder = FeatureEncoder(feature_dim, n_embd, prefix_len, mapping)
        if scst and scst_samples < (2 if scst_baseline == "mean" else 1):
            raise XLabError(f"scst_samples={scst_samples}: the mean-of-others baseline needs at least 2 samples.")
        self.reward = None  # SCST's CIDEr-D, built at fit start from the training references
        # From the data module while a Trainer runs (`use_resource`): SCST decodes and scores with them.
        self.tokenizer = None
        self.references = None

    # --- the prefix ---------------------------------------------------------------------------
    @property
    def prefix_len(self) -> int:
        """Prefix embeddings per image (features with mapping: tokens: as many as they have)."""
        return getattr(self.encoder, "prefix_len", None) or 0

    def encode(self, batch: dict[str, Any]) -> Tensor:
        """Prefix embeddings (B, P, n_embd) of a batch's pixels or features."""
        if self.hparams.encoder == "features":
            if "features" not in batch:
                raise XLabError("this CaptionModel reads precomputed features: set data.features.")
            return self.encoder(batch["features"].to(self.device))
        if "pixels" not in batch:
            raise XLabError(f"this CaptionModel ({self.hparams.encoder} encoder) reads pixels, but the data gives "
                            "features: unset data.features, or train with encoder: features.")
        prefix = self.encoder(self.pixels(batch["pixels"]))
        return prefix.to(self.transformer.wte.weight.dtype)

    def prefixed_logits(self, prefix: Tensor, input_ids: Tensor) -> Tensor:
        """Logits (B, T, V) of the text after the prefix."""
        P = prefix.shape[1]
        if P + input_ids.shape[1] > self.hparams.max_len:
            raise XLabError(f"the image prefix ({P}) plus {input_ids.shape[1]} tokens exceed max_len="
                            f"{self.hparams.max_len}: raise the model's max_len or lower data.max_caption_len.")
        x = torch.cat([prefix, self.transformer.wte(input_ids)], dim=1)
        return self(None, inputs_embeds=x)[:, P:]

    def batch_logits(self, batch: dict[str, Any]) -> Tensor:
        return self.prefixed_logits(self.encode(batch), batch["input_ids"])

    def decoding_view(self, prefix: Tensor) -> PrefixedDecoder:
        return PrefixedDecoder(self, prefix)

    def caption(self, prefix: Tensor, prompts: list[list[int]] | list[Tensor], settings, **kwargs) -> list[list[Tensor]]:
        """New tokens for each (prefix row, prompt): `xlab.inference.generate` on the decoding view."""
        rows = [torch.as_tensor(p, dtype=torch.long, device=self.device) for p in prompts]
        return inference.generate(self.decoding_view(prefix), rows, settings, **kwargs)

    def hf_export(self):
        raise XLabError("a CaptionModel cannot be exported to transformers: its image encoder and prefix have no "
                        "place in a transformers causal LM (export-checkpoint keeps the whole model).")

    # --- steps ----------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.hparams.scst:
            return scst_step(self, batch)
        return super().training_step(batch, batch_idx)

    def on_train_epoch_end(self) -> None:
        if self.hparams.scst:  # SCST logs its own curves; the token metrics saw no batch
            self.metrics["train_metrics"].reset()
            return
        super().on_train_epoch_end()

    # --- the starting checkpoint and SCST's reward -------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        path = self.hparams.start_checkpoint
        if stage == "fit" and path:
            # Before Lightning restores a resumed run's own checkpoint, which then wins.
            state = read_checkpoint(path)["state_dict"]
            try:
                self.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise XLabError(f"start_checkpoint {path} does not fit this CaptionModel's settings "
                                f"({' '.join(str(e).split())[:200]}).") from None

    def use_resource(self, kind: str, resource) -> None:
        if kind == "tokenizer":
            self.tokenizer = resource
        elif kind == "references":
            self.references = resource

    def on_fit_start(self) -> None:
        if self.hparams.scst:
            if self.references is None:
                raise XLabError("SCST scores captions against the training references: train with a "
                                "CaptionDataModule, which hands them over.")
            self.reward = CiderReward(self.references("train"), self.hparams.metric_tokenizer)


class _PrefixCache:
    """The decoder's KV cache as the text sees it: `length` leaves out the prefix positions."""

    def __init__(self, inner, prefix_len: int):
        self.inner, self.prefix_len = inner, prefix_len

    @property
    def length(self) -> int:
        return max(0, self.inner.length - self.prefix_len)

    def reset(self) -> None:
        self.inner.reset()

    def reorder(self, index: Tensor) -> None:
        self.inner.reorder(index)


class PrefixedDecoder(nn.Module):
    """A CaptionModel conditioned on prefixes (N, P, C), one per prompt, with the inference protocol.

    `xlab.inference` decodes rows that are each prompt repeated (samples, beams) side by side, so
    row r belongs to prompt r // (rows / N). Whenever the cache starts empty (the first pass, or a
    rebuild after the window slid) the prefix goes in ahead of the text; positions and padding
    masks the decoder receives are shifted past it. Its `max_len` is the room left for text.
    """

    def __init__(self, model: CaptionModel, prefix: Tensor):
        super().__init__()
        self.model, self.prefix = model, prefix
        self.prefix_len = prefix.shape[1]
        self.hparams = {**model.hparams, "max_len": model.hparams.max_len - self.prefix_len}
        if self.hparams["max_len"] < 2:
            raise XLabError(f"the image prefix ({self.prefix_len}) leaves no room for text in max_len="
                            f"{model.hparams.max_len}: raise the model's max_len.")
        self.train(model.training)
        self._rows = prefix

    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> _PrefixCache:
        if batch_size % len(self.prefix):
            raise ValueError(f"{batch_size} rows cannot be shared among {len(self.prefix)} prefixes")
        self._rows = self.prefix.repeat_interleave(batch_size // len(self.prefix), dim=0)
        text = max_len or self.hparams["max_len"]
        return _PrefixCache(self.model.new_cache(batch_size, text + self.prefix_len, dtype), self.prefix_len)

    def forward(self, input_ids: Tensor, cache: _PrefixCache, positions: Tensor | None = None,
                padding_mask: Tensor | None = None) -> Tensor:
        B, T = input_ids.shape
        P, device = self.prefix_len, input_ids.device
        if positions is None:
            positions = torch.arange(cache.length, cache.length + T, device=device).expand(B, T)
        positions = positions + P
        if padding_mask is not None:
            padding_mask = torch.cat([torch.ones(B, P, dtype=torch.bool, device=device), padding_mask.bool()], dim=1)
        x = self.model.transformer.wte(input_ids)
        if cache.inner.length > 0:
            return self.model(None, cache=cache.inner, positions=positions, padding_mask=padding_mask, inputs_embeds=x)
        x = torch.cat([self._rows.to(x.dtype), x], dim=1)
        positions = torch.cat([torch.arange(P, device=device).expand(B, P), positions], dim=1)
        logits = self.model(None, cache=cache.inner, positions=positions, padding_mask=padding_mask, inputs_embeds=x)
        return logits[:, P:]
