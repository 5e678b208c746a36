"""threedgen.toy.run_measure.run_jobs, the loop the edit and motion benches share: each job trains once,
its row is recorded as soon as it is measured, and a rerun skips recorded jobs."""

import json

from test_cli import TINY

from threedgen.toy.run_measure import run_jobs


def test_jobs_run_once_and_rows_are_recorded(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY.replace("max_steps: 6", "max_steps: 2"))
    seen = []

    def measure(system, job):
        seen.append(job["prompt"])
        return {"params": sum(p.numel() for p in system.representation.parameters()), "tag": job["tag"]}

    jobs = [{"prompt": "a red sphere", "seed": 0, "tag": "a"}, {"prompt": "a blue cube", "seed": 1, "tag": "b"}]
    rows = run_jobs("t", jobs, recipe, tmp_path / "out", ["trainer.export_at_end=false"], measure)
    assert seen == ["a red sphere", "a blue cube"]
    assert sorted(r["tag"] for r in rows) == ["a", "b"] and all(r["params"] > 0 and r["wall_s"] > 0 for r in rows)
    files = sorted((tmp_path / "out" / "rows").glob("*.json"))
    assert [f.name for f in files] == ["t__a_blue_cube__s1.json", "t__a_red_sphere__s0.json"]
    assert json.loads(files[1].read_text())["seed"] == 0
    again = run_jobs("t", jobs, recipe, tmp_path / "out", ["trainer.export_at_end=false"], measure)
    assert seen == ["a red sphere", "a blue cube"] and len(again) == 2  # nothing trained twice
