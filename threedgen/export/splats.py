"""Gaussian splat writers: INRIA PLY, antimatter15 ``.splat``, Niantic ``.spz`` (spz.py), KHR_gaussian_splatting GLB.

Input is ``representation.splat_data()``: CPU float32 tensors, pre-activation, world frame (+Y up):
``means [N,3]``, ``log_scales [N,3]``, ``quats [N,4]`` (w,x,y,z), ``logit_opacities [N]``,
``sh [N,K,3]`` (K = (degree+1)^2, DC first, colour = 0.5 + C0·dc + ...), ``sh_degree`` (int).

Axes: PLY and ``.splat`` viewers were built around the INRIA/COLMAP training frame (x right,
y down, z forward: "RDF"), so ``axes="rdf"`` (default) rotates the world 180° about X. That is a
proper rotation, applied to positions, to quaternions (q' = (0,1,0,0) ⊗ q) and to the SH
coefficients (each real SH basis function is even or odd under (y,z) -> (-y,-z): a sign per
coefficient). ``axes="rub"`` writes the world frame unchanged. SPZ stores RUB internally and KHR
GLB is glTF (+Y up), which is our world frame, so those two are never converted.
Format notes: docs/export.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .gltf import FLOAT, POINTS, GlbBuilder
from .spz import spz_bytes

log = logging.getLogger("threedgen")

C0 = 0.28209479177387814  # real SH Y_0^0
# sign of each real SH basis function (gsplat/INRIA order, degrees 0..3) under (x, y, z) -> (x, -y, -z)
_SH_SIGN_RX180 = np.array([1, -1, -1, 1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1], dtype=np.float32)
PLY_PROPERTIES = (
    ["x", "y", "z", "nx", "ny", "nz"]
    + [f"f_dc_{i}" for i in range(3)]
    + [f"f_rest_{i}" for i in range(45)]
    + ["opacity"]
    + [f"scale_{i}" for i in range(3)]
    + [f"rot_{i}" for i in range(4)]
)


def check_splat_data(data: dict) -> dict:
    """Validate ``splat_data()`` output and return it as float32 numpy arrays."""
    need = ("means", "log_scales", "quats", "logit_opacities", "sh", "sh_degree")
    missing = [k for k in need if k not in data]
    if missing:
        raise ValueError(f"splat_data() is missing {missing}; it must return {list(need)}")
    out = {k: np.asarray(data[k].detach().cpu() if hasattr(data[k], "detach") else data[k], dtype=np.float32) for k in need[:-1]}
    deg = int(data["sh_degree"])
    n = len(out["means"])
    shapes = {"means": (n, 3), "log_scales": (n, 3), "quats": (n, 4), "logit_opacities": (n,), "sh": (n, (deg + 1) ** 2, 3)}
    for k, shape in shapes.items():
        if out[k].shape != shape:
            raise ValueError(f"splat_data()[{k!r}] has shape {out[k].shape}; expected {shape} (N={n}, sh_degree={deg})")
    if not 0 <= deg <= 3:
        raise ValueError(f"sh_degree {deg} is not supported by the splat formats (0..3)")
    if n == 0:
        raise ValueError("the Gaussian scene is empty (0 Gaussians): nothing to export")
    for k in shapes:
        bad = int((~np.isfinite(out[k])).sum())
        if bad:
            raise ValueError(f"splat_data()[{k!r}] has {bad} NaN/Inf values: the run diverged; export an earlier checkpoint")
    if not (np.linalg.norm(out["quats"], axis=1) > 0).all():
        raise ValueError("splat_data()['quats'] has zero-length quaternions")
    out["sh_degree"] = deg
    return out


def to_axes(d: dict, axes: str) -> dict:
    """Express the Gaussians in ``axes``: 'rub' (world, unchanged) or 'rdf' (world rotated 180° about X)."""
    if axes == "rub":
        return d
    if axes != "rdf":
        raise ValueError(f"unknown splat axes {axes!r}; expected 'rdf' or 'rub'")
    flip = np.array([1, -1, -1], dtype=np.float32)
    w, x, y, z = d["quats"].T
    k = d["sh"].shape[1]
    return {
        **d,
        "means": d["means"] * flip,
        "quats": np.stack([-x, w, -z, y], 1),  # (0,1,0,0) ⊗ (w,x,y,z)
        "sh": d["sh"] * _SH_SIGN_RX180[:k, None],
    }


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _sh_padded(sh: np.ndarray) -> np.ndarray:
    """[N,K,3] -> [N,16,3], zero-padded to degree 3 (the 248-byte vertex older importers demand)."""
    out = np.zeros((len(sh), 16, 3), dtype=np.float32)
    out[:, : sh.shape[1]] = sh
    return out


def ply_bytes(d: dict) -> bytes:
    """INRIA 3DGS PLY: 62 float32 properties per vertex, binary little-endian, values pre-activation."""
    sh = _sh_padded(d["sh"])
    n = len(d["means"])
    cols = np.concatenate([
        d["means"], np.zeros((n, 3), np.float32), sh[:, 0],
        sh[:, 1:].transpose(0, 2, 1).reshape(n, 45),  # channel-major: all R, then G, then B
        d["logit_opacities"][:, None], d["log_scales"], d["quats"],
    ], 1).astype("<f4")
    header = "ply\nformat binary_little_endian 1.0\n" f"element vertex {n}\n"
    header += "".join(f"property float {p}\n" for p in PLY_PROPERTIES) + "end_header\n"
    return header.encode("ascii") + cols.tobytes()


def splat_order(d: dict) -> np.ndarray:
    """Descending size × opacity (volume exp(Σ log s) × sigmoid(opacity)), as the antimatter15 converter sorts."""
    key = np.exp(d["log_scales"].astype(np.float64).sum(1)) * _sigmoid(d["logit_opacities"].astype(np.float64))
    return np.argsort(-key, kind="stable")


def splat_bytes(d: dict) -> bytes:
    """antimatter15 ``.splat``: 32 bytes per Gaussian (pos f32×3, linear scale f32×3, RGBA u8, quat u8×4 wxyz)."""
    o = splat_order(d)
    n = len(o)
    rec = np.zeros(n, dtype=[("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    rec["pos"] = d["means"][o]
    rec["scale"] = np.exp(d["log_scales"][o])
    rgb = 0.5 + C0 * d["sh"][o, 0]
    rgba = np.concatenate([rgb, _sigmoid(d["logit_opacities"][o])[:, None]], 1)
    rec["rgba"] = np.clip(np.round(rgba * 255), 0, 255)
    q = d["quats"][o] / np.linalg.norm(d["quats"][o], axis=1, keepdims=True)
    rec["rot"] = np.clip(np.round(q * 128 + 128), 0, 255)
    return rec.tobytes()


KHR = "KHR_gaussian_splatting"


def khr_glb_bytes(d: dict) -> bytes:
    """glTF POINTS primitive with the KHR_gaussian_splatting attributes (world frame, +Y up).

    Following the extension text (KhronosGroup/glTF, extensions/2.0/Khronos/KHR_gaussian_splatting,
    README @07ee802): ROTATION is a unit quaternion (x,y,z,w); SCALE is stored in log space
    (renderers apply exp); OPACITY is post-sigmoid in [0,1]; SH_DEGREE_l_COEF_n are the raw RGB
    coefficients; COLOR_0 is the point-cloud fallback (0.5 + C0·dc, alpha = opacity).
    """
    b = GlbBuilder()
    q = d["quats"] / np.linalg.norm(d["quats"], axis=1, keepdims=True)
    opacity = _sigmoid(d["logit_opacities"]).astype(np.float32)
    colour = np.concatenate([np.clip(0.5 + C0 * d["sh"][:, 0], 0, 1), opacity[:, None]], 1).astype(np.float32)
    attrs = {
        "POSITION": b.accessor(d["means"], min_max=True),
        "COLOR_0": b.accessor(colour),
        f"{KHR}:ROTATION": b.accessor(q[:, [1, 2, 3, 0]].astype(np.float32)),
        f"{KHR}:SCALE": b.accessor(d["log_scales"]),
        f"{KHR}:OPACITY": b.accessor(opacity),
    }
    for l in range(d["sh_degree"] + 1):
        for m in range(2 * l + 1):
            attrs[f"{KHR}:SH_DEGREE_{l}_COEF_{m}"] = b.accessor(np.ascontiguousarray(d["sh"][:, l * l + m]))
    ext = {"kernel": "ellipse", "colorSpace": "srgb_rec709_display", "projection": "perspective", "sortingMethod": "cameraDistance"}
    b.mesh_node({"attributes": attrs, "mode": POINTS, "extensions": {KHR: ext}}, "gaussians")
    b.gltf["extensionsUsed"] = [KHR]
    assert all(acc["componentType"] == FLOAT for acc in b.gltf["accessors"])
    return b.to_bytes()


SPLAT_FORMATS = {"ply": "gaussians.ply", "splat": "gaussians.splat", "spz": "gaussians.spz", "splat_glb": "gaussians.glb"}


class SplatExporter:
    """Registered exporter ``gaussians``: the representation's ``splat_data()`` in every requested splat format.

    Its settings are the run's ``export`` section (``formats``, ``splat_axes``).
    """

    @dataclass
    class Config:
        pass

    def __init__(self, cfg=None):
        self.cfg = cfg

    def encode(self, representation, export_cfg) -> dict[str, bytes]:
        """{file name: bytes} for the splat formats in ``export_cfg.formats``."""
        d = check_splat_data(representation.splat_data())
        framed = to_axes(d, export_cfg.splat_axes)
        files = {}
        for fmt in export_cfg.formats:
            if fmt not in SPLAT_FORMATS:
                continue
            encode = {"ply": lambda: ply_bytes(framed), "splat": lambda: splat_bytes(framed),
                      "spz": lambda: spz_bytes(d), "splat_glb": lambda: khr_glb_bytes(d)}[fmt]
            files[SPLAT_FORMATS[fmt]] = encode()
            log.info("export: %s (%d Gaussians, SH degree %d)", SPLAT_FORMATS[fmt], len(d["means"]), d["sh_degree"])
        return files

    def __call__(self, representation, export_cfg, folder: Path) -> list[Path]:
        from .files import write_files

        return write_files(folder, self.encode(representation, export_cfg))
