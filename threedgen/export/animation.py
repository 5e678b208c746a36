"""Exports of a moving scene (``dynamic_gaussians.py``): frame sequences and an animated GLB.

- ``frames/frame_000.ply`` ...: the Gaussians at each frame's time, in the run's splat axes;
- ``model.glb``: the mesh of frame 0 (the usual textured mesh, taken from its renders) with one morph
  target per later frame: each vertex moved by the deformation field's displacement between frame 0
  and that frame (the field is continuous in space, so it moves surface points as it moves the
  Gaussians near them), and an animation "motion" that plays the frames at ``fps``; the topology is
  fixed, which is what glTF morph targets need;
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
        with torch.no_grad():
            dev = rep.params["means"].device
            base = rep.deformation(world.to(dev), 0.0)["dx"]
            morphs = [((rep.deformation(world.to(dev), t)["dx"] - base) * scale).cpu().numpy() for t in times[1:].tolist()]
        files.update(encode_textured_mesh(mesh, export_cfg, morphs=morphs, times=seconds))
        if "model.glb" in files:
            manifest["glb"] = {"file": "model.glb", "morph_targets": len(morphs), "animation": "motion",
                               "max_displacement_m": float(max((np.linalg.norm(m, axis=1).max() for m in morphs), default=0.0))}
    per_frame["manifest.json"] = (json.dumps(manifest, indent=2) + "\n").encode()
    return files, per_frame
