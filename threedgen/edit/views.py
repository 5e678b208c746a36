"""Per-view edit masks, ControlNet depth images and the anchor view of a scene edit.

- ``box_mask``: the edit box's exact silhouette per pixel (a ray–box slab test), for the start of an
  edit when the object is still a cloud, or for ``mask: box``.
- ``alpha_mask``: the object's visible alpha (the renderer's extra channel, ``scene.py``)
  thresholded and dilated by a few pixels, so the inpainting prior may also repaint the seam.
- ``disparity_image``: rendered depth -> the depth ControlNet's input, MiDaS-style: inverse depth,
  normalised per image to [0, 1] over the covered pixels (near = bright, empty = 0), 3 channels.
- ``propose_anchor``: scores candidate views by how much of the box they show unoccluded, how large
  it appears and how much scene surrounds it (the context an inpainting prior lights the object
  from); issue 19 item 3, a specification marked [inferred] in the project's notes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.cameras import CameraBatch, make_cameras
from .box import EditBox


def box_hits(cameras: CameraBatch, box: EditBox) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel ``[B,1,H,W]``: whether its ray hits the box, and the ray length at entry (0 inside)."""
    o, d = cameras.rays()  # [B,H,W,3]
    lo = torch.tensor(box.lo, device=o.device)
    hi = torch.tensor(box.hi, device=o.device)
    inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t1, t2 = (lo - o) * inv, (hi - o) * inv
    t_near = torch.minimum(t1, t2).amax(-1)
    t_far = torch.maximum(t1, t2).amin(-1)
    hit = t_far >= t_near.clamp_min(0.0)
    return hit[:, None].float(), t_near.clamp_min(0.0)[:, None]


def box_mask(cameras: CameraBatch, box: EditBox) -> torch.Tensor:
    """``[B,1,H,W]`` 1 where a pixel's ray passes through the edit box."""
    return box_hits(cameras, box)[0]


def dilate(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Binary dilation of ``[B,1,H,W]`` by a square of half-width ``pixels``."""
    if pixels <= 0:
        return mask
    return F.max_pool2d(mask, 2 * pixels + 1, stride=1, padding=pixels)


def alpha_mask(object_alpha: torch.Tensor, dilate_px: int = 2, threshold: float = 0.05) -> torch.Tensor:
    """The editable region from the object's visible alpha ``[B,1,H,W]``: ``> threshold``, dilated."""
    return dilate((object_alpha.detach() > threshold).float(), dilate_px)


def disparity_image(depth: torch.Tensor, alpha: torch.Tensor, min_alpha: float = 0.5) -> torch.Tensor:
    """Rendered depth ``[B,1,H,W]`` (alpha-weighted) and alpha -> ``[B,3,H,W]`` in [0,1], near bright."""
    cover = alpha > min_alpha
    dist = depth / alpha.clamp_min(1e-6)
    disp = torch.where(cover, 1.0 / dist.clamp_min(1e-6), torch.zeros_like(dist))
    big = torch.finfo(disp.dtype).max
    lo = torch.where(cover, disp, torch.full_like(disp, big)).flatten(1).amin(1).view(-1, 1, 1, 1)
    hi = disp.flatten(1).amax(1).view(-1, 1, 1, 1)
    span = (hi - lo).clamp_min(1e-6)
    out = torch.where(cover, ((disp - lo) / span).clamp(0, 1), torch.zeros_like(disp))
    return out.detach().expand(-1, 3, -1, -1).contiguous()


@dataclass
class AnchorScore:
    elevation: float
    azimuth: float
    visible: float
    """Share of the box's pixels not hidden behind scene content."""
    area: float
    """Share of the image the box covers."""
    context: float
    """Mean scene alpha in a ring around the box's silhouette."""
    score: float


def score_views(render_fn, cameras: CameraBatch, box: EditBox, target_area: float = 0.15, ring_px: int = 0) -> list[AnchorScore]:
    """Scores each camera: ``visible × context × min(area / target_area, 1)``; ``render_fn(cams)``
    renders the background scene (a ``RenderOutput`` with alpha and depth)."""
    out = render_fn(cameras)
    hit, t_in = box_hits(cameras, box)
    H = cameras.height
    ring_px = ring_px or max(2, H // 16)
    dist = out.depth / out.alpha.clamp_min(1e-6)
    occluded = (out.alpha > 0.5) & (dist < t_in - 1e-3) & (hit > 0)
    n_box = hit.flatten(1).sum(1)
    visible = torch.where(n_box > 0, (hit - occluded.float()).flatten(1).sum(1) / n_box.clamp_min(1), torch.zeros_like(n_box))
    area = n_box / float(hit[0].numel())
    ring = dilate(hit, ring_px) - hit
    context = (out.alpha * ring).flatten(1).sum(1) / ring.flatten(1).sum(1).clamp_min(1)
    score = visible * context * (area / target_area).clamp(max=1.0)
    return [AnchorScore(float(cameras.elevation_deg[i]), float(cameras.azimuth_deg[i]), float(visible[i]), float(area[i]),
                        float(context[i]), float(score[i])) for i in range(len(cameras))]


def candidate_cameras(center, distance: float, fovy: float, resolution: int,
                      elevations=(0.0, 15.0, 30.0, 45.0), n_azimuth: int = 12) -> CameraBatch:
    """A grid of views orbiting ``center`` at ``distance`` (the anchor view's candidates)."""
    el = torch.tensor(elevations, dtype=torch.float32).repeat_interleave(n_azimuth)
    az = (torch.arange(n_azimuth, dtype=torch.float32) * 360.0 / n_azimuth).repeat(len(elevations))
    return make_cameras(el, az, distance, fovy, resolution, resolution, center=torch.as_tensor(center, dtype=torch.float32))


def propose_anchor(render_fn, box: EditBox, distance: float, fovy: float, resolution: int = 64, **grid) -> tuple[int, list[AnchorScore], CameraBatch]:
    """The best candidate view: ``(index, scores of every candidate, the candidates)``. ValueError
    when no candidate sees the box (the box lies behind scene content from every side, or off-frame)."""
    cams = candidate_cameras(box.center, distance, fovy, resolution, **grid)
    scores = score_views(render_fn, cams, box)
    best = max(range(len(scores)), key=lambda i: scores[i].score)
    if scores[best].visible * scores[best].area <= 0:
        raise ValueError(f"no candidate view sees the edit box {list(box.lo)}..{list(box.hi)} unoccluded "
                         f"(cameras at distance {distance} around its centre); move the box or widen the camera distance")
    return best, scores, cams
