"""A scene edit through launch.py (issue 19): configs/toy/edit-disds.yaml on a tiny random inpainting
prior with a ControlNet — the background comes out of the export bit-identical, the object lies in
the box and is exported alone with its placement — and every bad input named before anything is written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tiny_models
from threedgen.edit.scene_ply import read_splat_ply

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "toy" / "edit-disds.yaml"
SHORT = ["stages.0.steps=2", "stages.1.steps=3", "trainer.val_every=2", "trainer.ckpt_every=2", "trainer.test_views=4", "trainer.test_resolution=32",
         "data.batch_size=2", "system.representation.num_points=200", "system.representation.init_opacity=0.8",
         "system.edit.anchor_views=4",
         "export.views=12", "export.view_resolution=48", "export.resolution=32", "export.refine_steps=5", "export.texture_fit_steps=5"]


def launch(*args, cwd, cache):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "THREEDGEN_CACHE": str(cache)}
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.fixture(scope="module")
def inpaint_prior(tmp_path_factory):
    return tiny_models.build_pixel_inpaint(tmp_path_factory.mktemp("toy-inpaint-tiny"), sample_size=32)


def test_edit_recipe_end_to_end_keeps_the_background_and_exports_the_object(tmp_path, inpaint_prior):
    r = launch("--config", str(RECIPE), "--train", f"system.guidance.0.prior.model={inpaint_prior}", f"output_dir={tmp_path}/out",
               *SHORT, cwd=tmp_path, cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (tmp_path / "out" / "toy-edit-disds").iterdir()
    scene = read_splat_ply(tmp_path / "cache" / "toy-scenes" / "pair-v1.ply")
    edited = read_splat_ply(run / "export" / "gaussians.ply")
    n_bg = len(scene["means"])
    n_obj = len(edited["means"]) - n_bg
    assert n_obj > 0
    for k in ("means", "log_scales", "quats", "logit_opacities"):
        np.testing.assert_array_equal(edited[k][n_obj:], scene[k], err_msg=k)  # the background, bit for bit
    np.testing.assert_array_equal(edited["sh"][n_obj:, :1], scene["sh"][:, :1])
    lo, hi = np.array([-0.189, -0.2, -0.189]), np.array([0.189, 0.178, 0.189])
    obj = edited["means"][:n_obj]
    assert (obj >= lo - 1e-6).all() and (obj <= hi + 1e-6).all()  # the object stays in its box
    place = json.loads((run / "export" / "object" / "placement.json").read_text())
    np.testing.assert_allclose(place["translation"], (lo + hi) / 2, atol=1e-6)
    alone = read_splat_ply(run / "export" / "object" / "gaussians.ply")
    np.testing.assert_allclose(alone["means"] + np.array(place["translation"], dtype=np.float32), obj, atol=1e-6)
    assert (run / "export" / "object" / "model.glb").is_file() and place["anchor"]["visible"] > 0
    assert not (run / "export" / "model.glb").exists()  # no mesh of a whole captured scene
    assert "edit: anchor view" in r.stderr
    assert (run / "renders" / "test" / "before_after.mp4").stat().st_size > 0
    from PIL import Image

    anchor = np.asarray(Image.open(run / "renders" / "test" / "anchor.png"))
    assert anchor.shape == (32, 96, 3)  # box tinted | before | after, at the test resolution
    assert (anchor[:, :32].astype(int) - anchor[:, 32:64]).any() and (anchor[:, 32:64] != anchor[:, 64:]).any()
    assert (run / "ckpts").is_dir() and (run / "renders" / "val" / "coarse").is_dir()  # both stages ran


@pytest.mark.parametrize("override,needle", [
    ("system.edit.box=[0,0,0,0.1,-0.1,0.1]", "empty or inverted along y"),
    ("system.edit.box=[5,5,5,6,6,6]", "outside the scene's bounds"),
    ("system.scene=notes.txt", "not a PLY file"),
    ("system.scene=missing.ply", "does not exist"),
    ("system.scene=toy:nosuch", "unknown toy scene 'nosuch'"),
    ("data.distance_range=[40,50]", "no training view sees the edit box"),
])
def test_bad_edit_input_is_one_line_exit_2_and_nothing_written(tmp_path, inpaint_prior, override, needle):
    (tmp_path / "notes.txt").write_text("not a scene")
    r = launch("--config", str(RECIPE), "--train", f"system.guidance.0.prior.model={inpaint_prior}", f"output_dir={tmp_path}/out",
               override, cwd=tmp_path, cache=tmp_path / "cache")
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(("INFO", "WARNING"))]
    assert len(lines) == 1 and needle in lines[0], r.stderr[-2000:]
    assert not (tmp_path / "out").exists()
