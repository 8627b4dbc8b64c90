"""The optimizer a LanguageModel trains with: AdamW, or Muon for the hidden matrices and AdamW for the rest.

Muon (torch.optim.Muon) orthogonalises each update of a 2-D weight (Newton-Schulz iterations), so
every direction of a matrix moves by about the same amount: on the public GPT-2 speedrun it
reaches AdamW's loss in fewer tokens. It is defined for matrices that map one hidden space to
another only. An embedding is a lookup table (each row sees only its own token's gradient), the
output head scores tokens, and norms, biases and scalars are not matrices: those stay with AdamW.

Every parameter gets a role here and a group per (optimizer, learning rate, weight decay), in the
order of `model.parameters()`. With AdamW and no separate rates that is exactly two groups, decay
then no decay, as before the roles existed, so an optimizer state saved then still resumes.

Muon's step is scaled to the size of an AdamW step (torch's `adjust_lr_fn="match_rms_adamw"`: 0.2 *
sqrt(max(rows, cols))), so the AdamW learning rate is a sensible Muon rate to start from.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from torch.optim import AdamW, Muon, Optimizer

from xlab.common.errors import XLabError

OptimizerKind = Literal["adamw", "muon"]


def parameter_groups(model: nn.Module, head: nn.Module | None, hp: Any, weight_decay: float) -> list[dict]:
    """Groups of `model`'s trainable parameters, each with its `optimizer` (adamw or muon), `lr` and
    `weight_decay`; `head` is the output layer (None when the model has none of its own)."""
    optimizer = hp.get("optimizer", "adamw")
    rate = hp["learning_rate"]

    def own(name: str) -> float:  # a role's rate: its own setting, None meaning learning_rate
        value = hp.get(name)
        return rate if value is None else value

    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head_weight = head.weight if head is not None and id(head.weight) not in embeddings else None
    if hp.get("head_lr") is not None and head_weight is None:
        raise XLabError("model head_lr is set but the output head is the token embedding (tied): set embedding_lr, "
                        "or untie the head (tie_weights: false).")
    groups: dict[tuple, list] = {}
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if id(param) in embeddings:
            key = ("adamw", own("embedding_lr"), 0.0)
        elif param is head_weight:
            key = ("adamw", own("head_lr"), weight_decay)
        elif param.dim() == 2 and optimizer == "muon":
            key = ("muon", own("muon_lr"), weight_decay)
        else:  # decay matrices (and conv kernels) only: norms and biases keep their scale (GPT-2, nanoGPT)
            key = ("adamw", rate, weight_decay if param.dim() >= 2 else 0.0)
        groups.setdefault(key, []).append(param)
    if optimizer == "muon" and not any(kind == "muon" for kind, _, _ in groups):
        raise XLabError(f"model optimizer=muon but {type(model).__name__} has no trainable 2-D hidden weights to give "
                        "it: use optimizer adamw.")
    # Decayed groups first: the layout AdamW had before there were roles (decay, then no decay).
    ordered = sorted(groups.items(), key=lambda item: item[0][2] == 0.0)
    return [{"params": params, "optimizer": kind, "lr": lr, "weight_decay": decay}
            for (kind, lr, decay), params in ordered]


def build_optimizer(groups: list[dict], betas: tuple[float, float], muon_momentum: float, fused: bool) -> Optimizer:
    """AdamW over `groups`, or Muon over those marked muon together with AdamW over the others."""
    muon, adamw = [], []
    for group in groups:
        group = dict(group)
        (muon if group.pop("optimizer", "adamw") == "muon" else adamw).append(group)
    if not muon:
        return AdamW(adamw, betas=betas, fused=fused)
    return MuonWithAdamW(muon, adamw, betas, muon_momentum, fused)


class MuonWithAdamW(Optimizer):
    """One optimizer for Lightning, the schedule and checkpoints, made of a Muon and an AdamW.

    Lightning's automatic optimisation and LambdaLR want a single optimizer. This one's groups are
    the parts' groups (the same dicts: a rate the schedule sets is the rate the part uses) and its
    state is the parts' state (one dict: their parameters are disjoint), so the inherited
    `state_dict`, `zero_grad` and gradient clipping see every parameter; `step` runs both parts.
    """

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], betas: tuple[float, float],
                 momentum: float, fused: bool):
        self.parts: list[Optimizer] = [Muon(muon_groups, momentum=momentum, nesterov=True,
                                            adjust_lr_fn="match_rms_adamw")]
        if adamw_groups:
            self.parts.append(AdamW(adamw_groups, betas=betas, fused=fused))
        super().__init__([group for part in self.parts for group in part.param_groups], {})
        self._share()

    def _share(self) -> None:
        start = 0
        for part in self.parts:
            part.param_groups = self.param_groups[start:start + len(part.param_groups)]
            part.state = self.state
            start += len(part.param_groups)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._share()  # loading made new group dicts and a new state: the parts follow them

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self.parts:
            part.step()
        return loss
