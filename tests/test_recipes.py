"""The shipped recipes validate, and the real-model ones run end to end on tiny stand-ins substituted by path.

The stand-ins keep their own input resolution (prior.resolution=null): a two-level tiny VAE at 512²
would attend over 65k tokens, which says nothing about the recipe."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from threedgen.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs").rglob("*.yaml"))

SMALL = [
    "trainer.max_steps=2", "trainer.val_every=2", "trainer.test_views=2", "trainer.test_resolution=16",
    "system.val_views=1", "system.val_resolution=16", "export.resolution=24", "export.texture_size=64",
    "system.representation.grid.n_levels=4", "system.representation.grid.log2_hashmap_size=12",
    "system.representation.grid.max_resolution=64", "system.renderer.num_samples_per_ray=16",
    "data.width=16", "data.height=16",
]


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT)) for p in RECIPES])
def test_recipe_validates(path):
    cfg, _ = load_config(path)
    assert cfg.trainer.max_steps > 0


@pytest.mark.parametrize(
    "recipe,fixture,extra",
    [("dreamfusion-sd", "tiny_sd_path", []), ("dreamfusion-if", "tiny_if_path", ["system.guidance.0.prior.variant=null"])],
)
def test_real_recipe_runs_on_tiny_stand_in(recipe, fixture, extra, request, tmp_path):
    model = request.getfixturevalue(fixture)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / "configs" / f"{recipe}.yaml"), "--train", "-q",
         f"system.guidance.0.prior.model={model}", "system.guidance.0.prior.resolution=null", *extra, *SMALL],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / recipe).iterdir()
    for rel in ["ckpts/last.ckpt", "renders/val/main/step000002.png", "renders/test/orbit.mp4", "metrics.csv"]:
        assert (run / rel).is_file(), rel
    assert "train/loss_sds" in (run / "metrics.csv").read_text().splitlines()[0]
