"""threedgen.toy.stage_scores: every stage of a finished multi-stage run scored on ToyBench's orbit."""

from test_cli import TINY, launch

from threedgen.toy.stage_scores import stage_scores


def test_each_stage_of_a_run_gets_its_scores(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY + "stages:\n  - {name: coarse, steps: 3}\n  - {name: fine, steps: 2}\n")
    r = launch("--config", str(recipe), "--train", "-q", "trainer.export_at_end=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = (tmp_path / "outputs" / "tiny").iterdir()
    rows = stage_scores(run, recipe, "a red sphere")
    assert [row["stage"] for row in rows] == ["coarse", "fine"]
    for row in rows:
        assert 0.0 <= row["iou"] <= 1.0 and 0.0 <= row["mean_alpha"] <= 1.0 and row["colour_err"] >= 0.0
    (run / "ckpts" / "fine.ckpt").unlink()
    assert stage_scores(run, recipe, "a red sphere")[1] == {"stage": "fine", "missing": str(run / "ckpts" / "fine.ckpt")}


def test_a_multi_particle_run_gets_a_row_per_particle_and_their_diversity(tmp_path):
    import torch

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    r = launch("--config", str(recipe), "--train", "-q", "trainer.export_at_end=false", "system.particles=2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = (tmp_path / "outputs" / "tiny").iterdir()
    rows = stage_scores(run, recipe, "a red sphere", ("system.particles=2",))
    assert [(row["stage"], row.get("particle")) for row in rows[:2]] == [("main", 0), ("main", 1)]
    div = rows[2]["particle_diversity"]
    assert div > 0.0, "two independently initialised scenes render differently"
    # the same scene in both particles: no diversity
    ckpt_path = next((run / "ckpts").glob("*.ckpt"))
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    sd = ckpt["state_dict"]
    for k in [k for k in sd if k.startswith("representation.")]:
        sd["extra_particles.0." + k] = sd[k].clone()
    torch.save(ckpt, ckpt_path)
    same = stage_scores(run, recipe, "a red sphere", ("system.particles=2",))
    assert same[2]["particle_diversity"] < 1e-6 and same[0]["iou"] == same[1]["iou"]
