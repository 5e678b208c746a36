"""Surface refinement: move the solid mesh's vertices so its renders match the representation's.

The solid grid puts the surface within a voxel of what the renders show; this fits it the rest of
the way. Vertex offsets are optimised (Adam) through the project's mesh renderer (nvdiffrast on
CUDA, ``renderers/raster_torch.py`` elsewhere) against each view's alpha (MSE on the antialiased
coverage, which moves silhouettes) and depth (L1 where both are opaque, which flattens what should
be flat), with normal consistency and a uniform Laplacian (``representations/mesh_regularisers.py``)
so flat faces stay flat. Only vertices move: the topology the solid mesher found is kept, so no
handle or tunnel can appear.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..renderers.mesh import MeshRenderer
from ..representations.mesh_regularisers import edge_face_pairs, neighbour_lists, normal_consistency, uniform_laplacian
from .views import ALPHA_LEVEL, ViewSet

log = logging.getLogger("threedgen")


class MeshScene(torch.nn.Module):
    """A fixed-topology mesh with trainable vertex offsets, rendered as a white surface by ``MeshRenderer``."""

    def __init__(self, vertices: torch.Tensor, faces: torch.Tensor):
        super().__init__()
        self.register_buffer("base", vertices.float())
        self.register_buffer("faces", faces.long())
        self.offset = torch.nn.Parameter(torch.zeros_like(self.base))

    def mesh(self):
        return self.base + self.offset, self.faces

    def albedo_at(self, points: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(points)


def black(dirs: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(dirs)


def refine_surface(vertices: np.ndarray, faces: np.ndarray, views: ViewSet, steps: int = 100, views_per_step: int = 4,
                   lr: float = 0.0003, w_depth: float = 0.2, depth_trust: float = 0.03, w_normal: float = 0.2, w_laplacian: float = 2.0,
                   seed: int = 0) -> tuple[np.ndarray, dict]:
    """(refined vertices [V,3] float32, info {steps, mask_mse, depth_l1 before/after, seconds}).

    ``lr`` is in units of the object's size (largest side of the views' bounding box); depth errors
    are measured in the same unit. Raises ValueError if the fit produces NaN/Inf.
    """
    t0 = time.perf_counter()
    size = float((views.hi - views.lo).max())
    if steps <= 0 or len(faces) == 0:
        return vertices, {"steps": 0}
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # nvdiffrast there, raster_torch here
    scene = MeshScene(torch.from_numpy(vertices), torch.from_numpy(faces)).to(dev)
    renderer = MeshRenderer(MeshRenderer.Config(backend="auto", shading="albedo"))
    opt = torch.optim.Adam([scene.offset], lr=lr * size)
    g = torch.Generator().manual_seed(seed)
    pairs = edge_face_pairs(scene.faces, len(vertices))
    neighbours = neighbour_lists(scene.faces, len(vertices))  # fixed topology: built once
    edge = float(np.linalg.norm(vertices[faces[:, 0]] - vertices[faces[:, 1]], axis=1).mean())
    history = []
    for step in range(steps + 1):
        ids = torch.randperm(len(views), generator=g)[:views_per_step]
        out = renderer(scene, views.cameras[ids].to(dev), black)
        a_t, d_t = views.alpha[ids].to(dev), views.depth[ids].to(dev)
        alpha = out.alpha[:, 0]
        mask_mse = F.mse_loss(alpha, (a_t >= ALPHA_LEVEL).float())  # the solid's own definition of the silhouette
        depth = out.depth[:, 0] / alpha.clamp_min(1e-3)
        res = (depth - d_t).abs() / size
        # a soft surface renders its mean depth, far behind where it turns opaque: such pixels (residual
        # beyond depth_trust) say nothing about where the surface is and are left out
        both = (alpha.detach() > 0.99) & (a_t >= ALPHA_LEVEL) & (res.detach() < depth_trust)
        depth_l1 = res[both].mean() if bool(both.any()) else alpha.sum() * 0
        history.append((float(mask_mse.detach()), float(depth_l1.detach())))
        if step == steps:
            break
        v, f = scene.mesh()
        nc = normal_consistency(v, f, pairs)
        lap = uniform_laplacian(v, f, neighbours).square().sum(-1).mean() / edge**2
        loss = mask_mse + w_depth * depth_l1 + w_normal * nc + w_laplacian * lap * 1e-2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not bool(torch.isfinite(scene.offset).all()) or not math.isfinite(float(loss.detach())):
            raise ValueError(
                "surface refinement diverged (NaN/Inf vertex positions); the previous export is kept. "
                "Lower export.refine_lr or skip the refinement with export.refine_steps=0"
            )
    v = (scene.base + scene.offset).detach().cpu().numpy().astype(np.float32)
    first = np.mean(history[:3], axis=0)
    last = np.mean(history[-3:], axis=0)
    info = {"steps": steps, "mask_mse": [float(first[0]), float(last[0])], "depth_l1": [float(first[1]), float(last[1])],
            "seconds": time.perf_counter() - t0}
    log.info("export: refinement %.1fs, %d steps: mask MSE %.4f -> %.4f, depth L1 %.4f -> %.4f (of the object's size)",
             info["seconds"], steps, first[0], last[0], first[1], last[1])
    return v, info
