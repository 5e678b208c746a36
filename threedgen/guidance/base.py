"""The guidance interface, its input type and the one gradient-injection helper every objective uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..data.cameras import CameraBatch


@dataclass
class GuidanceInput:
    rgb: torch.Tensor  # [B,3,H,W] in [0,1]
    cameras: CameraBatch
    alpha: Optional[torch.Tensor] = None  # [B,1,H,W]
    depth: Optional[torch.Tensor] = None  # [B,1,H,W]
    normal: Optional[torch.Tensor] = None  # [B,3,H,W]
    mask: Optional[torch.Tensor] = None  # [B,1,H,W] the region an edit may change (1); None: everywhere


class Guidance(nn.Module):
    """A score-distillation (or other) objective. Subclasses define ``Config`` and take it first.

    ``forward`` returns ``{"loss_<name>": scalar, ...detached stats}``; the system weights every
    ``loss_*`` key with the schedule the config gives this guidance.
    """

    prior = None  # the shared prior (``prior_api.Prior``) this guidance uses (not a registered submodule), or None

    def forward(self, inp: GuidanceInput, prompts, step: int) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def check_render_size(self, height: int, width: int) -> None:
        """Called once at start-up with the render size: raise ValueError if the objective cannot take it."""

    def own_cameras(self, camera_cfg) -> Optional[CameraBatch]:
        """Fixed views this objective looks at instead of the step's random ones (a reference clip's
        camera at its times), or None; the system renders them for it on each step it runs."""
        return None

    def update_step(self, epoch: int, step: int) -> None:
        """Re-evaluate scheduled hyper-parameters; called once per step before ``forward``."""

    def param_groups(self) -> list[dict]:
        """Trainable parameters of the objective itself (VSD's LoRA); empty for most objectives."""
        return []

    def evaluate(self, inp: GuidanceInput, prompts, step: int) -> dict[str, torch.Tensor]:
        """Optional debug images ([B,3,H,W] in [0,1]) such as the noisy input and one-step denoised estimate."""
        return {}


def surrogate(
    z: torch.Tensor, grad: torch.Tensor, clip: Optional[float] = None, normalize: bool = False
) -> tuple[torch.Tensor, dict]:
    """Loss whose gradient w.r.t. ``z`` is exactly ``grad / B``.

    ``grad`` is detached; NaN/Inf entries are zeroed (and counted), then it is clipped elementwise
    to ``±clip`` if given, then (``normalize``, CSD's IF stage) divided by its L2 norm over the
    whole batch tensor (``g / (‖g‖ + 1e-8)``). The loss value (0.5‖g‖²/B) is not a quality metric. Returns
    ``(loss, stats)`` with ``grad_norm`` (of the whole batch), ``grad_norm_per_view`` (the mean over
    renders) and ``nonfinite`` counts.
    """
    grad = grad.detach()
    finite = torch.isfinite(grad)
    nonfinite = (~finite).sum()
    grad = torch.where(finite, grad, torch.zeros_like(grad))
    if clip is not None and clip > 0:
        grad = grad.clamp(-clip, clip)
    if normalize:
        grad = grad / (grad.norm() + 1e-8)
    target = (z - grad).detach()
    loss = 0.5 * ((z - target) ** 2).sum() / z.shape[0]
    stats = {
        "grad_norm": grad.norm().detach(),  # the whole batch's gradient, as threestudio and its descendants log it
        "grad_norm_per_view": grad.flatten(1).norm(dim=1).mean().detach(),
        "nonfinite": nonfinite.detach().float(),
    }
    return loss, stats
