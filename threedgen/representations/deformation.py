"""A deformation field over space and time: D(x, τ) -> (Δposition, Δrotation, Δlog-scale).

Why a HexPlane (K-Planes / 4D-GS style) and not a 4D hash grid: six small feature planes (xy, xz, yz,
xτ, yτ, zτ) at a few spatial resolutions are sampled with ``grid_sample`` in pure torch at the same
speed on a CPU as on a GPU, and their smoothness along τ is one finite difference on the plane's time
axis (the regulariser a slowly moving object wants). Features of the six planes are multiplied per
level (K-Planes); the time planes start at 1, so at initialisation the field is a static function of x,
and the heads' last layers start at 0, so the deformation is exactly zero: the static stage's scene
is the canonical one and the dynamic stage starts from it unchanged.

``threedgen/representations/dynamic_gaussians.py`` applies it to 3D Gaussians.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SPATIAL_PAIRS = ((0, 1), (0, 2), (1, 2))
"""Plane axes (x=0, y=1, z=2); the time planes pair each axis with τ."""


@dataclass
class DeformationConfig:
    resolutions: tuple[int, ...] = (16, 32)
    """Spatial resolution of each level's planes (the field's detail)."""
    time_resolution: int = 16
    """Samples along τ of the time planes (the motion's detail over a clip)."""
    features: int = 16
    """Channels per plane and level."""
    mlp_width: int = 64
    bound: float = 1.0
    """Half-size of the cube [-bound, bound]^3 the planes cover (points outside are clamped to it)."""
    rotation: bool = False
    """Also predict a quaternion offset per Gaussian (Δrotation)."""
    scale: bool = False
    """Also predict a log-scale offset per Gaussian (Δscale)."""
    max_displacement: float = 0.5
    """Δposition is ``max_displacement * tanh(raw)``: motion stays bounded whatever the field learns."""
    global_motion: bool = False
    """Add a translation of the whole scene over time (``time_resolution`` samples along τ, linearly
    interpolated, bounded by ``max_displacement * tanh``) to the planes' local offsets. The planes multiply
    random spatial features, so the same offset everywhere — an object travelling as one piece — is the
    hardest motion for them to express; with this term it is the easiest."""


class HexPlaneField(nn.Module):
    def __init__(self, cfg: DeformationConfig):
        super().__init__()
        if not cfg.resolutions or min(cfg.resolutions) < 2 or cfg.time_resolution < 2:
            raise ValueError(f"deformation resolutions must be >= 2, got {list(cfg.resolutions)} and time {cfg.time_resolution}")
        if cfg.bound <= 0 or cfg.max_displacement <= 0:
            raise ValueError(f"deformation bound and max_displacement must be > 0, got {cfg.bound}, {cfg.max_displacement}")
        self.cfg = cfg
        C, T = cfg.features, cfg.time_resolution
        self.spatial = nn.ParameterList(nn.Parameter(torch.empty(3, C, r, r).uniform_(0.1, 0.5)) for r in cfg.resolutions)
        self.temporal = nn.ParameterList(nn.Parameter(torch.ones(3, C, T, r)) for r in cfg.resolutions)
        width = C * len(cfg.resolutions)
        self.trunk = nn.Sequential(nn.Linear(width, cfg.mlp_width), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({"dx": nn.Linear(cfg.mlp_width, 3)})
        if cfg.rotation:
            self.heads["dq"] = nn.Linear(cfg.mlp_width, 4)
        if cfg.scale:
            self.heads["ds"] = nn.Linear(cfg.mlp_width, 3)
        for head in self.heads.values():
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.trajectory = nn.Parameter(torch.zeros(T, 3)) if cfg.global_motion else None

    def features(self, xyz: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``[N, C * levels]`` plane features at points ``[N,3]`` and times ``[N]`` in [0, 1]."""
        p = (xyz / self.cfg.bound).clamp(-1, 1)
        tau = t.to(p).reshape(-1, 1).expand(len(p), 1) * 2 - 1
        out = []
        for spatial, temporal in zip(self.spatial, self.temporal):
            f = 1.0
            for k, (a, b) in enumerate(SPATIAL_PAIRS):
                f = f * _sample(spatial[k], p[:, a], p[:, b])
            for k in range(3):  # plane k: columns = axis k, rows = τ
                f = f * _sample(temporal[k], p[:, k], tau[:, 0])
            out.append(f)
        return torch.cat(out, -1)

    def forward(self, xyz: torch.Tensor, t) -> dict[str, torch.Tensor]:
        """Offsets at points ``[N,3]`` and time ``t`` (a float or ``[N]``): ``dx`` [N,3], and ``dq`` [N,4] /
        ``ds`` [N,3] when enabled."""
        t = torch.as_tensor(t, dtype=xyz.dtype, device=xyz.device)
        h = self.trunk(self.features(xyz, t))
        out = {k: head(h) for k, head in self.heads.items()}
        out["dx"] = self.cfg.max_displacement * torch.tanh(out["dx"])
        if self.trajectory is not None:
            out["dx"] = out["dx"] + self.global_offset(t).to(out["dx"])
        return out

    def global_offset(self, t) -> torch.Tensor:
        """The whole-scene translation at time(s) ``t`` (``[3]`` or ``[N,3]``), linear between the table's samples."""
        t = torch.as_tensor(t, dtype=self.trajectory.dtype, device=self.trajectory.device).clamp(0, 1)
        pos = t * (len(self.trajectory) - 1)
        i0 = pos.floor().long().clamp(max=len(self.trajectory) - 2)
        w = (pos - i0)[..., None]
        raw = self.trajectory[i0] * (1 - w) + self.trajectory[i0 + 1] * w
        return self.cfg.max_displacement * torch.tanh(raw)

    def smoothness(self) -> torch.Tensor:
        """K-Planes' time smoothness: the squared second difference along τ of every time plane, plus
        the total variation of the time planes across space (mean over entries), plus the second
        difference of the whole-scene path where there is one."""
        loss = torch.zeros((), device=self.temporal[0].device)
        for temporal in self.temporal:
            d2 = temporal[:, :, 2:] - 2 * temporal[:, :, 1:-1] + temporal[:, :, :-2]
            tv = temporal[..., 1:] - temporal[..., :-1]
            loss = loss + d2.square().mean() + tv.square().mean()
        loss = loss / len(self.temporal)
        if self.trajectory is not None:  # the whole-scene path: no jerks either
            j = self.trajectory
            loss = loss + (j[2:] - 2 * j[1:-1] + j[:-2]).square().mean()
        return loss


def adopt_canonical(scene: nn.Module, src: nn.Module, static_type: type, needs: str) -> None:
    """Load a moving ``scene``'s canonical part from a static stage's ``src`` of exactly ``static_type``,
    keeping the scene's own (zero-motion) ``deformation.*`` field, or copy ``src`` whole when it is a
    moving scene of the same type. ``needs`` says, in the error, what the static stage must be."""
    if isinstance(src, type(scene)):
        scene.load_state_dict(src.state_dict())
        return
    if type(src) is not static_type:
        raise TypeError(f"the canonical scene of {type(scene).__name__} must come from {needs}, got a "
                        f"{type(src).__name__}; make the static stage {needs}")
    own = {k: v for k, v in scene.state_dict().items() if k.startswith("deformation.")}
    scene.load_state_dict({**src.state_dict(), **own})


def _sample(plane: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bilinear samples ``[N, C]`` of a ``[C, V, U]`` plane at ``u`` (columns) and ``v`` (rows) in [-1, 1]."""
    grid = torch.stack([u, v], -1)[None, :, None]  # [1,N,1,2]
    return F.grid_sample(plane[None], grid, mode="bilinear", align_corners=True)[0, :, :, 0].t()
