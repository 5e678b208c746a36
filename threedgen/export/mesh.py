"""Mesh export: the representation's isosurface as GLB and OBJ (+Y up, metres, front +Z).

The world convention is glTF's, so no axis shuffle is needed. Colours are per-vertex
(COLOR_0 in GLB, ``v x y z r g b`` in OBJ); texture baking belongs to the export pipeline issue.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("threedgen")


def build_trimesh(vertices: np.ndarray, faces: np.ndarray, colours: np.ndarray | None, pivot: str = "center"):
    import trimesh

    if len(faces) == 0:
        raise ValueError("the mesh is empty (no faces): nothing to export; train longer or lower export.threshold")
    v = np.asarray(vertices, dtype=np.float32).copy()
    if pivot == "bottom":
        v[:, 1] -= v[:, 1].min()
        v[:, [0, 2]] -= (v[:, [0, 2]].max(0) + v[:, [0, 2]].min(0)) / 2
    vc = None
    if colours is not None:
        vc = (np.clip(colours, 0, 1) * 255 + 0.5).astype(np.uint8)
        vc = np.concatenate([vc, np.full((len(vc), 1), 255, np.uint8)], axis=1)
    mesh = trimesh.Trimesh(vertices=v, faces=np.asarray(faces, dtype=np.int64), vertex_colors=vc, process=False)
    mesh.fix_normals()
    return mesh


class MeshExporter:
    """Registered exporter: isosurface -> ``model.glb`` / ``model.obj`` in the run's ``export/``.

    Its settings are the run's ``export`` section (formats, resolution, threshold, pivot).
    """

    @dataclass
    class Config:
        pass

    def __init__(self, cfg=None):
        self.cfg = cfg

    def __call__(self, representation, export_cfg, folder: Path) -> list[Path]:
        return export_mesh(representation, export_cfg, folder)


def export_mesh(representation, cfg, folder: Path) -> list[Path]:
    """Write ``cfg.formats`` of the representation's isosurface into ``folder`` (atomic per file)."""
    v, f, c = representation.isosurface(resolution=cfg.resolution, threshold=cfg.threshold)
    thr = getattr(representation, "last_threshold", cfg.threshold)
    log.info("isosurface: %d vertices, %d faces (threshold %s)", len(v), len(f), thr)
    mesh = build_trimesh(v, f, c, pivot=cfg.pivot)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in cfg.formats:
        path = folder / f"model.{fmt}"
        tmp = folder / f".model.tmp.{fmt}"
        mesh.export(tmp, file_type=fmt)
        os.replace(tmp, path)
        written.append(path)
    return written
