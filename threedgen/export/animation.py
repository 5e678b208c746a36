"""Exports of a moving scene (``dynamic_gaussians.py``, ``dynamic_nerf.py``): frame sequences and an animated GLB.

- ``frames/frame_000.ply`` ...: the Gaussians at each frame's time, in the run's splat axes; a moving NeRF
  has no splats and writes ``frames/frame_000.glb`` ...: frame 0's textured mesh moved to each time;
- ``model.glb``: the mesh of frame 0 (the usual textured mesh, taken from its renders) with one morph
  target per later frame: each vertex moves as the Gaussians nearest to it do between frame 0 and that
  frame (a NeRF's vertices move by the inverse of its backward warp, ``DynamicNeRF.forward_motion``;
  ``vertex_motion`` for Gaussians: their displacements blended by opacity and distance, as skinning blends
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
    ``render_at(t)`` renders the scene at time t (the solid mesher's views). Moving Gaussians give a splat
    PLY per frame; a moving NeRF (no splats) a GLB per frame: frame 0's textured mesh moved to that time."""
    from .. import registry
    from .extract import check_finite_parameters

    check_finite_parameters(rep)  # the field too: a frame's scene is a view or a copy of it
    frames, fps = export_cfg.frames, export_cfg.fps
    times = clip_times(frames)
    seconds = [k / fps for k in range(frames)]
    manifest = {"frames": frames, "fps": fps, "times": [round(t, 6) for t in times.tolist()], "seconds": seconds}
    files, per_frame = {}, {}
    splatted = hasattr(rep, "splat_data")
    if splatted:
        splats = registry.get("exporter", "gaussians")()
        files = splats.encode(rep.frozen_at(0.0), export_cfg)
        ply_only = replace(export_cfg, formats=["ply"])
        for k, t in enumerate(times.tolist()):
            per_frame[f"frame_{k:03d}.ply"] = splats.encode(rep.frozen_at(t), ply_only)["gaussians.ply"]
        manifest["axes"], manifest["splats"] = export_cfg.splat_axes, sorted(per_frame)
    if any(f in export_cfg.formats for f in ("glb", "obj")) or not splatted:
        files.update(_animated_mesh(rep, export_cfg, render_at, times, seconds, per_frame, manifest))
    per_frame["manifest.json"] = (json.dumps(manifest, indent=2) + "\n").encode()
    return files, per_frame


def _animated_mesh(rep, export_cfg, render_at, times, seconds, per_frame: dict, manifest: dict) -> dict[str, bytes]:
    """Frame 0's textured mesh with a morph target per later frame; for a scene without splats also one GLB
    per frame in ``per_frame`` (the mesh moved to that time, normals recomputed)."""
    import imageio.v3 as iio

    from .gltf import textured_mesh_glb
    from .mesh import build_textured_mesh, encode_textured_mesh

    mesh = build_textured_mesh(rep.frozen_at(0.0), export_cfg, render_at(0.0))
    offset, scale = mesh.placement
    world = torch.from_numpy(mesh.positions / scale + offset).float()
    moving = getattr(rep, "forward_motion", None)  # a backward-warped field moves points itself; Gaussians drag them
    motion = moving(world, times[1:].tolist()) if moving is not None else vertex_motion(rep, world, times[1:].tolist())
    morphs = [(d.cpu() * scale).numpy() for d in motion]
    files = encode_textured_mesh(mesh, export_cfg, morphs=morphs, times=seconds)
    if "model.glb" in files:
        manifest["glb"] = {"file": "model.glb", "morph_targets": len(morphs), "animation": "motion",
                           "max_displacement_m": float(max((np.linalg.norm(m, axis=1).max() for m in morphs), default=0.0))}
    if not hasattr(rep, "splat_data"):
        png = iio.imwrite("<bytes>", mesh.texture, extension=".png")
        for k, m in enumerate([np.zeros_like(mesh.positions)] + morphs):
            pos = (mesh.positions + m).astype(np.float32)
            per_frame[f"frame_{k:03d}.glb"] = textured_mesh_glb(pos, welded_normals(pos, mesh.faces), mesh.uv, mesh.faces, png,
                                                                export_cfg.metallic, export_cfg.roughness, name=f"frame_{k:03d}")
        manifest["meshes"] = [f"frame_{k:03d}.glb" for k in range(len(morphs) + 1)]
    return files


def welded_normals(positions: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Vertex normals of a mesh whose UV seams split vertices: computed on the mesh welded by position, so
    the two sides of a seam share one normal (as the unsplit surface has)."""
    from .bake import vertex_normals

    uniq, inv = np.unique(positions, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    return vertex_normals(uniq, inv[faces])[inv]


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
