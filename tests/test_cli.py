"""launch.py end to end: outputs, bad input (exit 2, nothing written), Ctrl-C and resume, stages."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

TINY = """
name: tiny
seed: 0
trainer: {max_steps: 6, val_every: 3, log_every: 2, ckpt_every: 3, test_views: 4, test_resolution: 24}
data: {batch_size: 2, width: 16, height: 16}
export: {resolution: 32, texture_size: 128, views: 16, view_resolution: 64, refine_steps: 20, texture_fit_steps: 10}
system:
  prompt: a red sphere
  representation: {name: nerf, grid: {n_levels: 4, log2_hashmap_size: 12, base_resolution: 8, max_resolution: 32}, mlp_width: 16}
  renderer: {name: volume, num_samples_per_ray: 16, occupancy_grid: false}
  background: {name: solid}
  guidance:
    - {name: photometric, target: a red sphere}
  regularisers:
    - {name: opacity_sparsity, weight: 0.0}
  val_views: 2
  val_resolution: 16
"""


def launch(*args, cwd, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture()
def recipe(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    return p


def _tree(path: Path) -> set:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--config", "missing.yaml", "--train"], "does not exist"),
        (["--config", "tiny.yaml", "trainer.max_step=3"], "trainer.max_step: unknown key; did you mean 'max_steps'"),
        (["--config", "tiny.yaml", "trainer.max_steps=lots"], "trainer.max_steps: expected int, got 'lots'"),
        (["--config", "tiny.yaml", "system.guidance.0.name=sdss"], "unknown guidance 'sdss'"),
        (["--config", "tiny.yaml", "system.representation.name=nerff"], "Did you mean 'nerf'"),
        (["--config", "tiny.yaml", "output_dir=afile/sub"], "not writable"),
        (["--config", "tiny.yaml", "--resume", "nope.ckpt"], "does not exist"),
        (["--config", "tiny.yaml", "--resume", "afile"], "could not be read"),
        (["--config", "tiny.yaml", "--test"], "need a trained run"),
        (["--train"], "--config is required"),
        (["--config", "tiny.yaml", "export.formats=[fbx]"], "export.formats.0: expected one of 'glb', 'obj'"),
        (["--config", "tiny.yaml", "system.guidance=[{name: sds, prior: {model: no/such/model}}]"], "no/such/model"),
        (["--config", "tiny.yaml", "trainer.max_steps=-5"], "trainer.max_steps: expected an int in [1, "),
        (["--config", "tiny.yaml", "system.prompt="], "system.prompt is empty"),
        (["--config", "tiny.yaml", "data.batch_size=0"], "data.batch_size: expected a number in [1, 1024]"),
        (["--config", "tiny.yaml", "data.fovy_range=[0, 50]"], "data.fovy_range: expected values in [0.001, 179.999]"),
        (["--config", "tiny.yaml", "system.guidance=[{name: sds, guidance_scale: -3}]"], "guidance_scale: expected a number >= 0"),
        (["--config", "tiny.yaml", "system.guidance=[{name: sds}]", "system.prompt=a red dragon"],
         "system.prompt 'a red dragon': 'dragon' not in the vocabulary of assets/toy-prior"),
        (["--config", "tiny.yaml", "--gpu", "99"], "--gpu 99: "),  # no CUDA at all, or no GPU 99
        (["--config", "tiny.yaml", "--gpu", "0,x"], "expected comma-separated device numbers"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, recipe, args, needle):
    (tmp_path / "afile").write_text("not a checkpoint")
    before = _tree(tmp_path)
    r = launch(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle in lines[0]
    assert _tree(tmp_path) == before


def test_train_writes_everything_and_test_export_resume(tmp_path, recipe):
    r = launch("--config", str(recipe), "--train", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "tiny").iterdir()
    assert run.name.startswith("a_red_sphere@")
    for rel in ["config.yaml", "ckpts/last.ckpt", "metrics.csv", "renders/test/orbit.mp4", "renders/test/frame000.png", "export/model.glb", "export/model.obj"]:
        assert (run / rel).is_file(), rel
    assert sorted(p.name for p in (run / "renders" / "val" / "main").iterdir()) == ["step000003.png", "step000006.png"]
    header = (run / "metrics.csv").read_text().splitlines()[0]
    for key in ("train/loss_rgb", "train/w_rgb", "lr/", "grad_norm/"):
        assert key in header, header
    assert not list(run.rglob("*.tmp"))
    import trimesh

    mesh = trimesh.load(run / "export" / "model.glb", force="mesh")  # a real glTF loader reads it back
    # a closed textured mesh; the bounded decimation keeps only the faces a 6-step blob needs (172 measured)
    from threedgen.export.topology import mesh_stats

    assert len(mesh.faces) > 50 and mesh.visual.kind == "texture" and mesh_stats(mesh.vertices, mesh.faces)["watertight"]
    ck = torch.load(run / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ck["global_step"] == 6
    assert not any(k.startswith("guidances.0.prior") for k in ck["state_dict"])
    # --test re-renders from the checkpoint; --export re-exports
    # re-export with other settings, the config taken from the run folder, without retraining
    os.remove(run / "export" / "model.glb")
    r = launch("--export", "--resume", str(run / "ckpts" / "last.ckpt"), "export.target_faces=300", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "export: decimation" in r.stderr
    assert len(trimesh.load(run / "export" / "model.glb", force="mesh").faces) <= 300
    # resume auto continues the same run to a larger step count
    r = launch("--config", str(recipe), "--train", "-q", "--resume", "auto", "trainer.max_steps=9", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.load(run / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 9


def test_deterministic_cpu_runs_repeat_bit_for_bit(tmp_path, recipe):
    common = ["--config", str(recipe), "--train", "-q", "deterministic=true", "trainer.export_at_end=false", "trainer.val_every=0"]
    sds = []
    for out in ("a", "b"):
        r = launch(*common, f"output_dir={out}", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        (run,) = (tmp_path / out / "tiny").iterdir()
        sds.append(torch.load(run / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"])
    assert sds[0].keys() == sds[1].keys()
    for k in sds[0]:
        assert torch.equal(sds[0][k], sds[1][k]), k


def test_ctrl_c_leaves_a_resumable_checkpoint(tmp_path, recipe):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, str(ROOT / "launch.py"), "--config", str(recipe), "--train", "-q",
            "trainer.max_steps=100000", "trainer.ckpt_every=100000", "trainer.val_every=0"]
    # SIGINT back to its default in the child, as in a terminal: a test run started in the background by a
    # non-interactive shell inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _ctrl_c_and_resume(proc, tmp_path, recipe)
    finally:
        if proc.poll() is None:  # never leave a 100000-step training behind a failed assertion
            proc.kill()
            proc.wait()


def _ctrl_c_and_resume(proc, tmp_path, recipe):
    deadline = time.time() + 120
    metrics = None
    while time.time() < deadline:
        found = list((tmp_path / "outputs").rglob("metrics.csv")) if (tmp_path / "outputs").exists() else []
        if found and len(found[0].read_text().splitlines()) >= 3:
            metrics = found[0]
            break
        time.sleep(0.5)
    assert metrics is not None, "training did not start"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "--resume" in err
    ckpt = metrics.parent / "ckpts" / "last.ckpt"
    step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert step >= 3
    r = launch("--config", str(recipe), "--train", "-q", "--resume", str(ckpt), f"trainer.max_steps={step + 2}",
               "trainer.export_at_end=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == step + 2


def test_stages_run_in_one_launch_and_chain(tmp_path, recipe):
    text = recipe.read_text() + """
stages:
  - {name: coarse, steps: 3}
  - {name: fine, steps: 3, system: {renderer: {num_samples_per_ray: 24}}, data: {width: 20, height: 20}}
"""
    recipe.write_text(text)
    r = launch("--config", str(recipe), "--train", "-q", "trainer.export_at_end=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = (tmp_path / "outputs" / "tiny").iterdir()
    coarse = torch.load(run / "ckpts" / "coarse.ckpt", map_location="cpu", weights_only=False)
    fine = torch.load(run / "ckpts" / "fine.ckpt", map_location="cpu", weights_only=False)
    assert coarse["threedgen_stage"] == "coarse" and fine["threedgen_stage"] == "fine"
    stages = {line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]}
    assert stages == {"coarse", "fine"}
    # the fine stage started from the coarse result, not from scratch
    k = next(k for k in coarse["state_dict"] if k.startswith("representation."))
    from threedgen.config import load_config
    from threedgen.systems.runner import build_system, plan_stages

    cfg, raw = load_config(recipe)
    fresh = build_system(plan_stages(cfg, raw, run)[1].cfg).state_dict()[k]
    assert not torch.equal(fine["state_dict"][k], fresh)
