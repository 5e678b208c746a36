"""Front-to-back alpha compositing of sorted (tile, Gaussian) rows, with a closed-form backward.

The pure-torch rasterizer (``gaussian_torch.py``) spends most of a toy training step here. Written
as plain autograd, about 15 elementwise ops over every (row, pixel) pair were recorded and replayed,
and the per-row sums over a tile's few pixels ran as slow small-axis reductions. Here the forward
runs without a graph and the backward is written out (as gsplat's ``RasterizeToPixels3DGSBwd.cu``
does, vectorised over rows instead of looping back to front): the sums over a tile's pixels are one
matrix product with the pixels' moments. ``touching`` drops the rows whose Gaussian reaches none
of its tile's pixel centres (over half of them on the quick start's 32² views: a bounding box is
loose around a thin ellipse), which changes nothing, since such rows composite with alpha 0.
``benchmarks/bench_gaussians.py`` measures it; ``tests/test_gaussian_raster.py`` checks it against
finite differences and against a dense per-pixel reference.

Per pixel ``p`` and row ``i`` of a tile (front to back), with ``σᵢ = ½ dᵀ Σ₂⁻¹ d`` and ``d`` the
pixel centre's offset from the Gaussian's centre:

- ``αᵢ = min(0.999, oᵢ e^{-σᵢ})``, zero where ``σᵢ < 0`` or ``αᵢ < 1/255``;
- ``log Tᵢ = carry + Σ_{j<i} log(1 - αⱼ)`` (the cumulative sum in float64; ``carry`` is the log
  transmittance the run's first tile brings from the previous run of rows, when it continues one);
- ``wᵢ = αᵢ Tᵢ mᵢ``, ``mᵢ = [log Tᵢ + log(1 - αᵢ) > log 1e-4]`` (stop before the Gaussian that would
  end the pixel, as gsplat does);
- per tile ``Σ wᵢ fᵢ`` and ``Σ wᵢ``.

Backward, with ``sᵢ = g_f·fᵢ + g_a`` the gradient of the tile's sums reaching ``wᵢ``:
``∂L/∂fᵢ = Σ_p wᵢ g_f``; ``∂L/∂αᵢ = sᵢ Tᵢ mᵢ - (Sᵢ + [i in the last tile] g_carry) / (1 - αᵢ)`` with
``Sᵢ = Σ_{j>i, same tile} sⱼ wⱼ``; ``∂L/∂carry = Σ_{i in the first tile} sᵢ wᵢ`` (plus ``g_carry`` when
that tile is also the last); then through ``α = o e^{-σ}`` where it was kept and not clamped. With
``q = ∂L/∂o`` per pixel and ``∂L/∂σ = -o q``, every sum over the pixels that the conic and the centre
need (``Σ q dx²``, ``Σ q dx dy``, ...) expands into ``q``'s products with the pixel offsets' moments
``[1, x, y, x², xy, y²]``, taken relative to the tile's centre so that the expansion does not cancel.
"""

from __future__ import annotations

import math

import torch

ALPHA_THRESHOLD = 1.0 / 255.0
T_MIN = 1e-4
MAX_ALPHA = 0.999
N_GEOM = 6  # leading columns of a row's attributes: centre x, y (pixels), conic a, b, c, opacity


def _offsets_sigma(mx, my, ca, cb, cc, px, py):
    """Pixel offsets [M,P] from each row's centre and the Gaussian exponent σ there."""
    dx = mx[:, None] - px
    dy = my[:, None] - py
    return dx, dy, dx * ((0.5 * ca)[:, None] * dx + cb[:, None] * dy) + (0.5 * cc)[:, None] * (dy * dy)


