"""Backgrounds composited behind a render: solid colour, random colour while training, learned MLP.

A background maps unit ray directions ``[..., 3]`` to colours ``[..., 3]`` in [0,1], so every
renderer composites it the same way: ``rgb = rgb_fg + (1 - alpha) * background(dirs)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..schedule import Schedule


class Background(nn.Module):
    def forward(self, dirs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "name": "background"}] if params else []


class SolidBackground(Background):
    @dataclass
    class Config:
        RANGES = {"color": (0, 1), "p": (0, 1)}
        color: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __init__(self, cfg: "SolidBackground.Config"):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("color", torch.tensor(cfg.color, dtype=torch.float32), persistent=False)

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        return self.color.to(dirs.dtype).expand(dirs.shape)


class RandomSolidBackground(SolidBackground):
    """The configured colour at evaluation; while training, a random colour per image with probability ``p``.

    Random backgrounds stop the scene from hiding density of the background colour ("white fog").
    """

    @dataclass
    class Config:
        RANGES = {"color": (0, 1), "p": (0, 1)}
        color: tuple[float, float, float] = (1.0, 1.0, 1.0)
        p: float = 0.5

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        base = super().forward(dirs)
        if not self.training or dirs.dim() < 2:
            return base
        B = dirs.shape[0]
        shape = (B,) + (1,) * (dirs.dim() - 2) + (3,)
        rand = torch.rand(shape, device=dirs.device, dtype=dirs.dtype)
        use = (torch.rand((B,) + (1,) * (dirs.dim() - 1), device=dirs.device) < self.cfg.p).to(dirs.dtype)
        return base * (1 - use) + rand.expand(dirs.shape) * use


class MLPBackground(Background):
    """A small view-dependent background: frequency-encoded direction -> MLP -> sigmoid colour."""

    @dataclass
    class Config:
        RANGES = {"n_frequencies": (0, 16), "hidden": (1, 1024), "random_aug": (0, 1)}
        n_frequencies: int = 4
        hidden: int = 32
        lr: Schedule = Schedule(1e-3)
        random_aug: float = 0.0
        """Probability of replacing the background with a random colour during training."""

    def __init__(self, cfg: "MLPBackground.Config"):
        super().__init__()
        self.cfg = cfg
        n_in = 3 + 6 * cfg.n_frequencies
        self.mlp = nn.Sequential(nn.Linear(n_in, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 3))

    def encode(self, d: torch.Tensor) -> torch.Tensor:
        freqs = 2.0 ** torch.arange(self.cfg.n_frequencies, device=d.device, dtype=d.dtype) * torch.pi
        x = d[..., None] * freqs  # [...,3,F]
        return torch.cat([d, torch.sin(x).flatten(-2), torch.cos(x).flatten(-2)], dim=-1)

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        out = torch.sigmoid(self.mlp(self.encode(dirs)))
        if self.training and self.cfg.random_aug > 0 and dirs.dim() >= 2:
            B = dirs.shape[0]
            use = (torch.rand((B,) + (1,) * (dirs.dim() - 1), device=dirs.device) < self.cfg.random_aug).to(out.dtype)
            rand = torch.rand((B,) + (1,) * (dirs.dim() - 2) + (3,), device=dirs.device, dtype=out.dtype)
            out = out * (1 - use) + rand.expand_as(out) * use
        return out

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.parameters()), "name": "background", "lr": self.cfg.lr}]
