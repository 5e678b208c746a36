"""ToyBench's asset columns: score the exported GLB of finished toy runs against the analytic world.

``python -m threedgen.toy.asset_bench RUN_FOLDER ... --out bench-out/assets``

Each run is re-exported in its own ``launch.py --export`` process (the export time is that
process's wall time), then the written ``model.glb`` is scored:

- ``watertight``, ``euler``, ``faces``, ``psnr_db`` and ``mask_iou`` from the export's own
  ``report.json`` (GLB vs the representation's renders), and ``psnr_bound_db``: what an opaque copy
  of the renders themselves scores (``report.opaque_coverage``);
- ``topology_ok``: watertight with the prompt's Euler characteristic (torus 0, the others 2);
- ``chamfer``: chamfer-L1 in metres, ½(accuracy + completeness): accuracy is the exact distance
  of 20k GLB surface samples to the analytic surface (|SDF|), completeness the distance of 20k
  analytic surface samples to the GLB (nearest of 400k GLB samples), minimised over one global yaw
  (a prompt without a marker does not fix the object's turn);
- ``fscore``: F-score at 5 cm over the same samples and yaw;
- ``glb_colour_err`` / ``render_colour_err``: ToyBench's colour error (``bench.score``) of the
  GLB's unlit texture rendered over the bench orbit, and of the representation's renders.
Writes ``assets.csv`` and ``assets.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import world as W
from .bench import REPO, orbit, render_run, score
from .render import sdf_shape

YAWS = tuple(range(0, 360, 10))


def analytic_samples(shape: str, n: int, seed: int = 0) -> torch.Tensor:
    """[n,3] points on the analytic surface: random points pulled onto the zero level along the SDF gradient."""
    g = torch.Generator().manual_seed(seed)
    p = (torch.rand(4 * n, 3, generator=g) * 2 - 1) * W.BOUND_RADIUS
    for _ in range(12):
        p = p.detach().requires_grad_(True)
        d = sdf_shape(shape, p)
        (grad,) = torch.autograd.grad(d.sum(), p)
        p = p - d[:, None] * torch.nn.functional.normalize(grad, dim=-1)
    p = p.detach()
    ok = sdf_shape(shape, p).abs() < 1e-4
    return p[ok][:n]


def mesh_samples(v: np.ndarray, f: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    from ..export.decimate import surface_samples

    return surface_samples(v, f, n, seed)[len(v):]


def yaw_matrix(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]], dtype=torch.float32)


def surface_metrics(v: np.ndarray, f: np.ndarray, shape: str, threshold: float = 0.05) -> dict:
    """{chamfer, accuracy, completeness, fscore, yaw} of a mesh against the analytic ``shape``."""
    from scipy.spatial import cKDTree

    ms = torch.from_numpy(mesh_samples(v, f, 20000)).float()
    dense = cKDTree(mesh_samples(v, f, 400000, seed=1))
    gt = analytic_samples(shape, 20000)
    best = None
    for yaw in YAWS:
        R = yaw_matrix(yaw)
        acc = sdf_shape(shape, ms @ R.T).abs()  # mesh turned by yaw vs the true surface
        comp = torch.from_numpy(dense.query((gt @ R).numpy(), workers=-1)[0]).float()
        ch = 0.5 * float(acc.mean() + comp.mean())
        if best is None or ch < best["chamfer"]:
            p, r = float((acc < threshold).float().mean()), float((comp < threshold).float().mean())
            best = {"chamfer": ch, "accuracy": float(acc.mean()), "completeness": float(comp.mean()),
                    "fscore": 2 * p * r / max(p + r, 1e-12), "yaw": yaw}
    return best


def glb_orbit_render(glb: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The GLB's unlit texture over white and its coverage on the bench orbit ([8,3,H,W], [8,1,H,W])."""
    from ..export.mesh_views import rasterize_mesh
    from ..export.report import load_glb

    v, f, uv, tex = load_glb(glb)
    cams = orbit()
    mv = rasterize_mesh(v, f, uv, cams)
    with torch.no_grad():
        rgb = mv.composite(tex)
    return rgb.permute(0, 3, 1, 2), mv.covered[:, None].float()


def score_run(run: Path, overrides: list[str]) -> dict:
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    prompt = cfg["system"]["prompt"]
    scene = W.parse_prompt(prompt)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(REPO / "launch.py"), "--export", "--resume", str(run), "-q", *overrides],
                       capture_output=True, text=True)
    export_s = time.perf_counter() - t0
    if r.returncode != 0:
        return {"run": run.name, "prompt": prompt, "error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"}
    rep = json.loads((run / "export" / "report.json").read_text())
    from ..export.report import load_glb

    v, f, _, _ = load_glb(run / "export" / "model.glb")
    surf = surface_metrics(v, f, scene.shape)
    glb_rgb, glb_a = glb_orbit_render(run / "export" / "model.glb")
    rgb, alpha = render_run(run, run / "config.yaml", [])
    want = 0 if scene.shape == "torus" else 2
    glb_score, render_score = score(glb_rgb, glb_a, scene), score(rgb, alpha, scene)  # each searches 36 yaws
    return {"recipe": cfg.get("name", ""), "prompt": prompt, "seed": cfg.get("seed", 0), "faces": rep["faces"],
            "watertight": rep["watertight"], "euler": rep["euler"], "topology_ok": bool(rep["watertight"] and rep["euler"] == want),
            "chamfer": surf["chamfer"], "fscore": surf["fscore"], "psnr_db": rep["psnr_db"], "psnr_bound_db": rep["psnr_opaque_bound_db"], "mask_iou": rep["mask_iou"],
            "render_colour_err": render_score["colour_err"], "glb_colour_err": glb_score["colour_err"],
            "glb_iou": glb_score["iou"], "render_iou": render_score["iou"], "export_s": round(export_s, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="finished run folders (outputs/<recipe>/<prompt>@<time>)")
    ap.add_argument("--out", default="bench-out/assets")
    ap.add_argument("--set", nargs="*", default=[], metavar="export.KEY=VALUE", help="overrides for every export")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in map(Path, args.runs):
        row = score_run(run, args.set)
        rows.append(row)
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        _write(out, rows)
    return 0


def _write(out: Path, rows: list[dict]) -> None:
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return
    keys = list(ok[0])
    with open(out / "assets.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(ok)
    num = ["faces", "chamfer", "fscore", "psnr_db", "psnr_bound_db", "mask_iou", "render_colour_err", "glb_colour_err", "export_s"]
    lines = ["| recipe | runs | watertight + right Euler | " + " | ".join(num) + " |", "|" + "---|" * (len(num) + 3)]
    for recipe in dict.fromkeys(r["recipe"] for r in ok):
        rs = [r for r in ok if r["recipe"] == recipe]
        topo = sum(bool(r["topology_ok"]) for r in rs)
        means = [sum(float(r[k]) for r in rs) / len(rs) for k in num]
        lines.append(f"| {recipe} | {len(rs)} | {topo}/{len(rs)} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    failed = [r for r in rows if "error" in r]
    lines += [f"\nfailed: {r['run']} ({r['prompt']}): {r['error']}" for r in failed]
    (out / "assets.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
