"""The papers' claims on a ToyBench table: paired differences, the 2-SE verdict, seed diversity from
the orbit strips, and "no data" for recipes without runs."""

from __future__ import annotations

import json

import numpy as np

from threedgen.toy.bench import job_key
from threedgen.toy.claims import CLAIMS, Claim, evaluate, main, write_claims


def _row(d, recipe, prompt, seed, strip_value, **metrics):
    row = {"recipe": recipe, "prompt": prompt, "seed": seed, "iou": 0.5, "colour_err": 0.1, "janus": float("nan"), **metrics}
    key = job_key(recipe, prompt, seed)
    (d / f"{key}.json").write_text(json.dumps(row))
    from PIL import Image

    Image.fromarray(np.full((8, 16, 3), strip_value, np.uint8)).save(d / f"{key}.png")
    return row


def test_verdicts_follow_the_paired_difference(tmp_path):
    d = tmp_path / "rows"
    d.mkdir()
    rows = []
    prompts = ["a red cube", "a blue sphere", "a green cylinder"]
    for k, p in enumerate(prompts):
        for s in (0, 1):
            # VSD: colour error clearly lower; seeds differ (strips 0 vs 255) where SDS's seeds agree
            rows.append(_row(d, "toy-vsd-nerf", p, s, 255 * s, colour_err=0.05 + 0.01 * k))
            rows.append(_row(d, "toy-sds-nerf-camera", p, s, 100, colour_err=0.10 + 0.01 * k + 0.002 * s, iou=0.7))
            # CSM: IoU equal to SDS's up to noise of both signs -> not shown
            rows.append(_row(d, "toy-csm-nerf", p, s, 100, iou=0.7 + (0.01 if (k + s) % 2 else -0.01)))
    by = {(c.recipe, c.metric): c for c in CLAIMS}
    colour = evaluate(rows, d, by[("toy-vsd-nerf", "colour_err")])
    assert colour["verdict"] == "holds" and colour["n"] == 6 and np.isclose(colour["gain"], 0.051)
    div = evaluate(rows, d, by[("toy-vsd-nerf", "seed_diversity")])
    assert div["verdict"] == "holds" and div["n"] == 3 and np.isclose(div["recipe"], 1.0) and div["baseline"] == 0.0
    assert evaluate(rows, d, by[("toy-csm-nerf", "iou")])["verdict"] == "not shown"
    worse = Claim("x", "y", "toy-sds-nerf-camera", "toy-vsd-nerf", "colour_err", "lower", "shapes")  # the claim reversed
    assert evaluate(rows, d, worse)["verdict"] == "opposite"
    assert evaluate(rows, d, by[("toy-esd-nerf", "janus")]) == {"n": 0, "verdict": "no data"}
    md = write_claims(tmp_path, rows).read_text()
    assert md.count("no data") >= 1 and "| ProlificDreamer (VSD) |" in md and "Not testable" in md
    assert main(["--out", str(tmp_path)]) == 0


def test_particle_claim_reads_the_two_particle_rows(tmp_path):
    d = tmp_path / "rows"
    d.mkdir()
    rows = []
    for k, p in enumerate(["a red cube", "a blue sphere", "a green cylinder"]):
        rows.append(_row(d, "toy-vsd-nerf+system.particles=2", p, 0, 100, particle_diversity=0.05 + 0.01 * k))
        rows.append(_row(d, "toy-sds-nerf-camera+system.particles=2", p, 0, 100, particle_diversity=0.01 + 0.002 * k))
        rows.append(_row(d, "toy-vsd-nerf", p, 0, 100))  # the recipe's own rows have no particles: not counted
    (claim,) = [c for c in CLAIMS if c.metric == "particle_diversity"]
    e = evaluate(rows, d, claim)
    assert e["verdict"] == "holds" and e["n"] == 3 and np.isclose(e["baseline"], 0.012)
    assert "diversity across particles" not in write_claims(tmp_path, rows).read_text()  # no longer listed as untestable


def test_missing_folder_one_line_exit_2(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_share_of_correct_objects():
    from threedgen.toy.claims import correct

    good = {"prompt": "a red cube", "iou": 0.8, "colour_err": 0.05, "cls_acc": 1.0, "janus": float("nan")}
    assert correct(good) == 1.0
    assert correct({**good, "iou": 0.59}) == 0.0 and correct({**good, "colour_err": 0.2}) == 0.0
    assert correct({**good, "cls_acc": 0.25}) == 0.0
    dot = {**good, "prompt": "a red cube with a white dot"}
    assert correct({**dot, "janus": 0.125}) == 1.0 and correct({**dot, "janus": 0.5}) == 0.0


def test_reward_claim_counts_correct_runs(tmp_path):
    d = tmp_path / "rows"
    d.mkdir()
    rows = []
    for s in range(6):
        rows.append(_row(d, "toy-sds-reward-nerf", "a red cube", s, 0, iou=0.8, cls_acc=1.0))
        rows.append(_row(d, "toy-sds-nerf", "a red cube", s, 0, iou=0.8 if s == 0 else 0.5, cls_acc=1.0))
    (claim,) = [c for c in CLAIMS if c.metric == "correct" and c.prompts == "shapes"]
    e = evaluate(rows, d, claim)
    assert e["n"] == 6 and e["recipe"] == 1.0 and np.isclose(e["baseline"], 1 / 6) and e["verdict"] == "holds"
