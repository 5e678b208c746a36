"""ToyBench runs in resumable shards: each finished job is recorded as it ends, a rerun skips it,
``--merge`` builds the tables from every shard's rows, and bad arguments get one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from threedgen.toy.bench import job_key, main, parse_shard, variant_name

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "configs" / "toy" / "sds-nerf.yaml")
TINY = ["trainer.max_steps=2", "trainer.val_every=0", "trainer.test_views=2", "trainer.test_resolution=16",
        "data.width=16", "data.height=16"]
NAME = variant_name("toy-sds-nerf", TINY)  # rows made with overrides are that variant's, not the recipe's own


@pytest.mark.slow
def test_shards_record_skip_and_merge(tmp_path, capsys, toy_prior_present):
    args = ["--recipes", RECIPE, "--prompts", "a red cube", "a blue sphere", "--seeds", "0", "--out", str(tmp_path), *TINY]
    assert main([*args, "--shard", "1/2"]) == 0
    rows = sorted((tmp_path / "rows").glob("*.json"))
    assert NAME.startswith("toy-sds-nerf+trainer.max_steps=2+")
    assert [r.name for r in rows] == [f"{job_key(NAME, 'a red cube', 0)}.json"]
    assert main([*args, "--shard", "2/2"]) == 0
    runs_before = sorted((tmp_path / "runs").rglob("config.yaml"))
    capsys.readouterr()
    assert main([*args, "--shard", "1/2"]) == 0  # a rerun: nothing left to do
    assert "1 already done, 0 to run" in capsys.readouterr().out
    assert sorted((tmp_path / "runs").rglob("config.yaml")) == runs_before
    (tmp_path / "bench.md").unlink()
    assert main(["--merge", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "bench.md").read_text()
    assert "a red cube" in md and "a blue sphere" in md and (tmp_path / "grid.png").is_file()
    row = json.loads((tmp_path / "rows" / f"{job_key(NAME, 'a blue sphere', 0)}.json").read_text())
    assert 0.0 <= row["iou"] <= 1.0 and row["seed"] == 0 and row["recipe"] == NAME and "particle_diversity" not in row
    assert row["recipe_file"] == "configs/toy/sds-nerf.yaml" and row["overrides"] == TINY
    # each seed trains in its own folder: shards running one prompt at different seeds at once cannot
    # take each other's run for their own (they once could: the newest folder of the prompt was taken)
    assert Path(row["run"]).parents[1] == tmp_path / "runs" / "seed0", row["run"]

    # a row made by other weights is stale: merge leaves it out and its shard runs it again
    stale = tmp_path / "rows" / f"{job_key(NAME, 'a red cube', 0)}.json"
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "weights_sha": "0" * 12}))
    capsys.readouterr()
    assert main(["--merge", "--out", str(tmp_path)]) == 0
    assert "left out 1 stale rows" in capsys.readouterr().out
    assert "a red cube" not in (tmp_path / "bench.md").read_text().split("\n\n")[0]
    assert main([*args, "--shard", "1/2"]) == 0
    assert "0 already done, 1 to run" in capsys.readouterr().out
    assert json.loads(stale.read_text())["weights_sha"] != "0" * 12


@pytest.mark.slow
def test_a_run_of_two_particles_records_how_far_apart_they_are(tmp_path, toy_prior_present):
    """``system.particles=2`` rows carry ``particle_diversity`` (ProlificDreamer's particle claim) under their own label."""
    args = ["--recipes", RECIPE, "--prompts", "a red cube", "--seeds", "0", "--out", str(tmp_path), *TINY, "system.particles=2"]
    assert main(args) == 0
    name = variant_name("toy-sds-nerf", [*TINY, "system.particles=2"])
    row = json.loads((tmp_path / "rows" / f"{job_key(name, 'a red cube', 0)}.json").read_text())
    assert row["recipe"] == name and 0.0 < row["particle_diversity"] < 1.0  # two randomly started scenes differ a little


def test_fingerprint_follows_the_recipe_and_weights_not_the_prompt_or_seed(tmp_path):
    from threedgen.toy.provenance import fingerprint

    base = fingerprint(Path(RECIPE), TINY, None, ROOT)
    assert fingerprint(Path(RECIPE), [*TINY, "system.prompt=a blue sphere", "seed=3"], None, ROOT) == base
    changed = fingerprint(Path(RECIPE), [*TINY, "system.guidance.0.guidance_scale=5"], None, ROOT)
    assert changed["config_sha"] != base["config_sha"] and changed["weights_sha"] == base["weights_sha"]
    fake = tmp_path / "prior"
    (fake / "unet").mkdir(parents=True)
    (fake / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"one")
    a = fingerprint(Path(RECIPE), [*TINY, f"system.guidance.0.prior.model={fake}"], None, ROOT)
    (fake / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"two")
    from threedgen.toy import provenance

    provenance._folder_sha.cache_clear()
    b = fingerprint(Path(RECIPE), [*TINY, f"system.guidance.0.prior.model={fake}"], None, ROOT)
    assert a["weights_sha"] != b["weights_sha"] and a["config_sha"] == b["config_sha"]


def test_export_settings_leave_rows_current_and_old_rows_still_count():
    from threedgen.toy.provenance import fingerprint, is_current

    base = fingerprint(Path(RECIPE), TINY, None, ROOT)
    exported = fingerprint(Path(RECIPE), [*TINY, "export.refine_steps=0"], None, ROOT)
    assert exported["config_sha"] == base["config_sha"] != exported["config_sha_with_export"]  # scores read renders, not exports
    old_row = {"config_sha": base["config_sha_with_export"], "weights_sha": base["weights_sha"]}  # hashed with its export section
    assert is_current(old_row, base) and not is_current(old_row, exported)
    assert not is_current({**old_row, "weights_sha": "0" * 12}, base)
    trained = fingerprint(Path(RECIPE), [*TINY, "trainer.max_steps=7"], None, ROOT)
    assert not is_current({"config_sha": base["config_sha"], "weights_sha": base["weights_sha"]}, trained)


def test_bad_arguments_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(ValueError, match="1 <= i <= n"):
        parse_shard("3/2")
    assert main(["--recipes", RECIPE, "--shard", "two", "--out", str(tmp_path)]) == 2
    assert "--shard takes i/n" in capsys.readouterr().err
    assert main(["--recipes", "configs/toy/nope.yaml", "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--recipes", RECIPE, "--prompts", "a red teapot", "--out", str(tmp_path)]) == 2


def test_a_variant_with_many_overrides_gets_a_short_distinct_row_name():
    """Row files are named by recipe label, prompt and seed; five schedule overrides on a long prompt made a name
    over the 255 bytes a file name may have (the shard crashed writing its first row)."""
    over = ["trainer.max_steps=500", "system.guidance.0.max_step_percent=[0,0.98,0.5,500]",
            "system.representation.lr_means=[0,0.002,0.0002,500]", "system.representation.densify.refine_stop_iter=400"]
    names = {job_key(variant_name("toy-sds-gaussian-camera", over[:k]), "an orange sphere with a white dot", s)
             for k in range(len(over) + 1) for s in (0, 1)}
    assert len(names) == 2 * (len(over) + 1)  # every variant and seed its own row
    assert all(len(n.encode()) <= 160 for n in names)
    assert job_key("toy-sds-nerf", "a red cube", 0) == "toy-sds-nerf__a_red_cube__s0"  # short names are unchanged
