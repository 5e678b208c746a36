"""Export time per stage on CPU, and how faithfully the baked texture reproduces the colour field.

    PYTHONPATH=. python benchmarks/bench_export.py [--res 128] [--faces 20000] [--texture 1024]
        [--gaussians 200000] [--unwrap-faces 100000] [--parts nerf,unwrap,fidelity,fitted,gaussians] [--threads 1]
    PYTHONPATH=. python benchmarks/bench_export.py --parts run --run outputs/toy-sds-nerf/<run folder>

1. A NeRF (the toy recipe's network, blob initialisation: a smooth closed surface) at marching-cubes
   resolution --res, decimated to --faces, unwrapped, baked at --texture px: seconds per stage.
2. Decimation + xatlas on a --unwrap-faces mesh (the issue's bound: under 30 s for a 100k-face target).
3. --gaussians random Gaussians on a sphere shell: each splat writer, then the density-grid mesh path.
4. Bake fidelity on an analytic striped sphere at 512/1024/2048 px: at random surface points, and as the
   mean PSNR of 8 rendered views of the exported mesh against exact ray-traced views of the sphere.
5. The issue's fidelity metric on a trained NeRF: 8 renders of the exported textured mesh vs 8 renders
   of the NeRF it came from (fitted to exact views of a sphere with a smooth colour field).
6. (--parts run) a finished training run (e.g. the toy quick start) exported with both meshers
   (solid, density): faces, topology, GLB-vs-render PSNR and mask IoU, seconds per stage.
Texture fidelity: PSNR between bilinear texture lookups and ``albedo_at`` at 200k random surface points.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from threedgen.config import ExportConfig, from_dict
from threedgen.data.cameras import make_cameras
from threedgen.export.bake import rasterize_uv, unwrap
from threedgen.export.decimate import decimate
from threedgen.export.extract import extract_surface
from threedgen.export.mesh import build_textured_mesh, encode_textured_mesh
from threedgen.export.splat_field import SplatField
from threedgen.export.splats import check_splat_data, khr_glb_bytes, ply_bytes, splat_bytes
from threedgen.export.spz import spz_bytes
from threedgen.representations.nerf import NeRF

TOY_NERF = {"radius": 0.8, "grid": {"n_levels": 8, "log2_hashmap_size": 15, "base_resolution": 8, "max_resolution": 128},
            "mlp_width": 32, "normals": "none"}


def bilinear(tex: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """What a GPU's bilinear sampler returns at ``uv`` (glTF convention: row = v * H), clamp-to-edge."""
    q = uv * tex.shape[0] - 0.5
    x0, y0 = np.floor(q).astype(int).T
    fx, fy = (q - np.floor(q)).T
    T = lambda yy, xx: tex[np.clip(yy, 0, tex.shape[0] - 1), np.clip(xx, 0, tex.shape[1] - 1)]  # noqa: E731
    return ((1 - fy)[:, None] * ((1 - fx)[:, None] * T(y0, x0) + fx[:, None] * T(y0, x0 + 1))
            + fy[:, None] * ((1 - fx)[:, None] * T(y0 + 1, x0) + fx[:, None] * T(y0 + 1, x0 + 1)))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return -10 * math.log10(max(float(np.mean((a - b) ** 2)), 1e-12))


def texture_psnr(rep, mesh, n: int = 200_000, seed: int = 0) -> float:
    """PSNR (dB) of bilinear texture lookups against the colour field at uniformly random surface points."""
    g = np.random.default_rng(seed)
    v, f, uv, tex = mesh.positions, mesh.faces, mesh.uv, mesh.texture.astype(np.float64) / 255
    area = np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    tri = g.choice(len(f), n, p=area / area.sum())
    r1, r2 = np.sqrt(g.random(n)), g.random(n)
    bary = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], 1)
    pts = (bary[..., None] * v[f[tri]]).sum(1)
    look = bilinear(tex, (bary[..., None] * uv[f[tri]]).sum(1))
    return psnr(look, rep.albedo_at(torch.from_numpy(pts).float()).double().numpy())


def orbit(res: int):
    return make_cameras([20, -10] * 4, np.arange(8) * 45.0, 1.8, 50.0, res, res)


def render_textured_mesh(mesh, cams) -> np.ndarray:
    """[B,H,W,3] unlit renders of the exported mesh: z-buffered raster, bilinear texture lookups, white background."""
    res = cams.width
    tex = mesh.texture.astype(np.float64) / 255
    pts = torch.from_numpy(mesh.positions).float()[None].expand(len(cams.c2w), -1, -1)
    pix, depth = cams.project(pts)
    out = np.ones((len(cams.c2w), res, res, 3))
    for b in range(len(cams.c2w)):
        tri, bary = rasterize_uv(pix[b].double().numpy() / res, mesh.faces, res, conservative=0.0, depth=depth[b].double().numpy())
        hit = (tri >= 0).numpy()
        uv = (bary.numpy()[hit][..., None] * mesh.uv[mesh.faces[tri.numpy()[hit]]]).sum(1)
        out[b][hit] = bilinear(tex, uv)
    return out


