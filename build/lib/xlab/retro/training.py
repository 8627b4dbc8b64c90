"""How the retrieval parts of RetroModel train next to its decoder.

The retrieval parts (the neighbour encoder, its input projection and norm, every chunked
cross-attention) are new weights on top of a decoder. Measured on real text
(bench/retro_diagnose.py), they may need their own learning rate (`retrieval_lr_scale`), and
their early gradients, large while they are untrained, would otherwise set the one global norm
that gradient clipping scales every update by, the decoder's included (`clip_retrieval_apart`).
"""

from __future__ import annotations

import torch
from torch import nn


class RetrievalTraining:
    """Mixed into RetroModel (a LanguageModel with `enc_in`, `encoder`, `enc_ln` and `layers` whose
    CCA layers have `ln_cca` and `cca`)."""

    def retrieval_parameters(self) -> list[nn.Parameter]:
        """What retrieval adds to the decoder: the encoder, its input projection and norm, every CCA."""
        parts = [self.enc_in, self.encoder, self.enc_ln]
        parts += [m for layer in self.layers if layer.cca is not None for m in (layer.ln_cca, layer.cca)]
        return [p for part in parts for p in part.parameters()]

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        groups = super().parameter_groups(weight_decay)
        scale = self.hparams.retrieval_lr_scale
        if scale == 1.0:
            return groups
        mine = {id(p) for p in self.retrieval_parameters()}
        split = []
        for group in groups:
            split.append({**group, "params": [p for p in group["params"] if id(p) not in mine]})
            split.append({**group, "params": [p for p in group["params"] if id(p) in mine],
                          "lr": group["lr"] * scale})  # the rate of its role (Muon's, AdamW's), scaled
        return [g for g in split if g["params"]]

    def clip_gradients_(self, max_norm: float) -> None:
        """Clip in place: one global norm, or the retrieval parts and the decoder apart."""
        params = [p for p in self.parameters() if p.grad is not None]
        if not self.hparams.clip_retrieval_apart:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            return
        mine = {id(p) for p in self.retrieval_parameters()}
        for part in ([p for p in params if id(p) not in mine], [p for p in params if id(p) in mine]):
            if part:
                torch.nn.utils.clip_grad_norm_(part, max_norm)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if not self.hparams.clip_retrieval_apart or not gradient_clip_val or gradient_clip_algorithm not in (None, "norm"):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        self.clip_gradients_(gradient_clip_val)

