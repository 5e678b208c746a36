"""The papers' claims about their objectives, tested as numbers on a ToyBench table.

``python -m threedgen.toy.claims --out bench-out`` (also written by ``threedgen.toy.bench --merge``)
reads ``<out>/rows`` and writes ``<out>/claims.md``: one line per claim, the claim as its paper
states it, the two recipes' numbers over the runs both have (same prompts and seeds), and a
verdict. A claim holds when the paired difference has the claimed sign and is larger than twice its
standard error; "opposite" when it is that large the other way; "not shown" otherwise; "no data"
when the two recipes share no runs yet.

Seed diversity of a prompt is the mean absolute RGB difference between the orbit strips (the
``<job>.png`` files, 4 views at 64², white background) of seed 0 and seed 1: 0 when the two seeds
make the same object, larger for different objects (or the same object turned; for a cube that
counts as different). Particle diversity is the same difference between the particles of one run
(``system.particles=2``; ``bench.particle_diversity``), recorded in the rows of that variant
(``python -m threedgen.toy.bench --out DIR system.particles=2 --recipes configs/toy/vsd-nerf.yaml
configs/toy/sds-nerf-camera.yaml``: rows labelled ``toy-vsd-nerf+system.particles=2``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Claim:
    paper: str
    statement: str  # as the paper states it
    recipe: str  # the claimed-better recipe
    baseline: str
    metric: str  # a row key, or "seed_diversity"
    better: str  # "lower" or "higher"
    prompts: str  # "shapes" (no marker) or "markers"


CLAIMS = (
    Claim("ProlificDreamer (VSD)", "VSD fixes SDS's over-saturation: more faithful colours", "toy-vsd-nerf", "toy-sds-nerf-camera",
          "colour_err", "lower", "shapes"),
    Claim("ProlificDreamer (VSD)", "VSD gives diverse results where SDS's are alike across seeds", "toy-vsd-nerf",
          "toy-sds-nerf-camera", "seed_diversity", "higher", "shapes"),
    Claim("ProlificDreamer (VSD)", "VSD's particles are diverse where SDS's collapse to one mode",
          "toy-vsd-nerf+system.particles=2", "toy-sds-nerf-camera+system.particles=2", "particle_diversity", "higher", "shapes"),
    Claim("ESD", "the entropy term reduces the Janus (multi-face) problem", "toy-esd-nerf", "toy-sds-nerf-camera", "janus",
          "lower", "markers"),
    Claim("Consistent3D (CDS)", "the deterministic ODE prior gives consistent results", "toy-cds-nerf", "toy-sds-nerf-camera",
          "seed_diversity", "lower", "shapes"),
    Claim("Consistent3D (CDS)", "higher fidelity than SDS", "toy-cds-nerf", "toy-sds-nerf-camera", "iou", "higher", "shapes"),
    Claim("TV-3DG (CSM)", "CSM without the noise term improves on SDS", "toy-csm-nerf", "toy-sds-nerf-camera", "iou", "higher",
          "shapes"),
    Claim("TV-3DG (CSM)", "CSM without the noise term improves on SDS (colour)", "toy-csm-nerf", "toy-sds-nerf-camera",
          "colour_err", "lower", "shapes"),
    Claim("CSD", "the classifier score alone is enough for text-to-3D", "toy-csd-nerf", "toy-sds-nerf-camera", "iou", "higher",
          "shapes"),
    Claim("LucidDreamer (ISM)", "ISM avoids SDS's over-smoothing: higher fidelity", "toy-ism-nerf", "toy-sds-nerf-camera", "iou",
          "higher", "shapes"),
    Claim("MVDream (camera-conditioned prior)", "multi-view conditioning gives 3D-consistent shapes", "toy-sds-nerf-camera",
          "toy-sds-nerf", "iou", "higher", "shapes"),
    Claim("MVDream (camera-conditioned prior)", "multi-view conditioning removes the Janus problem", "toy-sds-nerf-camera",
          "toy-sds-nerf", "janus", "lower", "markers"),
    Claim("VLM3D (toy critic)", "the critic's reward makes more objects match the prompt", "toy-sds-reward-nerf",
          "toy-sds-nerf", "correct", "higher", "shapes"),
    Claim("VLM3D (toy critic)", "the critic's reward makes more objects match the prompt, front included", "toy-sds-reward-nerf",
          "toy-sds-nerf", "correct", "higher", "markers"),
)
NOT_TESTABLE = (
    ("LucidDreamer (ISM)", "finer texture detail", "the toy objects have no texture detail beyond one colour at 32² renders"),
    ("Consistent3D / ISM", "faster convergence in wall time on SD", "the toy prior's step costs differ from SD's; see docs/objectives.md"),
)


def strip(rows_dir: Path, row: dict) -> np.ndarray:
    from PIL import Image

    from .bench import job_key

    return np.asarray(Image.open(rows_dir / f"{job_key(row['recipe'], row['prompt'], row['seed'])}.png").convert("RGB"), np.float32) / 255.0


def correct(row: dict) -> float:
    """1 when a run made the prompt's object: silhouette IoU >= 0.6, colour error <= 0.12, the judge
    classifier names its shape and colour in at least half the views and, on marker prompts, the
    marker is where it belongs in at least 80% of them (Janus <= 0.2); else 0."""
    ok = row["iou"] >= 0.6 and row["colour_err"] <= 0.12 and row.get("cls_acc", 0.0) >= 0.5
    if "with a white dot" in row["prompt"]:
        ok = ok and row["janus"] <= 0.2
    return float(ok)


def per_prompt_values(rows: list[dict], rows_dir: Path, recipe: str, metric: str, markers: bool) -> dict:
    """{(prompt, seed) or prompt: value} for one recipe's runs of the chosen prompt kind."""
    mine = [r for r in rows if r["recipe"] == recipe and (("with a white dot" in r["prompt"]) == markers)]
    if metric == "correct":
        return {(r["prompt"], r["seed"]): correct(r) for r in mine}
    if metric != "seed_diversity":
        return {(r["prompt"], r["seed"]): float(r[metric]) for r in mine if metric in r and not math.isnan(float(r[metric]))}
    out = {}
    by_prompt: dict = {}
    for r in mine:
        by_prompt.setdefault(r["prompt"], {})[r["seed"]] = r
    for prompt, seeds in by_prompt.items():
        if 0 in seeds and 1 in seeds:
            out[prompt] = float(np.abs(strip(rows_dir, seeds[0]) - strip(rows_dir, seeds[1])).mean())
    return out


