"""The toy prior's training set: every scene rendered from random views, cached once as a tensor file.

Why in memory: 8,400 images of 32x32 are 26 MB as uint8, so the whole set sits in RAM and a batch is one
index operation (no DataLoader workers competing with training for the two CPU cores).

Why captions at batch time: the caption mix (empty / no view word / view word) is drawn per training
example, so every image is seen with each kind of caption over training. The view word comes from
``prompts.views.view_index`` on the camera's (elevation, azimuth) — the exact rule the prompt processor
uses when it picks view-dependent embeddings, so the prior learns the same convention SDS asks for.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import torch

from ..data.cameras import RandomCameraSampler
from ..prompts.views import VIEWS, view_index
from . import world as W
from .render import render_scene
from ..utils.atomic import save_torch

RENDER_VERSION = 1
"""Bump when the renderer's output changes, so stale caches are not reused."""

DATASET_VERSION = 2
"""Bump when the cached fields change (2: per-pixel marker coverage for the marker-weighted loss)."""

CAPTION_MIX = (0.10, 0.30, 0.60)
"""Probabilities of (empty caption, caption without view word, caption with view word)."""


def _key(views_per_scene: int, resolution: int, ssaa: int, seed: int) -> str:
    blob = json.dumps(
        dict(
            v=RENDER_VERSION,
            fields=DATASET_VERSION,
            views=views_per_scene,
            res=resolution,
            ssaa=ssaa,
            seed=seed,
            cams=[getattr(W.TOY_CAMERAS, k) for k in ("elevation_range", "azimuth_range", "distance_range", "fovy_range")],
            shapes=W.SHAPES,
            colours=W.COLOURS,
            light=W.LIGHT_DIR,
            ambient=W.AMBIENT,
        ),
        sort_keys=True,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def build_dataset(views_per_scene: int = 120, resolution: int = 32, ssaa: int = 2, seed: int = 0) -> dict:
    """Render all ``world.all_scenes()`` from ``views_per_scene`` random ``TOY_CAMERAS`` views each.

    Returns a dict of tensors: ``images`` uint8 [N,3,R,R]; ``marker_mask`` uint8 [N,1,R,R] (the marker's
    pixel coverage, 0-255); ``scene``, ``shape``, ``colour``, ``marker``,
    ``view`` long [N]; ``elevation``, ``azimuth`` (degrees), ``distance``, ``fovy`` (degrees) float [N].
    """
    scenes = W.all_scenes()
    n = len(scenes) * views_per_scene
    cfg = W.TOY_CAMERAS
    sampler = RandomCameraSampler(cfg, seed=seed)
    cams = sampler.sample(0, batch_size=n).with_resolution(resolution, resolution)
    scene_idx = torch.arange(len(scenes)).repeat_interleave(views_per_scene)
    out = render_scene([scenes[i] for i in scene_idx.tolist()], cams, ssaa=ssaa)
    images = (out["rgb"].clamp(0, 1) * 255).round().to(torch.uint8)
    el, az = cams.elevation_deg, cams.azimuth_deg
    return dict(
        images=images,
        marker_mask=(out["marker"].clamp(0, 1) * 255).round().to(torch.uint8),
        scene=scene_idx,
        shape=torch.tensor([W.SHAPES.index(scenes[i].shape) for i in scene_idx.tolist()]),
        colour=torch.tensor([W.COLOUR_NAMES.index(scenes[i].colour) for i in scene_idx.tolist()]),
        marker=torch.tensor([int(scenes[i].marker) for i in scene_idx.tolist()]),
        view=view_index(el, az),
        elevation=el,
        azimuth=az,
        distance=cams.distance,
        fovy=torch.rad2deg(cams.fovy),
    )


def load_dataset(
    cache_dir: str | os.PathLike = ".cache",
    views_per_scene: int = 120,
    resolution: int = 32,
    ssaa: int = 2,
    seed: int = 0,
    verbose: bool = True,
) -> dict:
    """``build_dataset`` with an on-disk cache ``<cache_dir>/toy-dataset-<hash>.pt`` (written atomically)."""
    path = Path(cache_dir) / f"toy-dataset-{_key(views_per_scene, resolution, ssaa, seed)}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    if verbose:
        print(f"rendering toy dataset ({len(W.all_scenes()) * views_per_scene} images) -> {path}", flush=True)
    ds = build_dataset(views_per_scene, resolution, ssaa, seed)
    save_torch(ds, path)
    return ds


def all_captions() -> list[str]:
    """The caption table: for scene s, entry ``s*(1+len(VIEWS)) + 0`` has no view word, ``+1+v`` view v."""
    out = []
    for sc in W.all_scenes():
        out.append(W.caption(sc))
        out += [W.caption(sc, v) for v in VIEWS]
    return out


def sample_captions(
    ds: dict, idx: torch.Tensor, generator: Optional[torch.Generator] = None, mix=CAPTION_MIX
) -> torch.Tensor:
    """Per example, an index into ``[""] + all_captions()`` drawn with the (empty, no view, view) ``mix``.

    Index 0 is the empty caption; index ``1 + s*(1+len(VIEWS)) + k`` is scene s's caption k.
    """
    u = torch.rand(idx.shape[0], generator=generator)
    scene, view = ds["scene"][idx], ds["view"][idx]
    base = 1 + scene * (1 + len(VIEWS))
    with_view = base + 1 + view
    return torch.where(u < mix[0], torch.zeros_like(base), torch.where(u < mix[0] + mix[1], base, with_view))
