"""Multi-resolution hash encoding (Instant-NGP) in pure torch, with tiny-cuda-nn on CUDA when installed.

The torch path follows tiny-cuda-nn's ``HashGrid`` exactly, so one parameter vector means the same
field on either path (and a tcnn checkpoint loads into the torch grid):

- level ``l`` has ``scale_l = base * b**l - 1`` and ``res_l = ceil(scale_l) + 1`` grid points per axis,
  ``b = exp((ln max_res - ln base) / (L - 1))``; a point ``x`` in [0,1]^3 maps to ``x * scale_l + 0.5``;
- a level whose dense grid ``res_l**3`` fits the table is indexed densely (``x + y*res + z*res**2``),
  otherwise by the spatial hash ``(x*1) ^ (y*2654435761) ^ (z*805459861) mod 2**T``;
- level sizes are rounded up to a multiple of 8 and capped at ``2**T``; all levels live in one table
  ``[sum(sizes), F]`` with per-level offsets, initialised U(-1e-4, 1e-4) (``init_scale``);
- the 8 corners are blended trilinearly.

All levels and corners are computed at once and gathered with a single index, which is what makes it
usable on a CPU. ``mask_levels(n)`` zeroes levels >= n for coarse-to-fine training.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

PRIMES = (1, 2654435761, 805459861)


@dataclass
class HashGridConfig:
    RANGES = {"n_levels": (1, 32), "n_features_per_level": (1, 8), "log2_hashmap_size": (4, 26),
              "base_resolution": (1, 4096), "max_resolution": (1, 1 << 16), "init_scale": (0.0, 10.0)}
    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    max_resolution: int = 2048
    """Finest level resolution; sets the per-level growth factor."""
    init_scale: float = 1e-4
    """Table entries start U(-init_scale, init_scale) (tiny-cuda-nn's 1e-4: the field starts as the MLP's
    constant output, i.e. as symmetric as the density bias)."""
    backend: Literal["auto", "cuda", "torch"] = "auto"
    """auto: tiny-cuda-nn's HashGrid when it imports and the inputs are on CUDA, else torch;
    cuda: require tiny-cuda-nn for CUDA inputs; torch: always the torch encoding."""


class HashGrid(nn.Module):
    """Encodes points in [0,1]^3 as ``[..., n_levels * n_features_per_level]`` features."""

    def __init__(self, cfg: HashGridConfig):
        super().__init__()
        self.cfg = cfg
        L, T = cfg.n_levels, 2**cfg.log2_hashmap_size
        self.per_level_scale = (
            math.exp((math.log(cfg.max_resolution) - math.log(cfg.base_resolution)) / (L - 1)) if L > 1 else 1.0
        )
        scales, res, sizes, offsets, hashed = level_layout(cfg, self.per_level_scale)
        self.n_output_dims = L * cfg.n_features_per_level
        self.n_levels = L
        self.active_levels = L
        self.register_buffer("scales", torch.tensor(scales, dtype=torch.float32), persistent=False)
        self.register_buffer("res", torch.tensor(res, dtype=torch.long), persistent=False)
        self.register_buffer("sizes", torch.tensor(sizes, dtype=torch.long), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        # resolution grows with the level, so the dense levels come first
        self.n_dense = sum(1 for h in hashed if not h)
        self.hashed_levels = L - self.n_dense
        assert not any(hashed[: self.n_dense]), hashed
        # flat like tcnn's params so the two paths can share one Parameter
        n_params = (offsets[-1] + sizes[-1]) * cfg.n_features_per_level
        self.params = nn.Parameter(torch.empty(n_params).uniform_(-cfg.init_scale, cfg.init_scale))
        self.T = T
        self._tcnn = None  # built lazily on the first CUDA call; not a registered submodule
        self._tcnn_failed = False

    @property
    def table(self) -> torch.Tensor:
        return self.params.view(-1, self.cfg.n_features_per_level)

    def mask_levels(self, n: int) -> None:
        """Only the first ``n`` levels contribute (the rest output zeros)."""
        self.active_levels = max(1, min(int(n), self.n_levels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        x = x.reshape(-1, 3).clamp(0.0, 1.0)
        out = None
        if x.is_cuda and self.cfg.backend != "torch" and not self._tcnn_failed:
            out = self._forward_tcnn(x)
        if out is None:
            out = hash_encode(
                x, self.params, self.cfg.n_features_per_level, self.scales, self.res, self.sizes, self.offsets,
                self.n_dense, self.cfg.log2_hashmap_size,
            )
        if self.active_levels < self.n_levels:
            F = self.cfg.n_features_per_level
            mask = torch.zeros(self.n_levels, 1, device=out.device, dtype=out.dtype)
            mask[: self.active_levels] = 1
            out = out * mask.expand(-1, F).reshape(1, -1)
        return out.reshape(*shape, self.n_output_dims)

    def _forward_tcnn(self, x: torch.Tensor):
        try:
            if self._tcnn is None:
                import tinycudann as tcnn  # CUDA only; never required

                enc = tcnn.Encoding(
                    3,
                    {
                        "otype": "HashGrid",
                        "n_levels": self.cfg.n_levels,
                        "n_features_per_level": self.cfg.n_features_per_level,
                        "log2_hashmap_size": self.cfg.log2_hashmap_size,
                        "base_resolution": self.cfg.base_resolution,
                        "per_level_scale": self.per_level_scale,
                        "interpolation": "Linear",
                    },
                    dtype=torch.float32,
                )
                if enc.params.numel() != self.params.numel():
                    raise RuntimeError(f"tcnn grid has {enc.params.numel()} params, torch grid {self.params.numel()}")
                enc.params = self.params  # share the one Parameter
                self._tcnn = [enc.to(x.device)]  # a list keeps it out of state_dict / parameters()
                log.info("hash grid: using tiny-cuda-nn")
            enc = self._tcnn[0]
            enc.params = self.params
            return enc(x).float()
        except Exception as e:  # ImportError, or a tcnn build/runtime failure
            if self.cfg.backend == "cuda":
                raise RuntimeError(f"hash grid backend 'cuda' needs a working tinycudann: {e}") from e
            self._tcnn_failed = True
            log.info("hash grid: tiny-cuda-nn unavailable (%s); using the torch encoding", e)
            return None


def level_layout(cfg: HashGridConfig, per_level_scale: float):
    """Per-level (scale, resolution, table size, offset, hashed?) as tiny-cuda-nn lays them out."""
    T = 2**cfg.log2_hashmap_size
    scales, res, sizes, offsets, hashed = [], [], [], [], []
    offset = 0
    for lvl in range(cfg.n_levels):
        s = 2.0 ** (lvl * math.log2(per_level_scale)) * cfg.base_resolution - 1.0
        r = int(math.ceil(s)) + 1
        dense = r**3
        size = min(-(-dense // 8) * 8, T)
        scales.append(s)
        res.append(r)
        sizes.append(size)
        offsets.append(offset)
        hashed.append(dense > size)
        offset += size
    return scales, res, sizes, offsets, hashed


def hash_encode(x, params, F, scales, res, sizes, offsets, n_dense: int, log2_T: int) -> torch.Tensor:
    """Vectorised encoding: x [N,3] in [0,1] -> [N, L*F].

    Points are the innermost (contiguous) axis of every intermediate so element-wise ops vectorise;
    levels ``< n_dense`` are dense, the rest hashed (resolution grows with the level). Each feature is
    one 1-D gather from the flat table (much faster on CPU than gathering rows, forward and backward).
    """
    N, L = x.shape[0], scales.shape[0]
    pos = scales.to(x.dtype)[:, None, None] * x.t().contiguous()[None]  # [L,3,N]
    pos += 0.5
    p0 = pos.floor()
    t = pos.sub_(p0)  # in place: big temporaries cost page faults on CPU
    w = torch.stack([1 - t, t], 2)  # [L,3,2,N] weight of the lower / upper corner per axis
    W = (w[:, 0, :, None, None] * w[:, 1, None, :, None] * w[:, 2, None, None, :]).reshape(L, 8, N)
    c = p0.int()
    c = torch.stack([c, c + 1], 2)  # [L,3,2,N] corner coordinates per axis
    idx = torch.empty(L, 2, 2, 2, N, dtype=torch.int32, device=x.device)
    nd = n_dense
    if nd > 0:
        r = res[:nd].int()
        a = c[:nd] * torch.stack([torch.ones_like(r), r, r * r], -1)[:, :, None, None]  # [Ld,3,2,N]
        a[:, 0] += offsets[:nd, None, None].int()
        i = idx[:nd]
        i.copy_(a[:, 0, :, None, None])
        i += a[:, 1, None, :, None]
        i += a[:, 2, None, None, :]
        # tcnn wraps the index modulo the level size; it can exceed it by < one size at the far faces
        end = (offsets[:nd] + sizes[:nd]).int()[:, None, None, None, None]
        i -= (i >= end).int() * sizes[:nd].int()[:, None, None, None, None]
    if nd < L:
        a = _hash_terms(c[nd:], log2_T)  # [Lh,3,2,N]
        i = idx[nd:]
        i.copy_(a[:, 0, :, None, None])
        i ^= a[:, 1, None, :, None]
        i ^= a[:, 2, None, None, :]
        i += offsets[nd:].int()[:, None, None, None, None]
    idx, W = idx.view(-1), W.reshape(-1)
    table = params.view(-1, F)
    # F x [L,N]; one strided 1-D gather per feature
    feats = [(table[:, f].index_select(0, idx) * W).view(L, 8, N).sum(1) for f in range(F)]
    return torch.stack(feats, -1).permute(1, 0, 2).reshape(N, L * F)


def _hash_terms(c: torch.Tensor, log2_T: int) -> torch.Tensor:
    """Per-axis hash terms ``(c * prime) mod 2**T`` in int32 arithmetic, for c [L,3,2,N] int32 < 2**15.

    ``(a ^ b ^ c) mod 2**T`` equals the XOR of the terms each taken mod 2**T, so the uint32 products of
    tcnn can be reduced per axis. The 32-bit prime is split in 16-bit halves so nothing overflows.
    """
    mask = 2**log2_T - 1
    out = torch.empty_like(c)
    out[:, 0] = c[:, 0] & mask  # prime 1
    for d in (1, 2):
        lo, hi = PRIMES[d] & 0xFFFF, PRIMES[d] >> 16
        t = c[:, d] * lo
        if log2_T > 16:
            t += ((c[:, d] * hi) & (2 ** (log2_T - 16) - 1)) << 16
        out[:, d] = t & mask
    return out


def hash_encode_reference(x: torch.Tensor, grid: HashGrid) -> torch.Tensor:
    """Plain per-level, per-corner loop (the test oracle for ``hash_encode``); x [N,3] in [0,1]."""
    cfg = grid.cfg
    F, T = cfg.n_features_per_level, 2**cfg.log2_hashmap_size
    table = grid.table
    outs = []
    offset = 0
    for lvl in range(cfg.n_levels):
        scale = cfg.base_resolution * grid.per_level_scale**lvl - 1.0
        resolution = math.ceil(scale) + 1
        size = min(((resolution**3 + 7) // 8) * 8, T)
        p = x * scale + 0.5
        p0 = torch.floor(p)
        t = p - p0
        p0 = p0.long()
        acc = torch.zeros(x.shape[0], F, dtype=x.dtype)
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    ix, iy, iz = p0[:, 0] + dx, p0[:, 1] + dy, p0[:, 2] + dz
                    if resolution**3 > size:
                        index = (ix * 1) ^ (iy * 2654435761) ^ (iz * 805459861)
                    else:
                        index = ix + iy * resolution + iz * resolution * resolution
                    index = index % size
                    wx = t[:, 0] if dx else 1 - t[:, 0]
                    wy = t[:, 1] if dy else 1 - t[:, 1]
                    wz = t[:, 2] if dz else 1 - t[:, 2]
                    acc = acc + (wx * wy * wz)[:, None] * table[offset + index]
        outs.append(acc)
        offset += size
    return torch.cat(outs, dim=-1)
