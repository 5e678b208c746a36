"""Exports of a moving scene (``dynamic_gaussians.py``): frame sequences and an animated GLB.

- ``frames/frame_000.ply`` ...: the Gaussians at each frame's time, in the run's splat axes;
- ``model.glb``: the mesh of frame 0 (the usual textured mesh, taken from its renders) with one morph
  target per later frame: each vertex moves as the Gaussians nearest to it do between frame 0 and that
  frame (``vertex_motion``: their displacements blended by opacity and distance, as skinning blends
  bones) — what the renders show, where the field itself is only constrained at the Gaussians' centres
  and may do anything at a surface point between them — and an animation "motion" that plays the
  frames at ``fps``; the topology is fixed, which is what glTF morph targets need;
- ``frames/manifest.json``: frame count, fps, times, axes and the files.
The splat formats of frame 0 and the mesh formats are written as for a static run.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import torch

from ..data.cameras import clip_times


def animation_files(rep, export_cfg, render_at) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """``(files for export/, files for export/frames/)`` at ``export.frames`` times played at ``export.fps``;
    ``render_at(t)`` renders the scene at time t (the solid mesher's views)."""
    from .. import registry
    from .mesh import build_textured_mesh, encode_textured_mesh

    frames, fps = export_cfg.frames, export_cfg.fps
    times = clip_times(frames)
    splats = registry.get("exporter", "gaussians")()
    first = rep.frozen_at(0.0)
    files = splats.encode(first, export_cfg)
    per_frame = {}
    ply_only = replace(export_cfg, formats=["ply"])
    for k, t in enumerate(times.tolist()):
        per_frame[f"frame_{k:03d}.ply"] = splats.encode(rep.frozen_at(t), ply_only)["gaussians.ply"]
    seconds = [k / fps for k in range(frames)]
    manifest = {"frames": frames, "fps": fps, "times": [round(t, 6) for t in times.tolist()], "seconds": seconds,
                "axes": export_cfg.splat_axes, "splats": sorted(per_frame)}
    if any(f in export_cfg.formats for f in ("glb", "obj")):
        mesh = build_textured_mesh(first, export_cfg, render_at(0.0))
        offset, scale = mesh.placement
        world = torch.from_numpy(mesh.positions / scale + offset).float()
        morphs = [(d * scale).numpy() for d in vertex_motion(rep, world, times[1:].tolist())]
        files.update(encode_textured_mesh(mesh, export_cfg, morphs=morphs, times=seconds))
        if "model.glb" in files:
            manifest["glb"] = {"file": "model.glb", "morph_targets": len(morphs), "animation": "motion",
                               "max_displacement_m": float(max((np.linalg.norm(m, axis=1).max() for m in morphs), default=0.0))}
    per_frame["manifest.json"] = (json.dumps(manifest, indent=2) + "\n").encode()
    return files, per_frame


@torch.no_grad()
def vertex_motion(rep, vertices: torch.Tensor, times: list[float], k: int = 8, chunk: int = 4096) -> list[torch.Tensor]:
    """Displacements ``[V,3]`` (world units, CPU) of frame-0 points ``vertices`` from time 0 to each of ``times``:
    each point takes the mean displacement of its ``k`` nearest frame-0 Gaussian centres, weighted by their
    opacity and by ``exp(-d^2 / (2 s^2))`` with ``s`` the distance to its nearest centre (at least 1 mm), so
    a point moves with the Gaussians that draw it."""
    g0 = rep.deformed(0.0)
    dev = g0["means"].device
    centres = g0["means"].float()
    opacity = torch.sigmoid(g0["opacities"].float()).reshape(-1)
    moved = [rep.deformed(float(t))["means"].float() - centres for t in times]
    k = min(k, len(centres))
    out = [torch.empty(len(vertices), 3) for _ in times]
    for i in range(0, len(vertices), chunk):
        v = vertices[i : i + chunk].to(dev).float()
        d, idx = torch.cdist(v, centres).topk(k, largest=False)  # [n,k]
        s = d[:, :1].clamp_min(1e-3)
        w = opacity[idx] * torch.exp(-0.5 * (d / s).square())
        w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
        for o, m in zip(out, moved):
            o[i : i + chunk] = (w[..., None] * m[idx]).sum(1).cpu()
    return out