def evaluate(rows: list[dict], rows_dir: Path, claim: Claim) -> dict:
    markers = claim.prompts == "markers"
    a = per_prompt_values(rows, rows_dir, claim.recipe, claim.metric, markers)
    b = per_prompt_values(rows, rows_dir, claim.baseline, claim.metric, markers)
    keys = sorted(set(a) & set(b), key=str)
    if not keys:
        return {"n": 0, "verdict": "no data"}
    d = np.array([a[k] - b[k] for k in keys]) * (1.0 if claim.better == "higher" else -1.0)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("inf")
    verdict = "holds" if d.mean() > 2 * se else ("opposite" if d.mean() < -2 * se else "not shown")
    return {"n": len(keys), "recipe": float(np.mean([a[k] for k in keys])), "baseline": float(np.mean([b[k] for k in keys])),
            "gain": float(d.mean()), "se": se, "verdict": verdict}


def write_claims(out: Path, rows: list[dict]) -> Path:
    lines = ["| paper | claim | metric | recipe | baseline | runs | recipe value | baseline value | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in CLAIMS:
        e = evaluate(rows, out / "rows", c)
        vals = (f"{e['n']} | {e['recipe']:.3f} | {e['baseline']:.3f} | {e['verdict']} (gain {e['gain']:+.3f} ± {e['se']:.3f})"
                if e["n"] else "0 | – | – | no data")
        lines.append(f"| {c.paper} | {c.statement} | {c.metric} ({c.better} is better) | {c.recipe} | {c.baseline} | {vals} |")
    lines += ["", "Not testable in the toy world:", ""]
    lines += [f"- {p}: {what} — {why}." for p, what, why in NOT_TESTABLE]
    path = out / "claims.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench-out", help="a ToyBench output folder (with rows/)")
    args = ap.parse_args(argv)
    rows_dir = Path(args.out) / "rows"
    if not rows_dir.is_dir():
        print(f"error: {rows_dir} does not exist; pass --out with a ToyBench output folder", file=sys.stderr)
        return 2
    rows = [json.loads(f.read_text()) for f in sorted(rows_dir.glob("*.json"))]
    print(f"{len(rows)} runs: wrote {write_claims(Path(args.out), rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
