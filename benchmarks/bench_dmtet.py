"""DMTet CPU benchmark: marching tetrahedra at tet-grid resolution 64 and 128, and torch mesh
rasterization at 256x256 for a ~50k-face mesh (rasterize + interpolate, and the full mesh renderer
forward + backward with antialiasing).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_dmtet.py [--threads N] [--repeats R]
"""

from __future__ import annotations

import argparse
import time

import torch


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, caches)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_marching(res: int, repeats: int) -> None:
    from threedgen.representations.marching_tets import marching_tets
    from threedgen.representations.tets import build_tet_grid

    t = time.perf_counter()
    v, tets = build_tet_grid(res)
    build = time.perf_counter() - t
    v, tets = torch.from_numpy(v), torch.from_numpy(tets)
    sdf = (0.5 - v.norm(dim=-1)).requires_grad_(True)
    out = {}

    def fwd():
        out["mesh"] = marching_tets(v, sdf, tets)

    def fwd_bwd():
        mv, _ = marching_tets(v, sdf, tets)
        mv.sum().backward()

    tf, tb = timed(fwd, repeats), timed(fwd_bwd, repeats)
    mv, f = out["mesh"]
    print(f"marching tets  res {res:4d}: {tets.shape[0] / 1e6:6.2f} M tets, {f.shape[0]:7d} faces | "
          f"forward {tf * 1e3:8.1f} ms, forward+backward {tb * 1e3:8.1f} ms | grid build (numpy, cached after) {build:5.2f} s")


def bench_raster(repeats: int) -> None:
    import trimesh

    from threedgen.data.cameras import make_cameras
    from threedgen.renderers.background import SolidBackground
    from threedgen.renderers.mesh import MeshRenderer, projection
    from threedgen.renderers.raster_torch import interpolate, rasterize

    m = trimesh.creation.uv_sphere(radius=0.6, count=[112, 112])
    v = torch.tensor(m.vertices, dtype=torch.float32)
    f = torch.tensor(m.faces, dtype=torch.long)
    cams = make_cameras([20.0], [30.0], 2.0, 50.0, 256, 256)
    mvp = projection(cams.fovy, 1.0, 0.05, 100.0) @ cams.w2c()
    pos = torch.einsum("bij,vj->bvi", mvp, torch.nn.functional.pad(v, (0, 1), value=1.0))

    def raster():
        rast, _ = rasterize(pos, f, (256, 256))
        interpolate(v, rast, f)

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.v = torch.nn.Parameter(v.clone())

        def mesh(self):
            return self.v, f

        def albedo_at(self, x):
            return torch.sigmoid(x)

    rep, r = Fixed(), MeshRenderer(MeshRenderer.Config(backend="torch", shading="lambertian"))
    bg = SolidBackground(SolidBackground.Config())

    def render_fb():
        out = r(rep, cams, bg)
        out.rgb.mean().backward()

    t1, t2 = timed(raster, repeats), timed(render_fb, repeats)
    print(f"torch raster   256x256, {f.shape[0]} faces: rasterize+interpolate {t1 * 1e3:7.1f} ms | "
          f"mesh renderer forward+backward (shaded, antialiased) {t2 * 1e3:7.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), best of {args.repeats}")
    for res in (64, 128):
        bench_marching(res, args.repeats)
    bench_raster(args.repeats)


if __name__ == "__main__":
    main()
