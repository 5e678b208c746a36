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
