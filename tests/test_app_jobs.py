"""The web app's run queue (threedgen/app/jobs.py) and recipe list, without a browser: bad requests are
refused with one line before anything runs; a real toy run is started, stopped (Ctrl-C, checkpoint),
resumed from its checkpoint and finished with its exports, and its progress.json says how far it is."""

import json
import time

import pytest

from threedgen.app.jobs import RunQueue, check_request
from threedgen.app.recipes import description, list_recipes, missing_models

# small exports so the run finishes in about a minute on one CPU thread
FAST = ("trainer.val_every=10", "trainer.test_views=4", "trainer.test_resolution=64", "export.views=8",
        "export.view_resolution=64", "export.refine_steps=0", "export.texture_fit_steps=5", "export.texture_size=256",
        "export.resolution=48", "export.formats=[glb,splat,viewer]")


def test_recipes_list_toy_ones_first_with_descriptions_and_missing_models():
    recipes = list_recipes()
    names = [r.rel for r in recipes]
    assert names[0].startswith("configs/toy/") and "configs/toy/sds-gaussian.yaml" in names
    assert not any("edit" in n for n in names)  # scene edits need a captured scene, not a prompt
    toy = [r for r in recipes if r.toy]
    assert toy and all(r.available and r.description for r in toy)
    sd = next(r for r in recipes if r.rel == "configs/dreamfusion-sd.yaml")
    # no test machine has Stable Diffusion in its cache: the picker says what is missing
    assert not sd.available and "stabilityai/stable-diffusion-2-1-base" in sd.missing[0] and "missing" in sd.label
    assert missing_models(["assets/toy-prior"]) == []


def test_description_is_the_first_sentence_of_the_opening_comment(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("# ESD (Wang et al. 2024): the VSD recipe with CFG on the camera. More text\n# here.\nname: x\n")
    assert description(p) == "ESD (Wang et al. 2024): the VSD recipe with CFG on the camera"


@pytest.mark.parametrize("recipe, prompt, seed, steps, says", [
    ("configs/toy/sds-gaussian.yaml", "   ", 0, None, "prompt is empty"),
    ("configs/toy/sds-gaussian.yaml", "a red dragon", 0, None, "dragon"),
    ("configs/toy/sds-gaussian.yaml", "a red cube", 0, 0, "steps must be"),
    ("configs/toy/sds-gaussian.yaml", "a red cube", -1, None, "seed must be"),
    ("configs/toy/nerf-to-gaussian.yaml", "a red cube", 0, 50, "runs in stages"),
    ("configs/dreamfusion-sd.yaml", "a corgi", 0, None, "needs a model this machine does not have"),
    ("configs/nope.yaml", "a red cube", 0, None, "no recipe"),
])
def test_bad_requests_are_refused_with_one_line(recipe, prompt, seed, steps, says, tmp_path):
    with pytest.raises(ValueError, match=says) as e:
        check_request(recipe, prompt, seed, steps)
    assert "\n" not in str(e.value)
    queue = RunQueue(tmp_path)
    with pytest.raises(ValueError):
        queue.submit(recipe, prompt, seed, steps)
    assert queue.jobs == [] and list(tmp_path.iterdir()) == []  # nothing queued, nothing written


@pytest.mark.slow
def test_a_run_is_stopped_resumed_and_finished_with_its_exports(tmp_path):
    queue = RunQueue(tmp_path, extra_args=FAST + ("threads=1",))
    job = queue.submit("configs/toy/sds-gaussian.yaml", "a red cube", 3, 60)
    deadline = time.time() + 240
    while time.time() < deadline and job.progress().get("step", 0) < 12:
        assert job.state in ("queued", "running"), job.log[-5:]
        time.sleep(0.2)
    p = job.progress()
    assert p["total"] == 60 and p["stage"] and p["it_s"] and p["run_eta_s"] is not None
    queue.stop(job.id)
    assert queue.wait(job.id, 120).state == "stopped", job.log[-5:]
    ckpt = job.run_dir / "ckpts"
    assert any(ckpt.rglob("*.ckpt")), "a stopped run leaves its checkpoint"
    stopped_at = json.loads((job.run_dir / "progress.json").read_text())["step"]
    assert 12 <= stopped_at < 60

    again = queue.resume(job.id)
    assert again.run_dir == job.run_dir
    done = queue.wait(again.id, 600)
    assert done.state == "done", done.log[-10:]
    names = {p.name for p in done.exports()}
    assert {"model.glb", "gaussians.splat"} <= names
    assert json.loads((job.run_dir / "progress.json").read_text())["step"] == 60
    assert done.latest_validation() is not None
    with pytest.raises(ValueError, match="no checkpoint to resume"):
        queue.resume(again.id)  # finished: nothing to resume


def test_a_run_that_fails_shows_its_error_line_and_the_queue_goes_on(tmp_path):
    # the request is fine; the run itself fails (an override the app adds to every run is wrong)
    queue = RunQueue(tmp_path, extra_args=("export.formats=[glb,bogus]",))
    first = queue.submit("configs/toy/sds-nerf.yaml", "a red cube", 0, 5)
    second = queue.submit("configs/toy/sds-nerf.yaml", "a blue sphere", 0, 5)
    for job in (first, second):
        done = queue.wait(job.id, 120)
        assert done.state == "failed", done.log[-5:]
        assert done.error.startswith("error:") and "bogus" in done.error
