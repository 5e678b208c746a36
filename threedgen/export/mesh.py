"""Textured mesh export: representation -> cleaned, decimated, UV-unwrapped, baked mesh -> GLB and OBJ.

Stages (each logged with its time): extraction (``extract``), floater removal (``cleanup``),
decimation (``decimate``), UV unwrap + albedo bake + seam dilation (``bake``), placement (pivot,
size), then the writers (``gltf``, ``obj``). Output is glTF's frame, which is the world frame:
+Y up, metres, front +Z, so no axis shuffle. Everything is encoded in memory first and written
with ``files.write_files``, so a failure leaves the previous export untouched.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("threedgen")

MESH_FORMATS = ("glb", "obj")
TEXTURE_NAME = "model_basecolor.png"


def build_trimesh(vertices: np.ndarray, faces: np.ndarray, colours: np.ndarray | None, pivot: str = "center"):
    """A vertex-coloured ``trimesh.Trimesh`` (quick previews; the exporter writes textured meshes)."""
    import trimesh

    if len(faces) == 0:
        raise ValueError("the mesh is empty (no faces): nothing to export; train longer or lower export.threshold")
    v = np.asarray(vertices, dtype=np.float32).copy()
    if pivot == "bottom":
        v = v - pivot_offset(v, "bottom")
    vc = None
    if colours is not None:
        vc = (np.clip(colours, 0, 1) * 255 + 0.5).astype(np.uint8)
        vc = np.concatenate([vc, np.full((len(vc), 1), 255, np.uint8)], axis=1)
    mesh = trimesh.Trimesh(vertices=v, faces=np.asarray(faces, dtype=np.int64), vertex_colors=vc, process=False)
    mesh.fix_normals()
    return mesh


@dataclass
class TexturedMesh:
    """A mesh ready to write: per-corner-shared vertices (seams split), top-left-origin UVs."""

    positions: np.ndarray  # [V,3] float32, metres, +Y up
    normals: np.ndarray  # [V,3] float32 unit
    uv: np.ndarray  # [V,2] float32, v down
    faces: np.ndarray  # [F,3] int64, counter-clockwise seen from outside
    texture: np.ndarray  # [T,T,3] uint8 sRGB
    timings: dict
    placement: tuple = (np.zeros(3), 1.0)  # (offset, scale): positions = (world - offset) * scale
    views: object = None  # the ViewSet the mesh was taken from (None: no renderer given)
    check: object = None  # held-out views (``views.held_out``) the report compares the GLB with
    info: dict = field(default_factory=dict)  # per-stage figures for the report


@contextmanager
def _stage(name: str, timings: dict):
    t0 = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t0


def pivot_offset(v: np.ndarray, pivot: str) -> np.ndarray:
    """Point that becomes the origin: the world origin ('center') or the bounding box's bottom centre ('bottom')."""
    if pivot == "center":
        return np.zeros(3, dtype=v.dtype)
    lo, hi = v.min(0), v.max(0)
    return np.array([(lo[0] + hi[0]) / 2, lo[1], (lo[2] + hi[2]) / 2], dtype=v.dtype)


def placement(v: np.ndarray, pivot: str, size_m: float | None) -> tuple[np.ndarray, float]:
    """(offset, scale) that ``place`` applies: placed = (v - offset) * scale."""
    scale = 1.0
    if size_m is not None:
        height = float(v[:, 1].max() - v[:, 1].min())
        if height <= 0:
            raise ValueError("export.size_m cannot scale a mesh of zero height")
        scale = size_m / height
    return pivot_offset(v, pivot), scale


def place(v: np.ndarray, pivot: str, size_m: float | None) -> np.ndarray:
    """Move the pivot to the origin and, if ``size_m`` is set, scale uniformly to that height (Y extent)."""
    offset, scale = placement(v, pivot, size_m)
    return ((v - offset) * scale).astype(np.float32)


