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


def shading_modes(shading: str, valid: tuple[str, ...], probs, B: int, device, training: bool) -> torch.Tensor:
    """Per-image shading code (an index into ``valid``) for a batch of ``B`` renders.

    ``"random"`` draws each image's mode from ``probs`` over ``valid`` while training (DreamFusion's
    albedo / lambertian / textureless mix) and is plain albedo (code 0) in evaluation renders.
    """
    if shading == "random":
        if not training:
            return torch.zeros(B, dtype=torch.long, device=device)
        p = torch.tensor(probs, dtype=torch.float)
        return torch.multinomial(p / p.sum(), B, replacement=True).to(device)
    if shading not in valid:
        raise ValueError(f"unknown shading {shading!r}; valid: {', '.join(valid + ('random',))}")
    return torch.full((B,), valid.index(shading), dtype=torch.long, device=device)



def render_by_time(render_one, rep, cameras: CameraBatch, per_view_meta: tuple[str, ...] = ()) -> RenderOutput:
    """Render a moving scene for a batch whose cameras carry times (``None``: time 0, the canonical scene at
    rest): ``render_one(rep.at_time(t), cameras_of_t)`` once per distinct time, outputs in the cameras' order,
    ``meta["by_time"]`` the per-time metas; the ``per_view_meta`` entries (one row per view) are joined in order too."""
    times = cameras.time if cameras.time is not None else torch.zeros(len(cameras))
    uniq, inv = torch.unique(times.detach().cpu(), return_inverse=True)
    parts, order = [], []
    for k, t in enumerate(uniq.tolist()):
        idx = torch.nonzero(inv == k).squeeze(1)
        parts.append(render_one(rep.at_time(t), cameras[idx]))
        order.append(idx)
    back = torch.argsort(torch.cat(order)).to(parts[0].rgb.device)

    def cat(name):
        ts = [getattr(o, name) for o in parts]
        return None if ts[0] is None else torch.cat(ts)[back]

    meta = {"by_time": [o.meta for o in parts], "times": uniq}
    for key in per_view_meta:
        if key in parts[0].meta:
            meta[key] = torch.cat([o.meta[key] for o in parts])[back.to(parts[0].meta[key].device)]
    return RenderOutput(rgb=cat("rgb"), alpha=cat("alpha"), depth=cat("depth"), normal=cat("normal"), meta=meta)
