"""threedgen.toy.drift: an objective's expected update on the toy world's exact renders (docs/objectives.md,
"CDS's colour"). With guidance off (CFG 1) CDS leaves a correct object nearly in place; at the recipe's CFG
it pushes it harder than SDS does at the same scale; the toy recipe's CFG 3 keeps the update SDS-sized."""

from pathlib import Path

import pytest

from threedgen.toy.drift import drift, main

CDS = Path("configs/toy/cds-nerf.yaml")


def test_cds_update_on_the_world_grows_with_guidance_and_the_recipe_keeps_it_sds_sized():
    plain = drift(CDS, "a yellow cone", [300], draws=4, overrides=("system.guidance.0.guidance_scale=1.0",))[0]
    sds_scale = drift(CDS, "a yellow cone", [300], draws=4, overrides=("system.guidance.0.guidance_scale=7.5",))[0]
    recipe = drift(CDS, "a yellow cone", [300], draws=4)[0]
    sds = drift(Path("configs/toy/sds-nerf.yaml"), "a yellow cone", [300], draws=4)[0]
    assert sds_scale["size"] > 4 * plain["size"] and sds_scale["size"] > 1.5 * sds["size"]
    assert sds_scale["rgb"][1] > 0.1  # towards saturated yellow: green up on a yellow object
    assert recipe["size"] < 0.5 * sds_scale["size"] and recipe["size"] < 1.5 * sds["size"]
    assert len(plain["rgb"]) == 3 and -1 <= plain["contrast_corr"] <= 1


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--recipes", str(CDS), "--prompt", "a red teapot"])
    assert e.value.code == 2 and "teapot" in capsys.readouterr().err
