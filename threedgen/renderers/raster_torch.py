"""Pure-torch triangle rasterizer with nvdiffrast's tensor conventions (the CPU twin of ``dr.*``).

Conventions (nvdiffrast, Laine et al. 2020, "Modular Primitives for High-Performance Differentiable
Rendering"): ``pos`` is clip space ``[B, V, 4]`` (or ``[V, 4]``), ``tri`` is ``[T, 3]`` int; output
``rast [B, H, W, 4]`` holds ``(u, v, z/w, triangle_id + 1)`` with 0 where no triangle covers the
pixel; ``u, v`` are the perspective-correct barycentric weights of ``tri[:, 0]`` and ``tri[:, 1]``
(the third is ``1 - u - v``); pixel ``(row j, col i)`` samples NDC ``((2i+1)/W - 1, (2j+1)/H - 1)``,
so row 0 is NDC y = -1 (callers flip y in the projection to get top-row-first images). Both windings
are drawn (no culling); the nearest ``z/w`` wins, fragments outside ``-1 <= z/w <= 1`` are clipped.
Triangles with a vertex behind the eye (``w <= 0``) are skipped rather than clipped (nvdiffrast clips
them): keep the camera outside the object, as every text-to-3D camera sampler does.

Visibility is found without gradients: each triangle's pixel bounding box is expanded into
(pixel, triangle) candidates in chunks of at most ``max_candidates`` (so memory is bounded for any
mesh size or resolution), the edge-function inside test keeps the covered ones, and a scatter-min
over ``z/w`` is the depth test. Only the winning (pixel, triangle) pairs are then recomputed with
autograd, so the cost of the differentiable part is one small gather per covered pixel.

Gradients — **analytic, not soft.** ``u, v, z/w`` are differentiable functions of the winning
triangle's clip-space vertices, so any attribute interpolated with them has the exact gradient of
the rendered pixel with respect to vertex positions (the interior term). Silhouette gradients come
from ``antialias``, an analytic edge-blending pass in the spirit of nvdiffrast's: where two
neighbouring pixels see different, non-adjacent triangles (a silhouette or occlusion boundary),
the front triangle's edge crosses the segment between the pixel centres at a fraction ``s``, and
the pixel on the far side of the edge is blended towards the other pixel's colour by ``|s - 1/2|``;
``s`` depends on the edge vertices, which gives the boundary its gradient. Each edge is handled by
the pixel pairs along one axis only (the one closer to the edge's normal), so summed coverage is
the triangle's area to first order and its gradient the area's (tested to within 6 %). Soft rasterization
(SoftRas-style sigmoid coverage) was not chosen because it blurs every image — the renders the
prior judges would differ from the CUDA path's — and it needs every triangle near every pixel,
which is what makes it slow on a CPU.
"""

from __future__ import annotations

import torch


def _batched(pos: torch.Tensor) -> torch.Tensor:
    if pos.dim() == 2:
        pos = pos[None]
    if pos.dim() != 3 or pos.shape[-1] != 4:
        raise ValueError(f"pos must be clip-space [B,V,4] or [V,4], got {tuple(pos.shape)}")
    return pos


def _screen(pos: torch.Tensor, H: int, W: int):
    """Clip space [..., 4] -> pixel x, pixel y (pixel centres at +0.5), z/w, w."""
    w = pos[..., 3]
    x = (pos[..., 0] / w + 1.0) * (0.5 * W)
    y = (pos[..., 1] / w + 1.0) * (0.5 * H)
    return x, y, pos[..., 2] / w, w


def _bary2d(px, py, x, y):
    """Screen-space barycentrics of points (px, py) in triangles with corner coords x, y [..., 3]."""
    x0, x1, x2 = x.unbind(-1)
    y0, y1, y2 = y.unbind(-1)
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    b0 = ((x1 - px) * (y2 - py) - (x2 - px) * (y1 - py)) / area
    b1 = ((x2 - px) * (y0 - py) - (x0 - px) * (y2 - py)) / area
    return b0, b1, 1.0 - b0 - b1, area


