"""What every renderer returns and the interface it implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from ..data.cameras import CameraBatch


@dataclass
class RenderOutput:
    """Renders in ``[B,C,H,W]``; ``meta`` holds the representation's own bookkeeping."""

    rgb: torch.Tensor  # [B,3,H,W] in [0,1], background composited
    alpha: torch.Tensor  # [B,1,H,W]
    depth: torch.Tensor  # [B,1,H,W] (expected depth along the ray, 0 where empty)
    normal: Optional[torch.Tensor] = None  # [B,3,H,W] world-space unit normals (alpha-weighted)
    meta: dict[str, Any] = field(default_factory=dict)


class Renderer(nn.Module):
    """Renders a representation for a batch of cameras; holds no trainable parameters."""

    def forward(
        self, representation, cameras: CameraBatch, background, shading: str = "albedo"
    ) -> RenderOutput:  # pragma: no cover - interface
        raise NotImplementedError