@torch.no_grad()
def touching(geo: torch.Tensor, centre: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Rows [M] whose Gaussian (geometry columns ``geo`` [M,6]) reaches alpha 1/255 at one of its tile's
    pixel centres (``centre`` [M,2] the tile's centre, ``px``/``py`` [P] offsets from it). A superset
    of the rows ``CompositeRows`` gives any weight: the margin covers rounding."""
    mx, my, ca, cb, cc, o = geo.t()
    _, _, sigma = _offsets_sigma(mx - centre[:, 0], my - centre[:, 1], ca, cb, cc, px, py)
    reach = torch.log(o.clamp_min(1e-30) / ALPHA_THRESHOLD) + 1e-4
    return (sigma <= reach[:, None]).any(1)


class CompositeRows(torch.autograd.Function):
    """``(carry [P] float64, carry_mask [] float64, attrs [M, 6+D], centre [M,2], row_tile [M], cnt [U], px [P],
    py [P]) -> (tile sums [U,P,D+1] (features, then alpha), the last row's log transmittance [P])``.

    ``attrs`` holds each row's Gaussian (``N_GEOM`` geometry columns, then its D features); ``centre`` is
    its tile's centre in pixels, ``px``/``py`` the pixel centres' offsets from it. Rows are sorted by
    tile (``row_tile`` numbers the run's U tiles, ``cnt`` counts their rows; M > 0) and front to back
    within one. Gradients flow to ``carry`` and ``attrs``."""

    @staticmethod
    def forward(ctx, carry, carry_mask, attrs, centre, row_tile, cnt, px, py):
        M, D = attrs.shape[0], attrs.shape[1] - N_GEOM
        geo = attrs[:, :N_GEOM].t()
        mx, my = geo[0] - centre[:, 0], geo[1] - centre[:, 1]
        ca, cb, cc, opac = geo[2:].contiguous()
        dx, dy, sigma = _offsets_sigma(mx, my, ca, cb, cc, px, py)
        e = torch.exp(-sigma)
        raw = opac[:, None] * e
        alpha = raw.clamp(max=MAX_ALPHA)
        keep = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
        alpha = alpha * keep
        la = torch.log1p(-alpha).double()
        cs = torch.cumsum(la, 0)
        ends = torch.cumsum(cnt, 0)
        # log T before each row: the cumulative sum minus its value before the tile's first row
        before = torch.cat([cs.new_zeros(1, cs.shape[1]), cs[ends[:-1] - 1]]).index_select(0, row_tile)
        incl = cs - before
        n0 = int(cnt[0])
        incl[:n0] += carry * carry_mask
        t_kept = torch.exp((incl - la).to(alpha.dtype)) * (incl > math.log(T_MIN))
        w = alpha * t_kept
        feats_t = attrs[:, N_GEOM:].t()  # [D,M]
        vals = torch.empty(M, D + 1, w.shape[1], dtype=w.dtype, device=w.device)
        for d in range(D):
            torch.mul(w, feats_t[d][:, None], out=vals[:, d])
        vals[:, D] = w
        sums = vals.new_zeros((cnt.numel(),) + vals.shape[1:]).index_add_(0, row_tile, vals)
        ctx.save_for_backward(mx, my, ca, cb, cc, opac, e, alpha, keep & (raw <= MAX_ALPHA), t_kept, w,
                              attrs[:, N_GEOM:], row_tile, ends, carry_mask, px, py)
        ctx.n0, ctx.n_last = n0, int(cnt[-1])
        return sums.transpose(1, 2), incl[-1]

    @staticmethod
    def backward(ctx, g_sums, g_carry):
        mx, my, ca, cb, cc, opac, e, alpha, live, t_kept, w, feats, row_tile, ends, carry_mask, px, py = \
            ctx.saved_tensors
        M, D = feats.shape
        g_rows = g_sums.transpose(1, 2).contiguous().index_select(0, row_tile)  # [M,D+1,P]
        s = torch.bmm(feats[:, None, :], g_rows[:, :D])[:, 0] + g_rows[:, D]  # ∂L/∂w [M,P]
        out = torch.empty(M, N_GEOM + D, dtype=w.dtype, device=w.device)
        out[:, N_GEOM:] = torch.bmm(g_rows[:, :D], w[:, :, None])[..., 0]  # ∂L/∂f
        sw = (s * w).double()
        cs = torch.cumsum(sw, 0)
        g_la = cs[ends - 1].index_select(0, row_tile) - cs  # Σ over the later rows of the tile
        g_la[M - ctx.n_last:] += g_carry
        g_carry_in = sw[: ctx.n0].sum(0)
        if ends.numel() == 1:
            g_carry_in = g_carry_in + g_carry
        g_o = (s * t_kept - g_la.to(s.dtype) / (1.0 - alpha)) * live * e  # ∂L/∂o per pair
        one = torch.ones_like(px)
        R = (g_o @ torch.stack([one, px, py, px * px, px * py, py * py], 1)).t()  # [6,M]
        q = -opac  # ∂L/∂σ = -o ∂L/∂o
        sx, sy = q * (mx * R[0] - R[1]), q * (my * R[0] - R[2])  # Σ ∂L/∂σ dx, Σ ∂L/∂σ dy
        out[:, 0] = ca * sx + cb * sy
        out[:, 1] = cb * sx + cc * sy
        out[:, 2] = 0.5 * q * (mx * (mx * R[0] - 2 * R[1]) + R[3])
        out[:, 3] = q * (mx * (my * R[0] - R[2]) - my * R[1] + R[4])
        out[:, 4] = 0.5 * q * (my * (my * R[0] - 2 * R[2]) + R[5])
        out[:, 5] = R[0]
        return g_carry_in * carry_mask, None, out, None, None, None, None, None