def render_striped_ball(cams, ball=None) -> np.ndarray:
    """Exact ray-sphere renders of ``StripedBall`` (unlit albedo, white background), at pixel centres."""
    o, d = cams.rays()
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - 0.25)
    t = -b - disc.clamp_min(0).sqrt()
    colour = (ball or StripedBall).albedo_at((o + t[..., None] * d).reshape(-1, 3)).view(o.shape)
    return torch.where((disc > 0)[..., None], colour, torch.ones(3)).double().numpy()


class StripedBall:
    """Analytic sphere (radius 0.5) with a colour field of ``periods`` sine periods per metre along each axis."""

    last_threshold = None
    periods = 12.0

    def isosurface(self, resolution=128, threshold="auto"):
        import mcubes

        lin = np.linspace(-1, 1, resolution)
        x = np.stack(np.meshgrid(lin, lin, lin, indexing="ij"), -1)
        v, f = mcubes.marching_cubes(0.5 - np.linalg.norm(x, axis=-1), 0.0)
        return (v * 2 / (resolution - 1) - 1).astype(np.float32), f.astype(np.int64), None

    @classmethod
    def albedo_at(cls, points):
        return 0.5 + 0.4 * torch.sin(2 * math.pi * cls.periods * torch.as_tensor(points, dtype=torch.float32))


def bench_fidelity(args) -> None:
    print("\nbake fidelity on an analytic striped sphere: PSNR of texture lookups vs the colour field at random surface\n"
          "points, and mean PSNR of 8 unlit renders of the exported mesh vs exact ray-traced renders of the sphere:")
    cams = orbit(args.view_res)
    reference = render_striped_ball(cams)
    for size in (512, 1024, 2048):
        cfg = from_dict(ExportConfig, {"mesher": "density", "resolution": args.res, "target_faces": args.faces, "texture_size": size})
        mesh = build_textured_mesh(StripedBall(), cfg)
        views = np.mean([psnr(a, b) for a, b in zip(render_textured_mesh(mesh, cams), reference)])
        print(f"  {size:>4} px: surface {texture_psnr(StripedBall(), mesh):5.1f} dB, 8 views at {args.view_res} px "
              f"{views:5.1f} dB  (unwrap {mesh.timings['unwrap']:.1f} s, bake {mesh.timings['bake']:.1f} s)")


class GentleBall(StripedBall):
    periods = 1.5


