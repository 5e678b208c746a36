"""The view-dependent prompt rule, shared by the prompt processor and the toy world's captions."""

from __future__ import annotations

import torch

VIEWS = ("side", "front", "back", "overhead")
"""Index order of view-dependent embeddings everywhere in threedgen."""


def wrap_degrees(azimuth_deg: torch.Tensor) -> torch.Tensor:
    """Wrap to (-180, 180]."""
    a = torch.remainder(azimuth_deg + 180.0, 360.0) - 180.0
    return torch.where(a == -180.0, torch.full_like(a, 180.0), a)


def view_index(
    elevation_deg: torch.Tensor,
    azimuth_deg: torch.Tensor,
    front_threshold: float = 45.0,
    back_threshold: float = 45.0,
    overhead_threshold: float = 60.0,
) -> torch.Tensor:
    """Index into ``VIEWS`` per camera; later rules override earlier ones (side < front < back < overhead).
    Computed where the angles are (a GPU's cameras need no copy to the host, so no wait for the device)."""
    az = wrap_degrees(torch.as_tensor(azimuth_deg, dtype=torch.float32))
    el = torch.as_tensor(elevation_deg, dtype=torch.float32, device=az.device)
    idx = torch.zeros(az.shape, dtype=torch.long, device=az.device)
    idx = torch.where(az.abs() < front_threshold, torch.ones_like(idx), idx)
    idx = torch.where(az.abs() > 180.0 - back_threshold, torch.full_like(idx, 2), idx)
    idx = torch.where(el > overhead_threshold, torch.full_like(idx, 3), idx)
    return idx


def view_prompt(prompt: str, view: str, prefix: bool = False) -> str:
    """``"<prompt>, front view"`` (or ``"front view of <prompt>"`` with ``prefix``)."""
    return f"{view} view of {prompt}" if prefix else f"{prompt}, {view} view"