def rasterize(
    pos: torch.Tensor, tri: torch.Tensor, resolution, max_candidates: int = 1 << 22
) -> tuple[torch.Tensor, None]:
    """``(rast [B,H,W,4], None)`` like ``nvdiffrast.torch.rasterize`` (the second item stands for rast_db)."""
    pos = _batched(pos)
    H, W = int(resolution[0]), int(resolution[1])
    tri = tri.long()
    if tri.dim() != 2 or tri.shape[1] != 3:
        raise ValueError(f"tri must be [T,3] vertex indices, got {tuple(tri.shape)}")
    B, dev = pos.shape[0], pos.device
    rast = pos.new_zeros(B, H, W, 4)
    if tri.shape[0] == 0:
        return rast, None
    pix_all, tid_all, z_all = [], [], []
    with torch.no_grad():
        for b in range(B):
            x, y, z, w = (t[tri] for t in _screen(pos[b].detach(), H, W))  # [T,3] each
            ok = (w > 1e-8).all(1)
            i0 = torch.ceil(x.amin(1) - 0.5).clamp(0, W).long()
            i1 = torch.floor(x.amax(1) - 0.5).clamp(-1, W - 1).long()
            j0 = torch.ceil(y.amin(1) - 0.5).clamp(0, H).long()
            j1 = torch.floor(y.amax(1) - 0.5).clamp(-1, H - 1).long()
            nx, ny = (i1 - i0 + 1).clamp_min(0), (j1 - j0 + 1).clamp_min(0)
            ok &= torch.isfinite(x).all(1) & torch.isfinite(y).all(1)
            count = torch.where(ok, nx * ny, torch.zeros_like(nx))
            ids = count.nonzero().squeeze(1)
            if ids.numel() == 0:
                continue
            csum = torch.cumsum(count[ids], 0)
            start = 0
            while start < ids.numel():  # chunks of triangles with at most max_candidates pixels
                base = int(csum[start - 1]) if start else 0
                end = int(torch.searchsorted(csum, base + max_candidates, right=True))
                end = max(end, start + 1)
                t = ids[start:end]
                cnt = count[t]
                rep = torch.repeat_interleave(torch.arange(t.numel(), device=dev), cnt)
                off = torch.arange(int(cnt.sum()), device=dev) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
                tt = t[rep]
                pi = i0[tt] + off % nx[tt]
                pj = j0[tt] + torch.div(off, nx[tt], rounding_mode="floor")
                px, py = pi.to(pos.dtype) + 0.5, pj.to(pos.dtype) + 0.5
                b0, b1, b2, area = _bary2d(px, py, x[tt], y[tt])
                inside = (b0 >= 0) & (b1 >= 0) & (b2 >= 0) & (area != 0)
                zz = b0 * z[tt, 0] + b1 * z[tt, 1] + b2 * z[tt, 2]
                inside &= (zz >= -1) & (zz <= 1)
                pix_all.append((b * H + pj[inside]) * W + pi[inside])
                tid_all.append(tt[inside])
                z_all.append(zz[inside])
                start = end
        if not pix_all:
            return rast, None
        pix, tid, zc = torch.cat(pix_all), torch.cat(tid_all), torch.cat(z_all)
        n_px = B * H * W
        best = torch.full((n_px,), float("inf"), device=dev, dtype=zc.dtype).scatter_reduce(0, pix, zc, "amin")
        win = zc == best[pix]
        owner = torch.full((n_px,), -1, device=dev, dtype=torch.long).scatter_reduce(0, pix[win], tid[win], "amax")
        cov = (owner >= 0).nonzero().squeeze(1)
        t_cov = owner[cov]
    # differentiable part: barycentrics of the winning triangle at each covered pixel
    b_img = torch.div(cov, H * W, rounding_mode="floor")
    rem = cov - b_img * H * W
    pj = torch.div(rem, W, rounding_mode="floor")
    pi = rem - pj * W
    corners = pos[b_img[:, None], tri[t_cov]]  # [N,3,4]
    x, y, z, w = _screen(corners, H, W)
    b0, b1, b2, _ = _bary2d(pi.to(pos.dtype) + 0.5, pj.to(pos.dtype) + 0.5, x, y)
    zw = b0 * z[:, 0] + b1 * z[:, 1] + b2 * z[:, 2]
    q = torch.stack([b0, b1, b2], -1) / w  # perspective correction: weights / w, renormalised
    q = q / q.sum(-1, keepdim=True)
    vals = torch.stack([q[:, 0], q[:, 1], zw, (t_cov + 1).to(pos.dtype)], -1)
    rast = rast.view(-1, 4).index_put((cov,), vals).view(B, H, W, 4)
    return rast, None


