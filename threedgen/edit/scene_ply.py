"""Reading a 3D Gaussian scene from an INRIA-layout PLY, ours or a third party's.

The layout is the one ``threedgen/export/splats.py`` writes and the 3DGS reference code, gsplat's
examples, nerfstudio's splatfacto export and most capture apps share: one ``vertex`` element with
``x y z``, optional ``nx ny nz``, ``f_dc_0..2``, ``f_rest_0..M-1`` (M = 0, 9, 24 or 45 for SH
degree 0..3, channel-major: all R coefficients, then G, then B), ``opacity`` (logit),
``scale_0..2`` (log) and ``rot_0..3`` (w, x, y, z), all pre-activation. Property order, extra
properties, ``double`` values and big-endian or ASCII files are accepted.

Axes: captures trained in the COLMAP/INRIA frame are x right, y down, z forward (``rdf``), which
is also what this project's own PLY export writes by default; ``rdf`` rotates them 180° about X
into the world frame (+Y up), exactly undoing the export (the same rotation; the quaternion's sign is
restored too, so a round trip is bit-identical).
``rub`` takes the file as already +Y up.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..export.splats import check_splat_data, to_axes

AXES = ("rdf", "rub")
REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3"]
_REST_TO_DEGREE = {0: 0, 9: 1, 24: 2, 45: 3}
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


class NotAGaussianScene(ValueError):
    """The file is not a PLY of 3D Gaussians; the message names what is missing or wrong."""


def _header(raw: bytes, path: Path) -> tuple[str, list[tuple[str, int, list[tuple[str, str]]]], int]:
    """(format, [(element, count, [(property, numpy type)])], byte offset of the data)."""
    if not raw.startswith(b"ply"):
        raise NotAGaussianScene(f"{path} is not a PLY file (it does not start with 'ply'); expected an INRIA-layout 3DGS .ply")
    end = raw.find(b"end_header")
    if end < 0:
        raise NotAGaussianScene(f"{path}: PLY header has no 'end_header' line (truncated or not a PLY)")
    nl = raw.find(b"\n", end)
    text = raw[:end].decode("ascii", errors="replace")
    fmt, elements = None, []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            elements.append((parts[1], int(parts[2]), []))
        elif parts[0] == "property":
            if not elements:
                raise NotAGaussianScene(f"{path}: PLY property {parts[-1]!r} before any element")
            if parts[1] == "list":
                elements[-1][2].append((parts[-1], "list"))
            elif parts[1] in _PLY_TYPES:
                elements[-1][2].append((parts[2], _PLY_TYPES[parts[1]]))
            else:
                raise NotAGaussianScene(f"{path}: PLY property type {parts[1]!r} is not one of {', '.join(sorted(_PLY_TYPES))}")
    if fmt not in ("binary_little_endian", "binary_big_endian", "ascii"):
        raise NotAGaussianScene(f"{path}: PLY format {fmt!r}; expected binary_little_endian, binary_big_endian or ascii")
    return fmt, elements, nl + 1


def _vertex_table(path: Path) -> tuple[np.ndarray, list[str]]:
    raw = path.read_bytes()
    fmt, elements, offset = _header(raw, path)
    names = [e[0] for e in elements]
    if "vertex" not in names:
        raise NotAGaussianScene(f"{path}: the PLY has no 'vertex' element (elements: {', '.join(names) or 'none'}); "
                                "a Gaussian scene stores one Gaussian per vertex")
    if names[0] != "vertex":
        hint = " (this looks like a compressed/chunked splat PLY: decompress it to the plain INRIA layout first)" if "chunk" in names else ""
        raise NotAGaussianScene(f"{path}: the 'vertex' element must come first, found {', '.join(names)}{hint}")
    _, n, props = elements[0]
    if any(t == "list" for _, t in props):
        raise NotAGaussianScene(f"{path}: the vertex element has list properties; a Gaussian scene has scalar properties only")
    cols = [p for p, _ in props]
    if fmt == "ascii":
        body = raw[offset:].decode("ascii", errors="replace").split("\n")
        table = np.loadtxt(body[:n], dtype=np.float64, ndmin=2) if n else np.zeros((0, len(cols)))
        if table.shape != (n, len(cols)):
            raise NotAGaussianScene(f"{path}: ASCII PLY has {table.shape[0]} vertex rows of {table.shape[1]} values; "
                                    f"the header promises {n} of {len(cols)}")
        return table, cols
    endian = "<" if fmt == "binary_little_endian" else ">"
    dtype = np.dtype([(p, endian + t) for p, t in props])
    need = offset + n * dtype.itemsize
    if len(raw) < need:
        raise NotAGaussianScene(f"{path}: truncated PLY ({len(raw)} bytes; the header's {n} vertices need {need})")
    rec = np.frombuffer(raw, dtype=dtype, count=n, offset=offset)
    return np.stack([rec[p].astype(np.float64) for p in cols], 1) if n else np.zeros((0, len(cols))), cols


def read_splat_ply(path, axes: str = "rdf") -> dict:
    """A Gaussian scene PLY -> ``splat_data()``-style float32 arrays in the world frame (+Y up):
    ``means [N,3]``, ``log_scales [N,3]``, ``quats [N,4]`` (wxyz), ``logit_opacities [N]``,
    ``sh [N,K,3]`` (DC first) and ``sh_degree`` — the highest band with a non-zero coefficient, since
    writers (ours included) pad to degree 3 with zeros. Raises ``NotAGaussianScene`` naming what is wrong."""
    path = Path(path)
    if axes not in AXES:
        raise ValueError(f"scene axes must be one of {', '.join(AXES)} (rdf: COLMAP/INRIA y-down captures; rub: +Y up), got {axes!r}")
    if not path.is_file():
        raise FileNotFoundError(f"scene file {path} does not exist; pass the path of a 3D Gaussian .ply")
    table, cols = _vertex_table(path)
    idx = {c: i for i, c in enumerate(cols)}
    missing = [c for c in REQUIRED if c not in idx]
    if missing:
        raise NotAGaussianScene(f"{path} is not a 3D Gaussian scene: its vertices lack {', '.join(missing)} "
                                f"(has {', '.join(cols[:12])}{', ...' if len(cols) > 12 else ''}); expected the INRIA 3DGS layout")
    rest = sorted((int(m.group(1)) for c in cols if (m := re.fullmatch(r"f_rest_(\d+)", c))))
    if len(rest) not in _REST_TO_DEGREE or rest != list(range(len(rest))):
        raise NotAGaussianScene(f"{path}: {len(rest)} f_rest_* properties; a Gaussian scene has 0, 9, 24 or 45 (SH degree 0..3)")
    deg = _REST_TO_DEGREE[len(rest)]
    col = lambda names: table[:, [idx[c] for c in names]].astype(np.float32)  # noqa: E731
    n, k = len(table), (deg + 1) ** 2
    sh = np.zeros((n, k, 3), np.float32)
    sh[:, 0] = col(["f_dc_0", "f_dc_1", "f_dc_2"])
    if deg:
        sh[:, 1:] = col([f"f_rest_{i}" for i in range(len(rest))]).reshape(n, 3, k - 1).transpose(0, 2, 1)
    while deg > 0 and not sh[:, deg * deg:].any():  # zero-padded bands (our export pads to degree 3) render nothing
        deg -= 1
    sh = np.ascontiguousarray(sh[:, : (deg + 1) ** 2])
    d = {
        "means": col(["x", "y", "z"]), "log_scales": col(["scale_0", "scale_1", "scale_2"]),
        "quats": col(["rot_0", "rot_1", "rot_2", "rot_3"]), "logit_opacities": col(["opacity"])[:, 0],
        "sh": sh, "sh_degree": deg,
    }
    try:
        d = check_splat_data(d)
    except ValueError as e:
        raise NotAGaussianScene(f"{path}: {e}") from None
    out = to_axes(d, axes)
    if axes == "rdf":  # to_axes left-multiplies by (0,1,0,0); its inverse is (0,-1,0,0): same rotation, sign kept
        out["quats"] = -out["quats"]
    return out