def build_textured_mesh(representation, cfg, render=None) -> TexturedMesh:
    """Run every stage on ``representation`` with the ``export`` config ``cfg``.

    ``render`` (cameras -> RenderOutput, unlit colour over black; see ``views.RenderFn``) is what the
    solid mesher, the refinement, the texture fit and the report read; ``export.mesher=density`` works
    without it (marching cubes of ``representation.isosurface``, texture sampled from ``albedo_at``).
    """
    from .extract import check_finite_parameters

    check_finite_parameters(representation)
    if cfg.mesher == "solid":
        if render is None:
            raise ValueError("export.mesher=solid needs the representation's renderer (export from a run); "
                             "use export.mesher=density for a bare density field")
        return _solid_mesh(render, cfg)
    mesh = _density_mesh(representation, cfg)
    if render is not None:
        from .views import capture, held_out

        with _stage("views", mesh.timings):
            mesh.views = capture(render, cfg.views, cfg.view_resolution)
            mesh.check = held_out(render, mesh.views)
    return mesh


def _solid_mesh(render, cfg) -> TexturedMesh:
    from .bake import unwrap, vertex_normals
    from .decimate import decimate_bounded
    from .refine import refine_surface
    from .solid import solid_surface
    from .texture_fit import fit_texture
    from .views import capture, held_out

    t: dict = {}
    info: dict = {"mesher": "solid"}
    with _stage("views", t):
        views = capture(render, cfg.views, cfg.view_resolution)
        check = held_out(render, views)
    size = float((views.hi - views.lo).max())
    log.info("export: views %.1fs: %d views at %d px, object %.3f m across", t["views"], len(views), cfg.view_resolution, size)
    with _stage("solid", t):
        v, f = solid_surface(views, cfg.resolution)
    log.info("export: solid %.1fs: %d faces from a %d^3 grid", t["solid"], len(f), cfg.resolution)
    if cfg.refine_steps > 0:
        with _stage("refine", t):
            # refine a lighter mesh (within half a voxel of the grid's): the cost per step follows the face count
            cell = size / (cfg.resolution - 1)
            cap = min(2 * cfg.target_faces, 40000) if cfg.target_faces > 0 else 40000
            v, f, _ = decimate_bounded(v, f, cap, 0.5 * cell)
            v, info["refine"] = refine_surface(v, f, views, steps=cfg.refine_steps, lr=cfg.refine_lr)
    with _stage("decimation", t):
        v, f, info["decimation"] = decimate_bounded(v, f, cfg.target_faces, cfg.decimate_tolerance * size)
    log.info("export: decimation %.1fs: %d faces (budget %s, error %.4f m)", t["decimation"], len(f),
             cfg.target_faces or "none", info["decimation"]["error"])
    if cfg.target_faces and len(f) > cfg.target_faces:
        log.warning("export: no face count within export.target_faces=%d keeps the mesh closed with its topology; "
                    "kept %d faces (raise target_faces or lower export.resolution)", cfg.target_faces, len(f))
    with _stage("unwrap", t):
        vmap, fuv, uv = unwrap(v, f, cfg.texture_size)
    with _stage("texture", t):
        positions = v[vmap]
        tex, info["texture"] = fit_texture(positions, fuv, uv, views, cfg.texture_size, cfg.dilation,
                                            steps=cfg.texture_fit_steps, smoothness=cfg.texture_smoothness)
        normals = vertex_normals(v, f)[vmap]  # from the unsplit mesh: no shading crease along UV seams
    texture = (tex.numpy() * 255 + 0.5).astype(np.uint8)
    mesh = TexturedMesh(place(positions, cfg.pivot, cfg.size_m), normals, uv, fuv, texture, t,
                        placement(positions, cfg.pivot, cfg.size_m))
    mesh.views, mesh.check, mesh.info = views, check, info
    return mesh


