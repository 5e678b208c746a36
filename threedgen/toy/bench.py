"""ToyBench: run recipes on toy prompts and score them against the analytic ground truth.

``python -m threedgen.toy.bench --recipes configs/toy/sds-nerf.yaml --prompts "a red cube" --seeds 0 1``
``python -m threedgen.toy.bench --recipes ... --shard 2/4 --out bench-out``  (one of four shards)
``python -m threedgen.toy.bench --merge --out bench-out``  (tables from every finished run)

Runs are resumable across sessions: the jobs (recipe x prompt x seed, in that order) are dealt to
shards round robin; each finished job is written at once to ``<out>/rows/<job>.json`` (and its
orbit strip to ``<job>.png``), and a rerun of any shard skips the jobs already there. A job that
fails is logged to ``<job>.error.txt`` and the shard goes on; a rerun tries it again. Each row
records the hashes of the recipe and weights that made it (``provenance.py``): after a recipe or the
toy prior changes, its old rows are stale, shards rerun them and ``--merge`` leaves them out.

Each (recipe, prompt, seed) trains in its own ``launch.py`` process (so wall time and peak
memory are that run's own), then the final scene is rendered over a fixed orbit (8 azimuths at
elevation 15 deg) and compared with the analytic render of the same cameras:

- ``iou``: silhouette IoU (alpha > 0.5 vs the true mask). For prompts without a marker the
  object's yaw is not defined by the prompt (a cube may come out turned), so the IoU is
  maximised over one global yaw of the ground truth;
- ``colour_err``: mean absolute RGB error on pixels inside both silhouettes (same yaw);
- ``janus``: for marker prompts, the fraction of views where the classifier's "marker visible"
  disagrees with whether the true marker is visible (0 is right, 1 is the opposite everywhere);
- ``cls_acc``: fraction of views the toy classifier labels with the prompt's shape and colour;
- ``wall_s`` and ``peak_rss_mb`` of the training process, which runs on one torch thread whatever the recipe
  asks (``threads=1``; a shared override may say otherwise), so that shards can share the cores.
Writes ``bench.csv``, ``bench.md``, ``claims.md`` (the papers' claims tested on the table,
``claims.py``) and ``grid.png`` (rows prompts, columns recipes) from every finished job in
``<out>/rows`` (this shard's and the others').
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..data.cameras import make_cameras
from . import world as W
from .claims import write_claims
from .provenance import fingerprint, is_current
from .render import render_scene
from ..utils.atomic import write_bytes

REPO = Path(__file__).resolve().parents[2]
ORBIT_AZIMUTHS = tuple(range(0, 360, 45))
YAWS = tuple(range(0, 360, 10))
EVAL_RES = 64


def orbit(resolution: int = EVAL_RES, yaw: float = 0.0):
    cfg = W.TOY_CAMERAS
    az = torch.tensor(ORBIT_AZIMUTHS, dtype=torch.float32) + yaw
    light = torch.tensor(W.LIGHT_DIR, dtype=torch.float32).expand(len(az), 3)  # the world's fixed light
    return make_cameras(cfg.eval_elevation, az, cfg.eval_distance, cfg.eval_fovy, resolution, resolution, light_dir=light)


def score(rgb: torch.Tensor, alpha: torch.Tensor, scene: W.ToyScene, classifier=None) -> dict:
    """Metrics of orbit renders (``[8,3,H,W]``, ``[8,1,H,W]``, cameras from ``orbit()``)."""
    from .classifier import HEADS, classify

    pred = alpha > 0.5
    yaws = (0.0,) if scene.marker else YAWS
    best = None
    for yaw in yaws:
        # rotating the object by -yaw is the same as moving every camera by +yaw
        gt = render_scene(scene, orbit(rgb.shape[-1], yaw))
        m = gt["mask"] > 0.5
        iou = float((pred & m).sum() / (pred | m).sum().clamp_min(1))
        if best is None or iou > best[0]:
            best = (iou, gt, m)
    iou, gt, m = best
    both = (pred & m).expand_as(rgb)
    colour_err = float((rgb - gt["rgb"]).abs()[both].mean()) if both.any() else 1.0
    out = {"iou": iou, "colour_err": colour_err, "janus": float("nan"), "cls_acc": float("nan")}
    if classifier is not None:
        c = classify(classifier, rgb)
        shape_ok = c["shape"] == HEADS["shape"].index(scene.shape)
        colour_ok = c["colour"] == HEADS["colour"].index(scene.colour)
        out["cls_acc"] = float((shape_ok & colour_ok).float().mean())
        if scene.marker:
            true_visible = gt["marker"].flatten(1).sum(1) > 2.0  # > 2 pixels of the marker at 64^2
            out["janus"] = float(((c["marker"] == 1) != true_visible).float().mean())
    return out


def run_one(recipe: Path, prompt: str, seed: int, out_dir: Path, overrides: list[str]) -> tuple[Path, float, float]:
    """Train in a child process; returns (run folder, wall seconds, peak RSS in MB). Each seed trains under
    its own ``out_dir/seed<k>``, so shards (or benches) sharing ``out_dir`` that run the same prompt at once
    never take each other's run folder for their own (``job_run_folder``)."""
    out_dir = out_dir / f"seed{seed}"
    args = [
        sys.executable, str(REPO / "launch.py"), "--config", str(recipe), "--train", "-q",
        f"system.prompt={prompt}", f"seed={seed}", f"output_dir={out_dir}", "trainer.export_at_end=false",
        "trainer.test_views=8", "threads=1", *overrides,  # one thread per run: shards share the cores
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{recipe.name} on {prompt!r} seed {seed} failed:\n{err[-2000:]}")
    return job_run_folder(out_dir, recipe, prompt), wall, usage.ru_maxrss / 1024


def job_run_folder(out_dir: Path, recipe: Path, prompt: str) -> Path:
    """The newest run of ``prompt`` under ``out_dir`` (one job's own folder: a rerun's run is the newest)."""
    from ..systems.runner import slugify

    runs = sorted((out_dir / _recipe_name(recipe)).glob(f"{slugify(prompt)}@*"))
    if not runs:
        raise RuntimeError(f"{recipe.name} on {prompt!r} left no run folder under {out_dir}")
    return runs[-1]


def _recipe_name(recipe: Path) -> str:
    import yaml

    return (yaml.safe_load(recipe.read_text()) or {}).get("name", recipe.stem)


def render_run(run: Path, recipe: Path, overrides: list[str]):
    """The run's orbit renders (rgb, alpha) of particle 0."""
    return render_orbits(run, recipe, overrides, particles=False)[0]


def render_orbits(run: Path, recipe: Path, overrides: list[str], particles: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The orbit renders (rgb, alpha) of every particle of a run (of particle 0 alone unless ``particles``)."""
    from ..config import load_config
    from ..systems.runner import load_system, plan_stages

    cfg, raw = load_config(recipe, overrides)
    stage = plan_stages(cfg, raw, run)[-1]
    system = load_system(stage.cfg, stage.final)
    orbits = []
    for i in range(int(getattr(system.cfg, "particles", 1)) if particles else 1):
        outs = system.render_views(orbit(), particle=i)
        orbits.append((torch.cat([o.rgb for o in outs]).cpu(), torch.cat([o.alpha for o in outs]).cpu()))
    return orbits


def particle_diversity(orbits: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean absolute RGB difference between every two particles' orbits (rgb, alpha) seen over white: 0 when
    the particles are one object (ProlificDreamer's claim is that VSD's particles differ where SDS's collapse)."""
    import itertools

    shown = [rgb * alpha + (1 - alpha) for rgb, alpha in orbits]
    pairs = [float((a - b).abs().mean()) for a, b in itertools.combinations(shown, 2)]
    return sum(pairs) / len(pairs)


def variant_name(recipe_name: str, overrides: list[str]) -> str:
    """A row's recipe label: the recipe's name, plus its overrides when there are any ("toy-vsd-nerf+system.particles=2"),
    so a variant's rows neither overwrite nor mix with the recipe's own."""
    return "+".join([recipe_name, *overrides])


MAX_KEY_BYTES = 160
"""A row's file name stays this short (plus ``.error.txt`` and the atomic writer's temporary prefix and suffix)
under the 255 bytes a file name may have: a variant with several overrides is named by a digest of its label."""


def job_key(recipe_name: str, prompt: str, seed: int) -> str:
    """The file name (without extension) of a job's row: ``recipe__prompt__sSEED``, or where that is longer than
    ``MAX_KEY_BYTES``, the label's first characters and a digest of the whole (the row itself keeps the full label)."""
    import hashlib

    from ..systems.runner import slugify

    key = f"{recipe_name}__{slugify(prompt)}__s{seed}"
    if len(key.encode()) <= MAX_KEY_BYTES:
        return key
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return f"{recipe_name[:60]}~{digest}__{slugify(prompt)[:50]}__s{seed}"


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (1 <= i <= n) -> ``(i, n)``; ValueError with the expected form otherwise."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes i/n with whole numbers, e.g. 2/4; got {text!r}") from None
    if not 1 <= i <= n:
        raise ValueError(f"--shard i/n needs 1 <= i <= n, got {text!r}")
    return i, n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipes", nargs="+", default=[])
    ap.add_argument("--prompts", nargs="+", default=["a red cube", "a blue sphere", "a green cylinder", "a yellow cone", "a purple torus"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--shard", default="1/1", help="i/n: run every n-th job starting at the i-th (1-based)")
    ap.add_argument("--merge", action="store_true", help="only write the tables from <out>/rows")
    ap.add_argument("--classifier", default=str(REPO / "assets" / "toy-prior" / "classifier"))
    ap.add_argument("overrides", nargs="*", help="key=value overrides applied to every recipe")
    args = ap.parse_args(argv)
    out = Path(args.out)
    try:
        shard, n_shards = parse_shard(args.shard)
        scenes = {p: W.parse_prompt(p) for p in args.prompts}  # fails early on words outside the toy world
        if not args.merge and not args.recipes:
            raise ValueError("--recipes is required unless --merge")
        for r in args.recipes:
            if not Path(r).is_file():
                raise ValueError(f"recipe {r} does not exist; pass YAML files such as configs/toy/sds-nerf.yaml")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows_dir = out / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    classifier_dir = Path(args.classifier) if Path(args.classifier).is_dir() else None
    if not args.merge:
        from .classifier import load_classifier

        classifier = load_classifier(classifier_dir) if classifier_dir else None
        jobs = [(Path(r), p, s) for r in args.recipes for p in args.prompts for s in args.seeds]
        mine = [j for k, j in enumerate(jobs) if k % n_shards == shard - 1]
        made_by = {r: fingerprint(r, args.overrides, classifier_dir, REPO) for r in {j[0] for j in mine}}
        todo = [j for j in mine if not _done(rows_dir / f"{job_key(variant_name(_recipe_name(j[0]), args.overrides), j[1], j[2])}.json",
                                             made_by[j[0]])]
        print(f"shard {shard}/{n_shards}: {len(mine)} jobs, {len(mine) - len(todo)} already done, {len(todo)} to run", flush=True)
        t0 = time.perf_counter()
        for k, (recipe, prompt, seed) in enumerate(todo):
            provenance = {"recipe_file": _rel(recipe), "overrides": list(args.overrides), **made_by[recipe]}
            _run_job(recipe, prompt, seed, scenes[prompt], classifier, out, rows_dir, args.overrides, provenance)
            rate = (time.perf_counter() - t0) / (k + 1)
            print(f"[{k + 1}/{len(todo)}] {rate / 60:.1f} min/run, ETA {rate * (len(todo) - k - 1) / 60:.0f} min", flush=True)
    return merge(out, classifier_dir)


def _rel(path: Path) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def _done(row_file: Path, current: dict) -> bool:
    """A job is done when its row exists and was made by today's recipe and weights (else it reruns)."""
    return row_file.is_file() and is_current(json.loads(row_file.read_text()), current)


def _run_job(recipe: Path, prompt: str, seed: int, scene, classifier, out: Path, rows_dir: Path, overrides: list[str],
             provenance: dict) -> None:
    from ..utils.images import make_grid, save_png

    name = variant_name(_recipe_name(recipe), overrides)
    key = job_key(name, prompt, seed)
    try:
        run, wall, rss = run_one(recipe, prompt, seed, out / "runs", overrides)
        orbits = render_orbits(run, recipe, ["system.prompt=" + prompt, *overrides])
        (rgb, alpha), diversity = orbits[0], (particle_diversity(orbits) if len(orbits) > 1 else None)
    except Exception as e:  # one failed job must not lose the shard: log it, go on, retry on a rerun
        (rows_dir / f"{key}.error.txt").write_text(f"{type(e).__name__}: {e}\n")
        print(f"FAILED {key}: {str(e).splitlines()[0] if str(e) else type(e).__name__}", flush=True)
        return
    row = {"recipe": name, "prompt": prompt, "seed": seed, **score(rgb, alpha, scene, classifier),
           **({"particle_diversity": diversity} if diversity is not None else {}),
           "wall_s": round(wall, 1), "peak_rss_mb": round(rss), "run": str(run), **provenance}
    save_png(rows_dir / f"{key}.png", make_grid([list(rgb[::2])]))
    write_bytes(rows_dir / f"{key}.json", (json.dumps(row) + "\n").encode())  # a killed shard never leaves half a row
    (rows_dir / f"{key}.error.txt").unlink(missing_ok=True)
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def current_rows(rows: list[dict], classifier: Path | None) -> tuple[list[dict], list[dict]]:
    """Split rows into (made by today's recipe files and weights, stale or of unknown origin)."""
    now: dict = {}
    keep, stale = [], []
    for r in rows:
        recipe = REPO / r.get("recipe_file", "")  # an absolute recipe_file stays as it is; none: REPO, no file
        key = (str(recipe), tuple(r.get("overrides", ())))
        if key not in now:
            now[key] = fingerprint(recipe, list(key[1]), classifier, REPO) if recipe.is_file() else None
        (keep if now[key] is not None and is_current(r, now[key]) else stale).append(r)
    return keep, stale


def merge(out: Path, classifier: Path | None = REPO / "assets" / "toy-prior" / "classifier") -> int:
    """bench.csv, bench.md and grid.png from every finished job under ``<out>/rows`` made by today's recipes."""
    import numpy as np
    from PIL import Image

    from ..utils.images import save_png

    rows, stale = current_rows([json.loads(f.read_text()) for f in sorted((out / "rows").glob("*.json"))], classifier)
    if stale:
        names = ", ".join(sorted({r["recipe"] for r in stale}))
        print(f"left out {len(stale)} stale rows (their recipe or weights changed since, or no record): {names}; "
              "rerun their shards to replace them", flush=True)
    if not rows:
        print(f"no current finished runs under {out / 'rows'} yet")
        return 0
    _write_tables(out, rows, len(stale))
    write_claims(out, rows)
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    strips = []
    for p in prompts:
        row_imgs = []
        for r in recipes:
            first = next((x for x in rows if x["recipe"] == r and x["prompt"] == p), None)
            f = out / "rows" / f"{job_key(r, p, first['seed'])}.png" if first else None
            if f is not None and f.is_file():
                row_imgs.append(np.asarray(Image.open(f).convert("RGB")))
        if row_imgs:
            strips.append(np.concatenate(row_imgs, axis=1))
    if strips:
        w = max(s.shape[1] for s in strips)
        strips = [np.pad(s, ((0, 0), (0, w - s.shape[1]), (0, 0)), constant_values=255) for s in strips]
        save_png(out / "grid.png", np.concatenate(strips, axis=0))
    print(f"{len(rows)} runs: wrote {out / 'bench.csv'}, {out / 'bench.md'}, {out / 'claims.md'}, {out / 'grid.png'}")
    return 0


def _write_tables(out: Path, rows: list[dict], n_stale: int = 0) -> None:
    with open(out / "bench.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)
    keys = ["iou", "colour_err", "janus", "cls_acc", "wall_s", "peak_rss_mb"]
    lines = ["| recipe | prompt | seeds | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 3)]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["recipe"], r["prompt"]), []).append(r)
    for (recipe, prompt), rs in groups.items():
        means = [sum(float(r[k]) for r in rs) / len(rs) for k in keys]
        lines.append(f"| {recipe} | {prompt} | {len(rs)} | " + " | ".join(f"{v:.3f}" for v in means) + " |")
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        rs = [r for r in rows if r["recipe"] == recipe]
        means = [sum(float(r[k]) for r in rs) / len(rs) for k in keys]
        lines.append(f"| **{recipe}** | all | {len(rs)} | " + " | ".join(f"{v:.3f}" for v in means) + " |")
    if n_stale:
        lines.append(f"\n{n_stale} stale rows left out (made by an earlier recipe or prior).")
    (out / "bench.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
