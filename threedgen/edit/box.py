"""The edit box: an axis-aligned region of the world where an object may be inserted or replaced.

Checked before any training (issue 19's bad-input list): six finite numbers, non-empty and not
inverted, and its centre inside the scene's robust bounds (the 0.5–99.5 % percentile box of the
Gaussian centres, widened by 10 %), so a typo that puts the box metres away is caught.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class EditBox:
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    @staticmethod
    def parse(values: Sequence) -> "EditBox":
        """``[x0, y0, z0, x1, y1, z1]`` (world units, +Y up) -> an ``EditBox``; ValueError naming the fault."""
        try:
            v = [float(x) for x in values]
        except (TypeError, ValueError):
            raise ValueError(f"edit.box must be six numbers [x0,y0,z0,x1,y1,z1], got {values!r}") from None
        if len(v) != 6:
            raise ValueError(f"edit.box must be six numbers [x0,y0,z0,x1,y1,z1], got {len(v)}: {values!r}")
        if not all(map(lambda x: x == x and abs(x) != float("inf"), v)):
            raise ValueError(f"edit.box has a NaN or infinite value: {v}")
        lo, hi = tuple(v[:3]), tuple(v[3:])
        bad = [a for a, l, h in zip("xyz", lo, hi) if not h > l]
        if bad:
            raise ValueError(f"edit.box is empty or inverted along {', '.join(bad)} (lo {list(lo)}, hi {list(hi)}); "
                             "each of x1, y1, z1 must be greater than x0, y0, z0")
        return EditBox(lo, hi)

    @property
    def center(self) -> torch.Tensor:
        return (torch.tensor(self.lo) + torch.tensor(self.hi)) / 2

    @property
    def half(self) -> torch.Tensor:
        return (torch.tensor(self.hi) - torch.tensor(self.lo)) / 2

    def corners(self) -> torch.Tensor:
        """The eight corners ``[8,3]``."""
        lo, hi = torch.tensor(self.lo), torch.tensor(self.hi)
        bits = torch.tensor([[(i >> k) & 1 for k in range(3)] for i in range(8)], dtype=torch.float32)
        return lo + bits * (hi - lo)

    def contains(self, points: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
        """``[N]`` bool: which points ``[N,3]`` lie inside the box grown by ``margin``."""
        lo = torch.tensor(self.lo, device=points.device) - margin
        hi = torch.tensor(self.hi, device=points.device) + margin
        return ((points >= lo) & (points <= hi)).all(-1)

    def check_in_scene(self, means: torch.Tensor) -> None:
        """ValueError when the box centre lies outside the scene's robust bounds (see the module doc)."""
        if means.shape[0] == 0:
            return
        sub = means.float()[:: max(1, means.shape[0] // 200_000)]  # strided: no draw from the global generator
        q = torch.quantile(sub, torch.tensor([0.005, 0.995], device=sub.device), dim=0).cpu()
        pad = (q[1] - q[0]) * 0.1
        lo, hi = q[0] - pad, q[1] + pad
        c = self.center
        if not bool(((c >= lo) & (c <= hi)).all()):
            raise ValueError(
                f"edit.box centre {[round(x, 3) for x in c.tolist()]} lies outside the scene's bounds "
                f"{[round(x, 3) for x in lo.tolist()]} .. {[round(x, 3) for x in hi.tolist()]} (world, +Y up); "
                "check the box's units and the scene's axes (system.edit.axes)"
            )