def _density_mesh(representation, cfg) -> TexturedMesh:
    from .bake import bake_albedo, unwrap, vertex_normals
    from .cleanup import keep_large_components
    from .decimate import decimate
    from .extract import extract_surface

    t: dict = {}
    with _stage("extraction", t):
        v, f = extract_surface(representation, cfg.resolution, cfg.threshold)
    thr = getattr(representation, "last_threshold", None)
    log.info("export: extraction %.2fs: %d vertices, %d faces (threshold %s)", t["extraction"], len(v), len(f), f"{thr:.4g}" if thr else cfg.threshold)
    with _stage("cleanup", t):
        v, f, dropped = keep_large_components(v, f, cfg.min_component_fraction)
    log.info("export: cleanup %.2fs: dropped %d small components, %d faces left", t["cleanup"], dropped, len(f))
    with _stage("decimation", t):
        v, f = decimate(v, f, cfg.target_faces)
    log.info("export: decimation %.2fs: %d faces (target %s)", t["decimation"], len(f), cfg.target_faces or "off")
    with _stage("unwrap", t):
        vmap, fuv, uv = unwrap(v, f, cfg.texture_size)
    log.info("export: unwrap %.2fs: %d UV vertices", t["unwrap"], len(uv))
    with _stage("bake", t):
        positions = v[vmap]
        tex, _ = bake_albedo(representation, positions, fuv, uv, cfg.texture_size, cfg.dilation)
        normals = vertex_normals(v, f)[vmap]  # from the unsplit mesh: no shading crease along UV seams
    log.info("export: bake %.2fs: %dx%d texture", t["bake"], cfg.texture_size, cfg.texture_size)
    texture = (tex.numpy() * 255 + 0.5).astype(np.uint8)
    mesh = TexturedMesh(place(positions, cfg.pivot, cfg.size_m), normals, uv, fuv, texture, t,
                        placement(positions, cfg.pivot, cfg.size_m))
    mesh.info = {"mesher": "density", "threshold": thr}
    return mesh


def encode_textured_mesh(mesh: TexturedMesh, cfg, morphs=None, times=None) -> dict[str, bytes]:
    """{file name: bytes} for the mesh formats in ``cfg.formats``; ``morphs``/``times`` animate the GLB
    (``gltf.textured_mesh_glb``)."""
    import imageio.v3 as iio

    from .gltf import textured_mesh_glb
    from .obj import textured_mesh_obj

    t0 = time.perf_counter()
    png = iio.imwrite("<bytes>", mesh.texture, extension=".png")
    files: dict[str, bytes] = {}
    if "glb" in cfg.formats:
        files["model.glb"] = textured_mesh_glb(mesh.positions, mesh.normals, mesh.uv, mesh.faces, png, cfg.metallic, cfg.roughness,
                                               morphs=morphs, times=times)
    if "obj" in cfg.formats:
        files["model.obj"], files["model.mtl"] = textured_mesh_obj(mesh.positions, mesh.normals, mesh.uv, mesh.faces, "model.mtl", TEXTURE_NAME)
        files[TEXTURE_NAME] = png
    mesh.timings["write"] = time.perf_counter() - t0
    log.info("export: encoded %s in %.2fs", ", ".join(files), mesh.timings["write"])
    return files


class MeshExporter:
    """Registered exporter ``mesh``: textured ``model.glb`` and ``model.obj`` (+ ``.mtl`` + PNG), and with a
    renderer ``preview.png`` + ``report.json`` (``report.py``).

    ``export.mesher=solid`` (default) needs ``render`` (see ``build_textured_mesh``); ``density`` works for any
    representation with ``isosurface(resolution, threshold)`` and ``albedo_at(points)`` (NeRF, DMTet;
    Gaussians through ``splat_field.SplatField``). Its settings are the run's ``export`` section.
    """

    @dataclass
    class Config:
        pass

    def __init__(self, cfg=None):
        self.cfg = cfg
        self.report: dict | None = None

    def encode(self, representation, export_cfg, render=None) -> dict[str, bytes]:
        """{file name: bytes}; with ``render`` and a GLB, also the preview and report (``self.report``)."""
        if not any(f in export_cfg.formats for f in MESH_FORMATS):
            return {}
        mesh = build_textured_mesh(representation, export_cfg, render)
        files = encode_textured_mesh(mesh, export_cfg)
        if mesh.views is not None and "model.glb" in files:
            files.update(self._report(files["model.glb"], mesh))
        return files

    def _report(self, glb: bytes, mesh: TexturedMesh) -> dict[str, bytes]:
        """Write the GLB to a scratch file, read it back with trimesh and compare it with the renders."""
        import os
        import tempfile

        from .report import asset_report, summary_line

        t0 = time.perf_counter()
        fd, tmp = tempfile.mkstemp(suffix=".glb")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(glb)
            report, files = asset_report(Path(tmp), mesh.check, mesh.timings, mesh.info, placement=mesh.placement, started=t0)
        finally:
            os.remove(tmp)
        self.report = report
        log.info(summary_line(report))
        print(summary_line(report), flush=True)
        return files

    def __call__(self, representation, export_cfg, folder: Path, render=None) -> list[Path]:
        from .files import check_writable, write_files

        check_writable(folder)
        return write_files(folder, self.encode(representation, export_cfg, render))