def bench_fitted_nerf(args, steps: int = 300) -> None:
    """The issue's texture-fidelity metric on a trained NeRF: fit the toy NeRF to 12 exact 48 px views
    of a sphere with a smooth colour field, export it, then compare 8 held-out renders of the exported
    mesh with renders of the NeRF itself (and both with the exact sphere)."""
    import torch.nn.functional as F

    from threedgen.renderers.background import SolidBackground
    from threedgen.renderers.volume import VolumeRenderer

    torch.manual_seed(0)
    train = make_cameras([30, -15, 10] * 4, np.arange(12) * 30.0 + 7, 1.8, 50.0, 48, 48)
    target = torch.from_numpy(render_striped_ball(train, GentleBall)).float().permute(0, 3, 1, 2)
    nerf = NeRF(from_dict(NeRF.Config, {**TOY_NERF, "lr_mlp": 1e-2}))
    renderer = VolumeRenderer(VolumeRenderer.Config(num_samples_per_ray=48, occ_update_every=8))
    bg = SolidBackground(SolidBackground.Config())
    opt = torch.optim.Adam([{"params": g["params"], "lr": g["lr"](0), "eps": g.get("eps", 1e-8)} for g in nerf.param_groups()], betas=(0.9, 0.99))
    t = time.perf_counter()
    for _ in range(steps):
        idx = torch.randperm(12)[:2]
        loss = F.mse_loss(renderer(nerf, train[idx], bg).rgb, target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    fit_s = time.perf_counter() - t
    cams = orbit(args.view_res)
    renderer.eval()
    with torch.no_grad():
        nerf_views = renderer(nerf, cams, bg).rgb.permute(0, 2, 3, 1).double().numpy()
    exact = render_striped_ball(cams, GentleBall)
    cfg = from_dict(ExportConfig, {"mesher": "density", "resolution": args.res, "target_faces": args.faces, "texture_size": args.texture})
    mesh = build_textured_mesh(nerf, cfg)
    mesh_views = render_textured_mesh(mesh, cams)
    mean = lambda a, b: np.mean([psnr(x, y) for x, y in zip(a, b)])  # noqa: E731
    print(f"\nfitted NeRF ({steps} steps, {fit_s:.0f} s), exported at {args.res}^3 / {len(mesh.faces)} faces / {args.texture} px:")
    print(f"  8 views at {args.view_res} px: mesh vs NeRF {mean(mesh_views, nerf_views):.1f} dB; "
          f"NeRF vs exact {mean(nerf_views, exact):.1f} dB; mesh vs exact {mean(mesh_views, exact):.1f} dB")


def bench_run(args) -> None:
    """A finished run (e.g. the toy quick start) exported both ways, ``export.mesher=solid`` and ``density``,
    each scored by the export's own report (GLB read back, rendered over the export views)."""
    import json
    import tempfile
    from pathlib import Path

    from threedgen.config import load_config
    from threedgen.export.mesh import MeshExporter
    from threedgen.export.splat_field import SplatField
    from threedgen.systems.runner import load_system, scene_render

    if not args.run:
        raise SystemExit("--parts run needs --run outputs/<recipe>/<run folder> (a finished single-stage run)")
    run = Path(args.run)
    cfg, _ = load_config(run / "config.yaml")
    system = load_system(cfg, run / "ckpts" / "last.ckpt")
    rep = system.representation
    print(f"\nrun {run.name}")
    for mesher in ("density", "solid"):
        ecfg = from_dict(ExportConfig, {"mesher": mesher, "resolution": args.res, "target_faces": args.faces,
                                        "texture_size": args.texture, "formats": ["glb"]})
        surface = SplatField(rep.splat_data()) if mesher == "density" and hasattr(rep, "splat_data") else rep
        with tempfile.TemporaryDirectory() as tmp:
            MeshExporter()(surface, ecfg, Path(tmp), render=scene_render(system))
            r = json.loads((Path(tmp) / "report.json").read_text())
        print(f"  {mesher:8s} faces {r['faces']:6d}  watertight {r['watertight']!s:5s}  Euler {r['euler']:4d}  components "
              f"{r['components']:3d}  GLB vs renders {r['psnr_db']:.1f} dB  mask IoU {r['mask_iou']:.3f}  "
              f"{sum(r['timings_s'].values()):.1f} s {r['timings_s']}")


def bench_nerf(args) -> None:
    torch.manual_seed(0)
    nerf = NeRF(from_dict(NeRF.Config, TOY_NERF))
    cfg = from_dict(ExportConfig, {"mesher": "density", "resolution": args.res, "target_faces": args.faces, "texture_size": args.texture})
    mesh = build_textured_mesh(nerf, cfg)
    encode_textured_mesh(mesh, cfg)
    total = sum(mesh.timings.values())
    print(f"\nNeRF {args.res}^3 -> {len(mesh.faces)} faces, {args.texture}^2 texture: total {total:.2f} s")
    for k, t in mesh.timings.items():
        print(f"  {k:<11} {t:7.2f} s  ({100 * t / total:4.1f}%)")
    print(f"  texture fidelity: {texture_psnr(nerf, mesh):.1f} dB PSNR (texture lookups vs colour field)")


def bench_unwrap(args) -> None:
    v, f = extract_surface(StripedBall(), 256, "auto")
    t = time.perf_counter()
    v, f = decimate(v, f, args.unwrap_faces)
    t_dec = time.perf_counter() - t
    t = time.perf_counter()
    unwrap(v, f, 2048)
    print(f"\nanalytic sphere at 256^3: decimation to {len(f)} faces {t_dec:.1f} s; xatlas unwrap (2048 px atlas) {time.perf_counter() - t:.1f} s")


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
    writers = {"gaussians.ply": ply_bytes, "gaussians.splat": splat_bytes, "gaussians.spz": spz_bytes, "gaussians.glb (KHR)": khr_glb_bytes}
    for name, fn in writers.items():
        t = time.perf_counter()
        size = len(fn(d))
        print(f"  {name:<20} {time.perf_counter() - t:6.2f} s  {size / 1e6:7.1f} MB")
    field = SplatField(raw)
    cfg = from_dict(ExportConfig, {"mesher": "density", "resolution": args.res, "target_faces": args.faces, "texture_size": args.texture})
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
    p.add_argument("--gaussians", type=int, default=200_000)
    p.add_argument("--unwrap-faces", type=int, default=100_000)
    p.add_argument("--parts", default="nerf,unwrap,fidelity,fitted,gaussians", help="comma-separated subset to run")
    p.add_argument("--view-res", type=int, default=128, help="render size for the 8-view fidelity check")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--run", default=None, help="with --parts run: a finished run folder to check the texture fidelity of")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} torch thread(s)")
    parts = {"nerf": bench_nerf, "unwrap": bench_unwrap, "fidelity": bench_fidelity, "gaussians": bench_gaussians,
             "fitted": bench_fitted_nerf, "run": bench_run}
    for name in args.parts.split(","):
        parts[name.strip()](args)


if __name__ == "__main__":
    main()
