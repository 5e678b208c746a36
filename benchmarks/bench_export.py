"""Export time per stage on CPU, and how faithfully the baked texture reproduces the colour field.

    PYTHONPATH=. python benchmarks/bench_export.py [--res 128] [--faces 20000] [--texture 1024]
        [--gaussians 200000] [--unwrap-faces 100000] [--threads 1]

1. A NeRF (the toy recipe's network, blob initialisation: a smooth closed surface) at marching-cubes
   resolution --res, decimated to --faces, unwrapped, baked at --texture px: seconds per stage.
2. xatlas on a --unwrap-faces mesh (the issue's bound: under 30 s for a 100k-face target).
3. --gaussians random Gaussians on a sphere shell: each splat writer, then the density-grid mesh path.
4. Bake fidelity on an analytic striped sphere at 512/1024/2048 px.
Texture fidelity: PSNR between bilinear texture lookups and ``albedo_at`` at 200k random surface points.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from threedgen.config import ExportConfig, from_dict
from threedgen.export.bake import unwrap
from threedgen.export.decimate import decimate
from threedgen.export.extract import extract_surface
from threedgen.export.mesh import build_textured_mesh, encode_textured_mesh
from threedgen.export.splat_field import SplatField
from threedgen.export.splats import check_splat_data, khr_glb_bytes, ply_bytes, splat_bytes, spz_available, spz_bytes
from threedgen.representations.nerf import NeRF

TOY_NERF = {"radius": 0.8, "grid": {"n_levels": 8, "log2_hashmap_size": 15, "base_resolution": 8, "max_resolution": 128},
            "mlp_width": 32, "normals": "none"}


def texture_psnr(rep, mesh, n: int = 200_000, seed: int = 0) -> float:
    """PSNR (dB) of bilinear texture lookups against the colour field at uniformly random surface points."""
    g = np.random.default_rng(seed)
    v, f, uv, tex = mesh.positions, mesh.faces, mesh.uv, mesh.texture.astype(np.float64) / 255
    area = np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    tri = g.choice(len(f), n, p=area / area.sum())
    r1, r2 = np.sqrt(g.random(n)), g.random(n)
    bary = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], 1)
    pts = (bary[..., None] * v[f[tri]]).sum(1)
    q = (bary[..., None] * uv[f[tri]]).sum(1) * tex.shape[0] - 0.5  # texel coordinates of the lookups
    x0, y0 = np.floor(q).astype(int).T
    fx, fy = (q - np.floor(q)).T
    T = lambda yy, xx: tex[np.clip(yy, 0, tex.shape[0] - 1), np.clip(xx, 0, tex.shape[1] - 1)]  # noqa: E731
    look = ((1 - fy)[:, None] * ((1 - fx)[:, None] * T(y0, x0) + fx[:, None] * T(y0, x0 + 1))
            + fy[:, None] * ((1 - fx)[:, None] * T(y0 + 1, x0) + fx[:, None] * T(y0 + 1, x0 + 1)))
    want = rep.albedo_at(torch.from_numpy(pts).float()).double().numpy()
    return -10 * math.log10(max(np.mean((look - want) ** 2), 1e-12))


class StripedBall:
    """Analytic sphere (radius 0.5) with a colour field of 4 sine stripes per metre per axis: a bake stress test."""

    last_threshold = None

    def isosurface(self, resolution=128, threshold="auto"):
        import mcubes

        lin = np.linspace(-1, 1, resolution)
        x = np.stack(np.meshgrid(lin, lin, lin, indexing="ij"), -1)
        v, f = mcubes.marching_cubes(0.5 - np.linalg.norm(x, axis=-1), 0.0)
        return (v * 2 / (resolution - 1) - 1).astype(np.float32), f.astype(np.int64), None

    @staticmethod
    def albedo_at(points):
        return 0.5 + 0.4 * torch.sin(2 * math.pi * 4 * torch.as_tensor(points, dtype=torch.float32))


def bench_fidelity(args) -> None:
    print("\nbake fidelity on an analytic striped sphere (PSNR of texture lookups vs the colour field):")
    for size in (512, 1024, 2048):
        cfg = from_dict(ExportConfig, {"resolution": args.res, "target_faces": args.faces, "texture_size": size})
        mesh = build_textured_mesh(StripedBall(), cfg)
        print(f"  {size:>4} px: {texture_psnr(StripedBall(), mesh):5.1f} dB  (unwrap {mesh.timings['unwrap']:.1f} s, bake {mesh.timings['bake']:.1f} s)")


def bench_nerf(args) -> None:
    torch.manual_seed(0)
    nerf = NeRF(from_dict(NeRF.Config, TOY_NERF))
    cfg = from_dict(ExportConfig, {"resolution": args.res, "target_faces": args.faces, "texture_size": args.texture})
    mesh = build_textured_mesh(nerf, cfg)
    encode_textured_mesh(mesh, cfg)
    total = sum(mesh.timings.values())
    print(f"\nNeRF {args.res}^3 -> {len(mesh.faces)} faces, {args.texture}^2 texture: total {total:.2f} s")
    for k, t in mesh.timings.items():
        print(f"  {k:<11} {t:7.2f} s  ({100 * t / total:4.1f}%)")
    print(f"  texture fidelity: {texture_psnr(nerf, mesh):.1f} dB PSNR (texture lookups vs colour field)")
    if args.unwrap_faces:
        v, f = extract_surface(nerf, 256, "auto")
        v, f = decimate(v, f, args.unwrap_faces)
        t = time.perf_counter()
        unwrap(v, f, 2048)
        print(f"\nxatlas unwrap of a {len(f)}-face mesh (from 256^3, 2048 px atlas): {time.perf_counter() - t:.1f} s")


def sphere_gaussians(n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    sh = torch.randn(n, 16, 3, generator=g) * 0.05
    sh[:, 0] = (0.5 + 0.4 * d - 0.5) / 0.28209479177387814
    return {"means": 0.5 * d, "log_scales": torch.full((n, 3), math.log(0.01)) + 0.3 * torch.randn(n, 3, generator=g),
            "quats": torch.randn(n, 4, generator=g), "logit_opacities": torch.full((n,), 2.0), "sh": sh, "sh_degree": 3}


def bench_gaussians(args) -> None:
    raw = sphere_gaussians(args.gaussians)
    t = time.perf_counter()
    d = check_splat_data(raw)
    print(f"\n{args.gaussians} Gaussians (SH degree 3): check {time.perf_counter() - t:.2f} s")
    writers = {"gaussians.ply": ply_bytes, "gaussians.splat": splat_bytes, "gaussians.glb (KHR)": khr_glb_bytes}
    if spz_available() is None:
        writers["gaussians.spz"] = spz_bytes
    for name, fn in writers.items():
        t = time.perf_counter()
        size = len(fn(d))
        print(f"  {name:<20} {time.perf_counter() - t:6.2f} s  {size / 1e6:7.1f} MB")
    field = SplatField(raw)
    cfg = from_dict(ExportConfig, {"resolution": args.res, "target_faces": args.faces, "texture_size": args.texture})
    mesh = build_textured_mesh(field, cfg)
    total = sum(mesh.timings.values())
    print(f"  mesh via density grid {args.res}^3 -> {len(mesh.faces)} faces: total {total:.2f} s")
    for k, t in mesh.timings.items():
        print(f"    {k:<11} {t:7.2f} s")
    print(f"    texture fidelity: {texture_psnr(field, mesh):.1f} dB PSNR")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--faces", type=int, default=20000)
    p.add_argument("--texture", type=int, default=1024)
    p.add_argument("--gaussians", type=int, default=200_000, help="0: skip")
    p.add_argument("--unwrap-faces", type=int, default=100_000, help="0: skip")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} torch thread(s)")
    bench_nerf(args)
    bench_fidelity(args)
    if args.gaussians:
        bench_gaussians(args)


if __name__ == "__main__":
    main()
