"""Pure-torch 3D Gaussian rasterizer: the CPU path and the reference for gsplat's CUDA kernels.

Maths (Kerbl et al. 2023, "3D Gaussian Splatting", Sec. 4 and 6; Zwicker et al. 2001, EWA splatting):

- world covariance ``Σ = R S Sᵀ Rᵀ`` from a wxyz quaternion and scales;
- camera covariance ``W Σ Wᵀ`` and the local affine approximation of the perspective map,
  ``Σ₂ = J W Σ Wᵀ Jᵀ + 0.3·I`` (the 0.3 px² low-pass of the paper, gsplat's ``eps2d``), with ``J``
  evaluated at the centre clamped to 1.3x the field of view, exactly as gsplat does;
- per pixel, Gaussians sorted by camera depth front to back:
  ``αᵢ = min(0.999, oᵢ exp(-½ dᵀ Σ₂⁻¹ d))`` (skipped below 1/255), ``Tᵢ = Πⱼ<ᵢ (1 - αⱼ)``,
  compositing stops before the Gaussian that would take ``T`` to 1e-4 or below;
  ``C = Σᵢ cᵢ αᵢ Tᵢ``, ``A = Σᵢ αᵢ Tᵢ``.

These follow gsplat 1.5.3's CUDA kernels (``ProjectionEWA3DGSFused.cu``, ``RasterizeToPixels3DGSFwd.cu``),
including the opacity-aware bounding radius ``min(3.33, sqrt(2 ln(o / (1/255))))·sqrt(Σ₂ diag)`` and
the pixel centres at +0.5, so the two paths agree and gsplat's ``DefaultStrategy`` sees the same
``meta`` (``means2d`` with gradient, int32 ``radii``, ``width``, ``height``, ``n_cameras``,
``gaussian_ids`` when packed) on both.

Memory: each visible Gaussian is binned into the small square tiles its bounding box touches (as
gsplat's ``isect_tiles``), less the tiles none of whose pixel centres it reaches; the (tile, Gaussian)
rows, sorted by tile then depth, are composited (``gaussian_composite.py``, whose backward is written
out) in
chunks of at most ``chunk_pairs`` (pixel, Gaussian) pairs with a segmented transmittance that
carries across chunk boundaries. When more than one chunk is needed and gradients are on, each chunk runs
under activation checkpointing, so peak memory stays about one chunk's worth in training as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .gaussian_composite import ALPHA_THRESHOLD, N_GEOM, CompositeRows, touching


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] from wxyz quaternions [..., 4] (normalised here)."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, -1).reshape(quats.shape[:-1] + (3, 3))


def covariance(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """World covariances [N,3,3] = (R S)(R S)ᵀ from quats [N,4] (wxyz) and scales [N,3] (activated)."""
    M = quat_to_rotmat(quats) * scales[..., None, :]
    return M @ M.transpose(-1, -2)


@dataclass
class Projection:
    """Per (camera, Gaussian) screen-space quantities, all ``[C, N, ...]``."""

    means2d: torch.Tensor  # [C,N,2] pixels (x right, y down), differentiable
    conics: torch.Tensor  # [C,N,3] upper triangle (a, b, c) of Σ₂⁻¹
    depths: torch.Tensor  # [C,N] camera z (> 0 in front)
    opacities: torch.Tensor  # [C,N] opacity after the antialiasing compensation (if on)
    radii: torch.Tensor  # [C,N,2] int32 bounding half-extents in pixels; 0 = culled


def project(
    means: torch.Tensor,  # [N,3]
    quats: torch.Tensor,  # [N,4] wxyz
    scales: torch.Tensor,  # [N,3] activated
    opacities: Optional[torch.Tensor],  # [N] activated, or None for the fixed 3.33-sigma radius
    viewmats: torch.Tensor,  # [C,4,4] world -> OpenCV camera (x right, y down, z forward)
    Ks: torch.Tensor,  # [C,3,3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    antialiased: bool = False,
) -> Projection:
    """EWA projection of 3D Gaussians (gsplat's ``fully_fused_projection`` in torch).

    Culls (radii = 0) Gaussians outside [near, far], with a degenerate 2D covariance, with an
    effective opacity below 1/255, or whose bounding box lies entirely off screen. ``antialiased``
    multiplies opacity by ``sqrt(det Σ₂' / det(Σ₂' + 0.3 I))`` (Mip-Splatting's compensation, gsplat's
    ``rasterize_mode="antialiased"``).
    """
    N, C = means.shape[0], viewmats.shape[0]
    assert means.shape == (N, 3), means.shape
    assert quats.shape == (N, 4), quats.shape
    assert scales.shape == (N, 3), scales.shape
    assert viewmats.shape == (C, 4, 4), viewmats.shape
    assert Ks.shape == (C, 3, 3), Ks.shape
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None]  # [C,N,3]
    cov_c = torch.einsum("cij,njk,clk->cnil", R, covariance(quats, scales), R)  # [C,N,3,3]
    tx, ty, tz = means_c.unbind(-1)
    in_depth = (tz >= near_plane) & (tz <= far_plane)
    tz = torch.where(in_depth, tz, torch.ones_like(tz))  # keeps culled entries' gradients finite
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # J at the centre clamped to 1.3x the frustum (3DGS / gsplat persp_proj): far off-axis Gaussians
    # would otherwise get huge footprints from the linearisation
    lim_x = 0.3 * 0.5 * width / fx
    lim_y = 0.3 * 0.5 * height / fy
    u = torch.minimum(torch.maximum(tx / tz, -(cx / fx + lim_x)), (width - cx) / fx + lim_x)
    v = torch.minimum(torch.maximum(ty / tz, -(cy / fy + lim_y)), (height - cy) / fy + lim_y)
    zero = torch.zeros_like(tz)
    J = torch.stack([fx / tz, zero, -fx * u / tz, zero, fy / tz, -fy * v / tz], -1).view(C, N, 2, 3)
    cov2d = J @ cov_c @ J.transpose(-1, -2)  # [C,N,2,2]
    means2d = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], -1)
    a, b, c = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    valid = in_depth & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], -1)
    if opacities is None:
        opac = torch.ones_like(tz)
        extend = torch.full_like(tz, 3.33)
    else:
        assert opacities.shape == (N,), opacities.shape
        opac = opacities[None].expand(C, N)
        if antialiased:
            opac = opac * torch.sqrt((det_orig / det_safe).clamp_min(0.0))
        o = opac.detach()
        valid = valid & (o >= ALPHA_THRESHOLD)
        extend = torch.sqrt(2.0 * torch.log(o.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp(max=3.33)
    with torch.no_grad():
        rx = torch.ceil(extend * a.clamp_min(0).sqrt())
        ry = torch.ceil(extend * c.clamp_min(0).sqrt())
        valid &= ~((rx <= radius_clip) & (ry <= radius_clip))
        mx, my = means2d[..., 0], means2d[..., 1]
        valid &= ~((mx + rx <= 0) | (mx - rx >= width) | (my + ry <= 0) | (my - ry >= height))
        radii = torch.where(valid[..., None], torch.stack([rx, ry], -1), torch.zeros_like(means2d)).to(torch.int32)
    return Projection(means2d, conics, means_c[..., 2], opac, radii)


def _tile_pairs(means2d, radii, cam, depths, geo, n_cams, width, height, tile, px, py, block):
    """Bin packed Gaussians into the tiles their bounding boxes touch (gsplat's ``isect_tiles``), keeping
    the (tile, Gaussian) rows whose Gaussian reaches a pixel centre of the tile (``touching``, in blocks of
    ``block`` rows so memory stays bounded).

    Returns (tile id per row, Gaussian index per row, tile centre per row [M,2] in pixels), sorted by tile
    and front to back within a tile, and the tile grid size."""
    tw, th = math.ceil(width / tile), math.ceil(height / tile)
    r = radii.to(means2d.dtype)
    m = means2d.detach()
    x0 = torch.floor((m[:, 0] - r[:, 0]) / tile).clamp(0, tw).long()
    x1 = torch.ceil((m[:, 0] + r[:, 0]) / tile).clamp(0, tw).long()
    y0 = torch.floor((m[:, 1] - r[:, 1]) / tile).clamp(0, th).long()
    y1 = torch.ceil((m[:, 1] + r[:, 1]) / tile).clamp(0, th).long()
    order = torch.argsort(depths.detach(), stable=True)  # expanding in depth order keeps it within tiles
    w = (x1 - x0)[order]
    n = (w * (y1 - y0)[order]).clamp_min(0)
    rows = torch.repeat_interleave(torch.arange(len(order), device=means2d.device), n)  # each row's Gaussian, in depth order
    gid = order[rows]
    local = torch.arange(len(rows), device=means2d.device) - (torch.cumsum(n, 0) - n)[rows]
    wi = w[rows]
    dy = torch.div(local, wi, rounding_mode="floor")
    tx, ty = x0[gid] + (local - dy * wi), y0[gid] + dy
    tile_id = (cam[gid] * th + ty) * tw + tx
    centre = (torch.stack([tx, ty], 1).to(geo.dtype) + 0.5) * tile
    hit = torch.cat([touching(geo.index_select(0, gid[i : i + block]), centre[i : i + block], px, py)
                     for i in range(0, gid.numel(), block)]) if gid.numel() else gid.bool()
    keep = hit.nonzero().squeeze(1)
    tile_id, perm = torch.sort(tile_id[keep], stable=True)
    keep = keep[perm]
    return tile_id, gid[keep], centre[keep], (tw, th)


def rasterize_packed(
    means2d: torch.Tensor,  # [P,2]
    conics: torch.Tensor,  # [P,3]
    opacities: torch.Tensor,  # [P]
    features: torch.Tensor,  # [P,D]
    depths: torch.Tensor,  # [P] (sort key)
    radii: torch.Tensor,  # [P,2]
    camera_ids: torch.Tensor,  # [P] long
    n_cameras: int,
    width: int,
    height: int,
    tile_size: int = 2,
    chunk_pairs: int = 1 << 22,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Front-to-back alpha compositing of visible Gaussians.

    Returns (features [C,H,W,D], alphas [C,H,W,1], number of (pixel, Gaussian) pairs composited: those of
    the (tile, Gaussian) rows that reach a pixel centre of their tile).
    """
    D, dev, dt = features.shape[-1], features.device, features.dtype
    P_tile = tile_size * tile_size
    ar = torch.arange(tile_size, device=dev, dtype=dt) + 0.5 - 0.5 * tile_size  # pixel centres from the tile's centre
    loc_y, loc_x = torch.meshgrid(ar, ar, indexing="ij")
    loc_x, loc_y = loc_x.reshape(-1), loc_y.reshape(-1)
    rows = max(1, chunk_pairs // P_tile)
    # one gather per run of rows (and one scatter back in the backward) instead of one per attribute
    attrs = torch.cat([means2d, conics, opacities[:, None], features], 1)
    tile_ids, gid, centres, (tw, th) = _tile_pairs(means2d, radii, camera_ids, depths, attrs.detach()[:, :N_GEOM],
                                                   n_cameras, width, height, tile_size, loc_x, loc_y, rows)
    n_all, total = n_cameras * tw * th, tile_ids.numel()
    use_ckpt = torch.is_grad_enabled() and total > rows and any(
        t.requires_grad for t in (means2d, conics, opacities, features)
    )
    img = torch.zeros(n_all, P_tile, D + 1, device=dev, dtype=dt)
    carry = torch.zeros(P_tile, device=dev, dtype=torch.float64)
    prev_tile = -1
    for s in range(0, total, rows):
        t_rows, g, centre = tile_ids[s : s + rows], gid[s : s + rows], centres[s : s + rows]
        uniq, cnt = torch.unique_consecutive(t_rows, return_counts=True)
        row_tile = torch.repeat_interleave(torch.arange(uniq.numel(), device=dev), cnt)
        mask = torch.tensor(float(int(uniq[0]) == prev_tile), dtype=torch.float64, device=dev)
        args = (carry, mask, attrs.index_select(0, g), centre, row_tile, cnt, loc_x, loc_y)
        if use_ckpt:
            sums, carry = checkpoint(CompositeRows.apply, *args, use_reentrant=False)
        else:
            sums, carry = CompositeRows.apply(*args)
        img = img.index_add(0, uniq, sums)
        prev_tile = int(uniq[-1])
    if total == 0:  # nothing visible: keep the output in the graph so a loss on it can still backward
        img = img + 0.0 * (features.sum() + opacities.sum() + means2d.sum() + conics.sum())
    img = img.view(n_cameras, th, tw, tile_size, tile_size, D + 1).permute(0, 1, 3, 2, 4, 5)
    img = img.reshape(n_cameras, th * tile_size, tw * tile_size, D + 1)[:, :height, :width]
    return img[..., :D], img[..., D:], total * P_tile


def rasterization(
    means: torch.Tensor,  # [N,3]
    quats: torch.Tensor,  # [N,4] wxyz
    scales: torch.Tensor,  # [N,3] activated
    opacities: torch.Tensor,  # [N] activated
    colors: torch.Tensor,  # [C,N,D] or [N,D] post-activation features
    viewmats: torch.Tensor,  # [C,4,4]
    Ks: torch.Tensor,  # [C,3,3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    packed: bool = False,
    rasterize_mode: str = "classic",
    render_mode: str = "RGB+D",
    tile_size: int = 2,
    chunk_pairs: int = 1 << 22,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The torch twin of the subset of ``gsplat.rasterization`` threedgen uses (same argument names).

    ``render_mode`` "RGB" or "RGB+D" (accumulated camera depth appended as the last channel).
    Returns (renders [C,H,W,D(+1)], alphas [C,H,W,1], meta). ``meta["means2d"]`` ([C,N,2], or
    [nnz,2] when packed) has ``retain_grad()`` applied when it requires grad, so after ``backward``
    it carries the screen-space gradient densification reads.
    """
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"rasterize_mode must be 'classic' or 'antialiased', got {rasterize_mode!r}")
    if render_mode not in ("RGB", "RGB+D"):
        raise ValueError(f"render_mode must be 'RGB' or 'RGB+D' on the torch path, got {render_mode!r}")
    C, N = viewmats.shape[0], means.shape[0]
    proj = project(means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
                   radius_clip, antialiased=rasterize_mode == "antialiased")
    if colors.dim() == 2:
        colors = colors[None].expand(C, N, colors.shape[-1])
    assert colors.shape[:2] == (C, N), colors.shape
    if render_mode == "RGB+D":
        colors = torch.cat([colors, proj.depths[..., None]], -1)
    cam_ids, gs_ids = torch.nonzero(proj.radii[..., 0] > 0, as_tuple=True)
    meta = {"width": width, "height": height, "n_cameras": C, "tile_size": tile_size, "backend": "torch"}
    if packed:
        means2d = proj.means2d[cam_ids, gs_ids]  # the leaf-like tensor the strategy reads [nnz,2]
        if means2d.requires_grad:
            means2d.retain_grad()
        m2d, radii = means2d, proj.radii[cam_ids, gs_ids]
        meta.update(means2d=means2d, radii=radii, gaussian_ids=gs_ids, camera_ids=cam_ids)
    else:
        means2d = proj.means2d
        if means2d.requires_grad:
            means2d.retain_grad()
        m2d, radii = means2d[cam_ids, gs_ids], proj.radii[cam_ids, gs_ids]
        meta.update(means2d=means2d, radii=proj.radii, gaussian_ids=None)
    meta.update(depths=proj.depths, conics=proj.conics, opacities=proj.opacities)
    renders, alphas, n_pairs = rasterize_packed(
        m2d, proj.conics[cam_ids, gs_ids], proj.opacities[cam_ids, gs_ids], colors[cam_ids, gs_ids],
        proj.depths[cam_ids, gs_ids], radii, cam_ids, C, width, height, tile_size, chunk_pairs,
    )
    meta["n_pairs"] = n_pairs
    return renders, alphas, meta
