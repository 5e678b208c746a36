"""The asset's own fidelity check: reload the written GLB, render it next to the representation.

``asset_report`` reads ``model.glb`` back from disk with trimesh (positions, faces, UVs and the
embedded base-colour PNG: what an engine would load), rasterises it over held-out views (``views.held_out``:
the export's framing from directions the mesh and texture were not fitted to) and compares it with the
representation's unlit renders there, both composited over white:

- ``psnr_db``: PSNR over every pixel of every view (the novel-view-synthesis convention), the GLB's
  silhouettes antialiased as the representation's renders are;
- ``mask_iou``: IoU of the GLB's coverage and the renders' alpha > 0.5;
- ``psnr_opaque_bound_db``: the PSNR the representation's own colours reach when its alpha is made
  hard at 0.5 (antialiased by 4x supersampling) -- what any opaque surface with the renders' own
  silhouette and colours would score. Soft Gaussian edges cap the GLB's PSNR there, not the mesh;
- topology (``topology.mesh_stats``), texture size and the timings of every export stage.

It writes ``preview.png`` (top row: the representation, bottom row: the GLB, 8 views) and
``report.json``, and returns the report with a one-line summary.
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from .mesh_views import rasterize_mesh
from .topology import mesh_stats
from .views import ALPHA_LEVEL, ViewSet


def load_glb(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor]:
    """(positions, faces, uv with v down, texture [T,T,3] float) of a single-mesh textured GLB."""
    import trimesh
    from PIL import Image

    scene = trimesh.load(path, force="scene", process=False)
    meshes = list(scene.geometry.values())
    if len(meshes) != 1:
        raise ValueError(f"{path} holds {len(meshes)} meshes; the report expects the exporter's single mesh")
    m = meshes[0]
    uv = np.asarray(m.visual.uv, np.float32).copy()
    uv[:, 1] = 1.0 - uv[:, 1]  # trimesh flips glTF's v (top-left origin) to OpenGL's; flip back
    img = m.visual.material.baseColorTexture
    if not isinstance(img, Image.Image):
        raise ValueError(f"{path} has no base-colour texture")
    tex = torch.from_numpy(np.asarray(img.convert("RGB"), np.float32) / 255.0)
    return np.asarray(m.vertices, np.float32), np.asarray(m.faces, np.int64), uv, tex


def composite(colour: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """[N,H,W,3] over white."""
    return colour * alpha[..., None] + (1 - alpha[..., None])


def opaque_coverage(alpha: torch.Tensor, ss: int = 4) -> torch.Tensor:
    """Per-pixel coverage [N,H,W] of the surface where the bilinear alpha crosses 0.5, by ``ss``x
    supersampling: the antialiased silhouette of an opaque object with the renders' own outline."""
    import torch.nn.functional as F

    up = F.interpolate(alpha[:, None], scale_factor=ss, mode="bilinear", align_corners=False)
    return F.avg_pool2d((up >= ALPHA_LEVEL).float(), ss)[:, 0]


def asset_report(glb: Path, views: ViewSet, timings: dict, extra: dict | None = None, preview_views: int = 8,
                 placement: tuple = (np.zeros(3), 1.0), started: float | None = None) -> tuple[dict, dict[str, bytes]]:
    """(report dict, {'preview.png': bytes, 'report.json': bytes}). ``placement`` (offset, scale) is what the
    exporter applied (``mesh.place``); it is undone so the GLB lines up with the views."""
    from ..utils.images import make_grid

    v, f, uv, tex = load_glb(glb)
    v = (v / placement[1] + placement[0]).astype(np.float32)
    mv = rasterize_mesh(v, f, uv, views.cameras)
    with torch.no_grad():
        mesh_rgb = mv.composite(tex)  # antialiased silhouettes, as the representation's renders have
    rep_rgb = composite(views.colour, views.alpha)
    psnr = _psnr(mesh_rgb, rep_rgb)
    bound = _psnr(composite(views.colour, opaque_coverage(views.alpha)), rep_rgb)
    m_rep = views.alpha >= ALPHA_LEVEL
    iou = float((mv.covered & m_rep).sum() / (mv.covered | m_rep).sum().clamp_min(1))
    report = {**mesh_stats(v, f), "psnr_db": round(psnr, 2), "psnr_opaque_bound_db": round(bound, 2), "mask_iou": round(iou, 4),
              "texture_size": int(tex.shape[0]), "held_out_views": len(views), "view_resolution": int(views.alpha.shape[-1]),
              "timings_s": {k: round(float(t), 3) for k, t in timings.items()}, **(extra or {})}
    if started is not None:
        report["timings_s"]["report"] = round(time.perf_counter() - started, 3)
    ids = np.linspace(0, len(views) - 1, preview_views).round().astype(int)
    rows = [[rep_rgb[i].permute(2, 0, 1) for i in ids], [mesh_rgb[i].permute(2, 0, 1) for i in ids]]
    buf = io.BytesIO()
    import imageio.v3 as iio

    iio.imwrite(buf, make_grid(rows), extension=".png")
    return report, {"preview.png": buf.getvalue(), "report.json": (json.dumps(report, indent=2) + "\n").encode()}


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / max(float(((a - b) ** 2).mean()), 1e-12))


def summary_line(report: dict) -> str:
    closed = "watertight" if report["watertight"] else "NOT watertight"
    return (f"export: {report['faces']} faces, {closed}, Euler {report['euler']}, {report['components']} component(s), "
            f"GLB vs renders {report['psnr_db']:.1f} dB (an opaque copy of the renders: "
            f"{report['psnr_opaque_bound_db']:.1f} dB), mask IoU {report['mask_iou']:.3f}, "
            f"{report['texture_size']}px texture, {sum(report['timings_s'].values()):.1f}s")
