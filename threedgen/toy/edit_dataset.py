"""Training views for the toy inpainting prior and its depth ControlNet (issue 19).

Each scene is a toy object of the world (the one a caption names) standing at the centre of the
ground plane with one or two other toy objects around it (``scene_builder.py``), seen from
cameras that orbit the centre at the edit recipe's distances, so the centre object fills about
as much of the frame as a toy prior image. Per view (32², white sky): the image; the disparity
image a depth ControlNet reads (``edit/views.py:disparity_image``); the centre object's visible
alpha; the silhouette of the insert box. The masks a trainer draws from the last two are the
edit system's two mask modes. Rendered once with the torch Gaussian rasterizer and cached, like
``dataset.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

from ..data.cameras import CameraConfig, RandomCameraSampler
from ..schedule import Schedule
from . import world as W
from ..representations.spherical_harmonics import SH_C0
from .scene_builder import GROUND_Y, Placed, build_scene, insert_box
from ..utils.atomic import save_torch

EDIT_VERSION = 1
"""Bump when the rendered fields change, so stale caches are not reused."""

SCALE = 0.36
EDIT_CAMERAS = CameraConfig(
    batch_size=Schedule(1), width=Schedule(32), height=Schedule(32), elevation_range=(0.0, 40.0), azimuth_range=(-180.0, 180.0),
    distance_range=(0.62, 0.78), fovy_range=(45.0, 60.0), light="none", center=(0.0, GROUND_Y + 0.5 * SCALE, 0.0),
)
"""The toy edit recipe's cameras: the toy prior's framing scaled to objects of ``SCALE``, looking at the box centre."""


def _key(layouts: int, views: int, seed: int) -> str:
    blob = json.dumps(dict(v=EDIT_VERSION, layouts=layouts, views=views, seed=seed, scale=SCALE,
                           cams=[getattr(EDIT_CAMERAS, k) for k in ("elevation_range", "distance_range", "fovy_range", "center")],
                           colours=W.COLOURS, light=W.LIGHT_DIR), sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def random_layout(centre: Placed, g: torch.Generator) -> list[Placed]:
    """``centre`` plus one or two neighbours of other shapes at random azimuths, 0.4-0.6 from the centre."""
    out = [centre]
    others = [s for s in W.SHAPES if s != centre.shape]
    n = 1 + int(torch.randint(0, 2, (1,), generator=g))
    az0 = float(torch.rand(1, generator=g)) * 2 * math.pi
    for k in range(n):
        shape = others[int(torch.randint(0, len(others), (1,), generator=g))]
        colour = W.COLOUR_NAMES[int(torch.randint(0, len(W.COLOUR_NAMES), (1,), generator=g))]
        az = az0 + k * math.pi * (0.7 + 0.6 * float(torch.rand(1, generator=g)))
        r = 0.4 + 0.2 * float(torch.rand(1, generator=g))
        out.append(Placed(shape, colour, r * math.sin(az), r * math.cos(az), SCALE))
    return out


def build_edit_dataset(layouts_per_object: int = 6, views_per_layout: int = 12, seed: int = 0, points: int = 2000) -> dict:
    """Render every (shape, colour) as the centre of ``layouts_per_object`` random layouts.

    Returns uint8 tensors ``images [N,3,32,32]``, ``disparity [N,1,32,32]``, ``object_alpha [N,1,32,32]``,
    ``box_mask [N,1,32,32]`` and int64 ``scene [N]`` (index into ``world.all_scenes()``, no-marker entries).
    """
    from ..edit.box import EditBox
    from ..edit.views import box_mask, disparity_image
    from ..renderers.background import SolidBackground
    from ..renderers.gaussian import GaussianRenderer
    from tqdm import tqdm

    ren = GaussianRenderer(GaussianRenderer.Config())
    sky = SolidBackground(SolidBackground.Config(color=W.BACKGROUND))
    box = EditBox.parse(insert_box(SCALE))
    scenes = W.all_scenes()
    g = torch.Generator().manual_seed(seed)
    sampler = RandomCameraSampler(EDIT_CAMERAS, seed)
    out = {k: [] for k in ("images", "disparity", "object_alpha", "box_mask", "scene")}
    jobs = [(i, sc) for i, sc in enumerate(scenes) if not sc.marker]
    step = 0
    for i, sc in tqdm(jobs, desc="toy edit views", mininterval=5.0):
        for _ in range(layouts_per_object):
            layout = random_layout(Placed(sc.shape, sc.colour, 0.0, 0.0, SCALE), g)
            parts = [build_scene([p], points_per_object=points, ground_cells=0, seed=int(torch.randint(0, 1 << 30, (1,), generator=g)))
                     for p in layout]
            rep = _SplatScene([build_scene([], ground_cells=40)] + parts, centre=1)  # ground, centre object, neighbours
            cams = sampler.sample(step, batch_size=views_per_layout)
            step += 1
            with torch.no_grad():
                r = ren(rep, cams, sky)
            out["images"].append((r.rgb.clamp(0, 1) * 255).round().to(torch.uint8))
            out["disparity"].append((disparity_image(r.depth, r.alpha)[:, :1] * 255).round().to(torch.uint8))
            out["object_alpha"].append((r.meta["extra"].clamp(0, 1) * 255).round().to(torch.uint8))
            out["box_mask"].append((box_mask(cams, box) * 255).to(torch.uint8))
            out["scene"].append(torch.full((views_per_layout,), i, dtype=torch.long))
    return {k: torch.cat(v) for k, v in out.items()}


class _SplatScene:
    """Degree-0 splat dicts rendered together; the part at index ``centre`` is flagged in the extra channel."""

    def __init__(self, keep: list[dict], centre: int):
        self.means = torch.cat([p["means"] for p in keep])
        self.quats = torch.nn.functional.normalize(torch.cat([p["quats"] for p in keep]), dim=-1)
        self.scales = torch.cat([p["log_scales"] for p in keep]).exp()
        self.opacities = torch.sigmoid(torch.cat([p["logit_opacities"] for p in keep]))
        self.rgb = (torch.cat([p["sh"][:, 0] for p in keep]) * SH_C0 + 0.5).clamp_min(0)
        flag = [torch.full((len(p["means"]),), float(j == centre)) for j, p in enumerate(keep)]
        self.flag = torch.cat(flag)

    def activated(self) -> dict:
        return {"means": self.means, "quats": self.quats, "scales": self.scales, "opacities": self.opacities}

    def colors(self, cam_positions):
        return self.rgb[None].expand(cam_positions.shape[0], -1, -1)

    def extra_features(self, cam_positions):
        return self.flag[None, :, None].expand(cam_positions.shape[0], -1, 1)


def load_edit_dataset(cache_dir: str = ".cache", **kw) -> dict:
    """``build_edit_dataset(**kw)`` cached under ``cache_dir/toy_edit/<key>.pt``."""
    key = _key(kw.get("layouts_per_object", 6), kw.get("views_per_layout", 12), kw.get("seed", 0))
    path = Path(cache_dir) / "toy_edit" / f"{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    ds = build_edit_dataset(**kw)
    save_torch(ds, path)
    return ds
