"""The volume renderer's occupancy grid (Instant-NGP): which cells of the AABB may hold density.

Both of the renderer's paths use it: the torch path drops samples in empty cells before they reach
the MLP, and nerfacc's sampler marches the same buffers on CUDA (threedgen/renderers/volume.py).
"""

from __future__ import annotations

import torch
from torch import nn


class OccupancyGrid(nn.Module):
    """A ``R^3`` grid over the AABB of per-cell occupancy (density x step), updated by EMA of max.

    Mirrors nerfacc's ``OccGridEstimator`` update (``occ = max(occ * decay, new)``; a cell is occupied
    when ``occ > min(mean(occ), threshold)``) and its cell layout (``[ix, iy, iz]``), so the CUDA
    path can hand these buffers straight to nerfacc. Buffers are checkpointed with the renderer.
    The two counters are also kept on the host, so deciding whether a refresh is due never waits for
    the device (they are read from the buffers once after a checkpoint load).
    """

    def __init__(self, resolution: int):
        super().__init__()
        self.resolution = int(resolution)
        R = self.resolution
        self.register_buffer("occs", torch.zeros(R, R, R))
        self.register_buffer("binary", torch.ones(R, R, R, dtype=torch.bool))
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("n_calls", torch.zeros((), dtype=torch.long))
        self._counts = None  # host copies of (n_updates, n_calls)

    def counts(self) -> tuple[int, int]:
        """(refreshes so far, training renders so far)."""
        if self._counts is None:
            self._counts = (int(self.n_updates), int(self.n_calls))
        return self._counts

    def count_call(self) -> None:
        updates, calls = self.counts()
        self.n_calls.fill_(calls + 1)
        self._counts = (updates, calls + 1)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._counts = None

    def query(self, x: torch.Tensor, radius: float) -> torch.Tensor:
        """Occupied? for world points x [..., 3] inside the AABB."""
        R = self.resolution
        i = ((x + radius) * (R / (2 * radius))).long().clamp_(0, R - 1)
        return self.binary[i[..., 0], i[..., 1], i[..., 2]]

    @torch.no_grad()
    def update(self, density_fn, radius: float, step_size: float, threshold: float, decay: float, chunk: int = 65536):
        """One EMA refresh from a random point per cell (8 per cell the first time, so the grid is
        reliable before training has had the chance to revisit cells)."""
        R = self.resolution
        dev = self.occs.device
        ar = torch.arange(R, device=dev)
        cells = torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij"), -1).reshape(-1, 3)
        occ = torch.zeros(R**3, device=dev)
        updates, calls = self.counts()
        for _ in range(8 if updates == 0 else 1):
            x = (cells + torch.rand(cells.shape, device=dev)) * (2 * radius / R) - radius
            d = torch.cat([density_fn(c).float().reshape(-1) for c in x.split(chunk)])
            occ = torch.maximum(occ, d * step_size)
        self.occs.copy_(torch.maximum(self.occs * decay, occ.view(R, R, R)))
        self.binary.copy_(self.occs > self.occs.mean().clamp(max=threshold))
        self.n_updates.fill_(updates + 1)
        self._counts = (updates + 1, calls)

    @property
    def occupied_fraction(self) -> torch.Tensor:
        """The fraction of occupied cells, a 0-d tensor on the grid's device (read it when logging)."""
        return self.binary.float().mean()
