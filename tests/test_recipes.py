"""The shipped recipes validate (tests/test_recipe_smoke.py runs every one of them)."""

from pathlib import Path

import pytest

from threedgen.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT)) for p in RECIPES])
def test_recipe_validates(path):
    cfg, _ = load_config(path)
    assert cfg.trainer.max_steps > 0
