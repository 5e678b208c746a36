"""Hash-grid NeRF + volume renderer throughput: render rays/s and one training step (render + MSE to a
random target + backward + Adam; no prior), occupancy grid on vs off, on CPU and, when a GPU is present,
the torch path vs the tinycudann + nerfacc path on it.

    python benchmarks/bench_nerf.py [--res 64 128] [--batch 4] [--samples 64] [--grid small|default] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from threedgen.config import from_dict
from threedgen.data.cameras import make_cameras
from threedgen.renderers.background import SolidBackground
from threedgen.renderers.volume import VolumeRenderer
from threedgen.representations.nerf import NeRF

GRIDS = {
    "small": {"n_levels": 8, "log2_hashmap_size": 16, "base_resolution": 16, "max_resolution": 256},
    "default": {},  # threestudio's: 16 levels x 2 features, 2^19 table, 16 -> 2048
}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, repeats: int) -> float:
    fn()  # warm-up (grid update, lazy CUDA builds)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def bench(device, grid: str, res: int, batch: int, samples: int, occ: bool, backend: str, repeats: int) -> dict:
    torch.manual_seed(0)
    grid_cfg = {**GRIDS[grid], "backend": "auto" if backend == "cuda" else "torch"}
    nerf = NeRF(from_dict(NeRF.Config, {"grid": grid_cfg})).to(device)
    rcfg = {"num_samples_per_ray": samples, "occupancy_grid": occ, "backend": backend}
    if device.type == "cuda":
        rcfg["occ_resolution"] = 128
    r = VolumeRenderer(from_dict(VolumeRenderer.Config, rcfg)).to(device)
    bg = SolidBackground(SolidBackground.Config()).to(device)
    cams = make_cameras(15.0, torch.arange(batch) * (360.0 / batch), 2.0, 50.0, res, res).to(device)
    target = torch.rand(batch, 3, res, res, device=device)
    groups = [{"params": g["params"], "lr": g["lr"](0), "eps": g.get("eps", 1e-8)} for g in nerf.param_groups()]
    opt = torch.optim.Adam(groups, betas=(0.9, 0.99))
    info = {}

    def render():
        r.eval()
        with torch.no_grad():
            out = r(nerf, cams, bg)
        info["samples"] = out.meta["num_samples"]
        info["backend"] = out.meta["backend"]

    def train_step():
        r.train()
        out = r(nerf, cams, bg)
        loss = F.mse_loss(out.rgb, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t_render = _time(render, device, repeats)
    t_train = _time(train_step, device, repeats)
    rays = batch * res * res
    return dict(
        rays_per_s=rays / t_render, render_s=t_render, train_s=t_train, kept=info["samples"] / (rays * samples),
        backend=info["backend"],
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--grid", choices=sorted(GRIDS), default="small")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], default=["cpu", "cuda"],
                    help="which rows to run (a GPU check with little time: --devices cuda)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"grid={args.grid} batch={args.batch} samples/ray={args.samples} cpu_threads={torch.get_num_threads()} "
          "scene: blob-initialised NeRF (the state at step 0)")
    hdr = f"{'device':6} {'path':14} {'occ':3} {'res':>4} {'rays/s':>10} {'render s':>9} {'train step s':>12} {'kept':>6}"
    print(hdr)
    print("-" * len(hdr))
    runs = [(torch.device("cpu"), "torch")] if "cpu" in args.devices else []
    if torch.cuda.is_available() and "cuda" in args.devices:
        runs += [(torch.device("cuda"), "torch"), (torch.device("cuda"), "cuda")]
    results = {}
    for device, backend in runs:
        for res in args.res:
            for occ in (True, False):
                m = bench(device, args.grid, res, args.batch, args.samples, occ, backend, args.repeats)
                path = "tcnn+nerfacc" if m["backend"] == "cuda" else "torch"
                results[(device.type, backend, res, occ)] = m
                print(f"{device.type:6} {path:14} {'on' if occ else 'off':3} {res:4d} {m['rays_per_s']:10.0f} "
                      f"{m['render_s']:9.3f} {m['train_s']:12.3f} {m['kept']:6.1%}")
    for res in args.res:
        m = results.get(("cpu", "torch", res, True)), results.get(("cpu", "torch", res, False))
        if m[0] is not None:
            print(f"cpu {res}^2: occupancy grid speeds a training step up {m[1]['train_s'] / m[0]['train_s']:.2f}x, "
                  f"rendering {m[1]['render_s'] / m[0]['render_s']:.2f}x")
        if ("cuda", "cuda", res, True) in results:
            a, b = results[("cuda", "torch", res, True)], results[("cuda", "cuda", res, True)]
            print(f"gpu {res}^2: tcnn+nerfacc vs torch path: train step {a['train_s'] / b['train_s']:.2f}x, "
                  f"render {a['render_s'] / b['render_s']:.2f}x")


if __name__ == "__main__":
    main()
