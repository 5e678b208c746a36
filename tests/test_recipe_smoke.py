"""Every recipe under configs/ runs: 2 steps per stage through ``launch.py``'s entry point, with the
real models swapped for tiny stand-ins of the same kind (tests/tiny_models.py) and the toy recipes on
the committed toy prior. What the recipe says is kept (representations, renderers, objectives,
stages, regularisers); only sizes shrink: 16x16 renders, 2 views, a 16-cell tet grid, the stand-ins'
own input resolution. A new recipe is picked up without editing this file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs").rglob("*.yaml"))
STAND_INS = {  # hub id in a recipe -> the fixture of a tiny model of the same kind
    "stabilityai/stable-diffusion-2-1-base": "tiny_sd_path",
    "stabilityai/stable-diffusion-2-1": "tiny_sd_v_path",
    "runwayml/stable-diffusion-v1-5": "tiny_sd_path",
    "DeepFloyd/IF-I-XL-v1.0": "tiny_if_path",
    "stabilityai/stable-diffusion-3.5-medium": "tiny_sd3_path",
    "stable-diffusion-v1-5/stable-diffusion-inpainting": "tiny_sd_inpaint_path",
    "lllyasviel/control_v11f1p_sd15_depth": "tiny_controlnet_path",
    "Qwen/Qwen2.5-VL-7B-Instruct": "tiny_qwen_vl_path",
    "cerspense/zeroscope_v2_576w": "tiny_video_path",
}
SMALL = [
    "trainer.max_steps=2", "trainer.val_every=0", "trainer.ckpt_every=1", "trainer.test_views=2",
    "trainer.test_resolution=16", "trainer.export_at_end=false", "data.width=16", "data.height=16",
]


def shrink(text: str, request) -> str:
    """The recipe with hub ids replaced by tiny stand-ins at their native resolution and small grids."""
    for hub, fixture in STAND_INS.items():
        text = re.sub(rf"(model|controlnet): {re.escape(hub)}([,}}\s])",
                      lambda m, f=fixture: f"{m.group(1)}: {request.getfixturevalue(f)}{m.group(2)}", text)
    text = re.sub(r"(prior: \{[^}]*)resolution: \d+", r"\1resolution: null", text)
    text = re.sub(r"variant: fp16", "variant: null", text)
    text = re.sub(r"\bscene: scene\.ply", "scene: toy:pair", text)  # a scene edit on a toy scene built offline
    text = re.sub(r"tet_resolution: \d+", "tet_resolution: 16", text)
    text = re.sub(r"\b(width|height): \d+", r"\1: 16", text)  # stage renders (data.width / height)
    if "name: dmtet" not in text:
        return re.sub(r"convert_resolution: \d+", "convert_resolution: 24", text)
    # a DMTet made from another representation's renders: fewer, smaller views
    return re.sub(r"(\n\s*)convert_resolution: \d+", r"\1convert_resolution: 24\1convert_views: 8\1convert_view_resolution: 32"
                  r"\1convert_albedo_steps: 4", text)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=[str(p.relative_to(ROOT / "configs")) for p in RECIPES])
def test_recipe_runs_two_steps_per_stage(recipe, request, tmp_path, monkeypatch):
    from threedgen.cli import main
    from threedgen.config import load_config

    for f in RECIPES:  # recipes inherit from each other: shrink the whole tree
        text = shrink(f.read_text(), request)
        assert not re.search(r"(model|controlnet): [A-Za-z][\w.-]*/[\w.-]+\s", text.replace("assets/", "")), \
            f"{f.name}: a hub model without a tiny stand-in"
        out = tmp_path / f.relative_to(ROOT)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    path = tmp_path / recipe.relative_to(ROOT)
    cfg, raw = load_config(path)
    stages = [f"stages.{i}.steps=2" for i in range(len(raw.get("stages") or []))]
    monkeypatch.chdir(tmp_path)
    assert main(["--config", str(path), "--train", "-q", *SMALL, *stages]) == 0
    (run,) = (tmp_path / "outputs" / cfg.name).iterdir()
    assert (run / "renders" / "test" / "orbit.mp4").is_file()
    assert sorted(run.rglob("last.ckpt")), "no checkpoint written"
    headers = " ".join(f.read_text().splitlines()[0] for f in run.rglob("metrics.csv"))
    stage_guidance = [g for st in raw.get("stages") or [] for g in (st.get("system") or {}).get("guidance", [])]
    for g in raw["system"].get("guidance", []) + stage_guidance:
        if g["name"] != "photometric":
            key = "reward" if g["name"] in ("reward", "vlm_reward") else g["name"]
            assert f"loss_{key}" in headers, (g["name"], headers)