def interpolate(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor, rast_db=None, diff_attrs=None):
    """``(out [B,H,W,C], None)`` like ``nvdiffrast.torch.interpolate``: u a0 + v a1 + (1-u-v) a2, 0 off-mesh."""
    B, H, W, _ = rast.shape
    if attr.dim() == 2:
        attr = attr[None]
    C = attr.shape[-1]
    flat = rast.reshape(-1, 4)
    tid = flat[:, 3].long() - 1
    cov = (tid >= 0).nonzero().squeeze(1)
    b = torch.div(cov, H * W, rounding_mode="floor") if attr.shape[0] > 1 else torch.zeros_like(cov)
    a = attr[b[:, None], tri.long()[tid[cov]]]  # [N,3,C]
    u, v = flat[cov, 0:1], flat[cov, 1:2]
    vals = u * a[:, 0] + v * a[:, 1] + (1 - u - v) * a[:, 2]
    out = attr.new_zeros(B * H * W, C).index_put((cov,), vals.to(attr.dtype))
    return out.view(B, H, W, C), None


def antialias(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """Analytic silhouette blending (see the module docstring); ``color [B,H,W,C]`` -> same shape."""
    pos = _batched(pos)
    B, H, W, C = color.shape
    tri = tri.long()
    tid = rast[..., 3].long() - 1  # [B,H,W]
    zbuf = rast[..., 2]
    flat = color.reshape(-1, C)
    delta = torch.zeros_like(flat)
    idx = torch.arange(B * H * W, device=color.device).view(B, H, W)
    pairs = [(idx[:, :, :-1], idx[:, :, 1:], True), (idx[:, :-1, :], idx[:, 1:, :], False)]
    tflat, zflat = tid.reshape(-1), zbuf.reshape(-1)
    for pa, pb, horizontal in pairs:
        pa, pb = pa.reshape(-1), pb.reshape(-1)
        ta, tb = tflat[pa], tflat[pb]
        differ = ta != tb
        pa, pb, ta, tb = pa[differ], pb[differ], ta[differ], tb[differ]
        # which side is in front: the covered one, or the nearer of two
        a_front = (tb < 0) | ((ta >= 0) & (zflat[pa] < zflat[pb]))
        f = torch.where(a_front, pa, pb)
        k = torch.where(a_front, pb, pa)
        tf, tk = torch.where(a_front, ta, tb), torch.where(a_front, tb, ta)
        # triangles sharing an edge continue one surface: no silhouette between them
        shared = (tri[tf][:, :, None] == tri[tk.clamp_min(0)][:, None, :]).sum((1, 2))
        sil = (tk < 0) | (shared < 2)
        f, k, tf = f[sil], k[sil], tf[sil]
        if f.numel() == 0:
            continue
        bi = torch.div(f, H * W, rounding_mode="floor")

        def centre(p):
            r = p - torch.div(p, H * W, rounding_mode="floor") * H * W
            j = torch.div(r, W, rounding_mode="floor")
            return (r - j * W).to(pos.dtype) + 0.5, j.to(pos.dtype) + 0.5

        x, y, _, _ = _screen(pos[bi[:, None], tri[tf]], H, W)
        bf = torch.stack(_bary2d(*centre(f), x, y)[:3], -1)  # [N,3]
        bk = torch.stack(_bary2d(*centre(k), x, y)[:3], -1)
        # exit fraction along f -> k: where the first barycentric reaches 0
        leaving = bk < 0
        frac = bf / (bf - bk).where(leaving, torch.ones_like(bk))
        frac, edge = torch.where(leaving, frac, torch.full_like(frac, 2.0)).min(-1)
        frac = frac.clamp(0.0, 1.0)
        # each edge is handled along one axis only, the one closer to its normal (as nvdiffrast
        # does); otherwise a slanted edge would be counted by both horizontal and vertical pairs
        i1, i2 = (edge + 1) % 3, (edge + 2) % 3
        ex = (x.gather(1, i2[:, None]) - x.gather(1, i1[:, None])).squeeze(1).detach()
        ey = (y.gather(1, i2[:, None]) - y.gather(1, i1[:, None])).squeeze(1).detach()
        mine = ey.abs() >= ex.abs() if horizontal else ey.abs() < ex.abs()
        f, k, frac = f[mine], k[mine], frac[mine]
        cf, ck = flat[f], flat[k]
        over = (frac - 0.5)[:, None]  # > 0: the triangle reaches into pixel k; < 0: f is partly uncovered
        delta = delta.index_add(0, k, over.clamp_min(0) * (cf - ck))
        delta = delta.index_add(0, f, (-over).clamp_min(0) * (ck - cf))
    return (flat + delta).view(B, H, W, C)
