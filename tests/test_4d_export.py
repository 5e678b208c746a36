"""A text-to-4D launch end to end (issue 21): configs/4dfy-zeroscope.yaml on tiny stand-ins (SD layout
for the static stage and the per-frame SDS, zeroscope layout for video SDS) writes an orbit through
time, a frame sequence with its manifest, and an animated GLB (morph targets + animation) that the
Khronos validator accepts."""

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from threedgen.edit.scene_ply import read_splat_ply
from export_fixtures import read_glb, validate_glb

ROOT = Path(__file__).resolve().parents[1]


def test_4d_recipe_exports_frames_and_an_animated_glb(tmp_path, tiny_sd_path, tiny_video_path):
    args = [
        "--config", str(ROOT / "configs" / "4dfy-zeroscope.yaml"), "--train", "-q", f"output_dir={tmp_path}/out",
        f"system.guidance.0.prior.model={tiny_sd_path}", "system.guidance.0.prior.resolution=null",
        "stages.0.steps=3", "stages.1.steps=3", "data.width=16", "data.height=16", "system.representation.num_points=300",
        "stages.1.data.width=16", "stages.1.data.height=16", "stages.1.data.frames=4", "stages.1.data.batch_size=4",
        f"stages.1.system.guidance.0.prior.model={tiny_video_path}", "stages.1.system.guidance.0.prior.resolution=null",
        "stages.1.system.guidance.0.frames=4", f"stages.1.system.guidance.1.prior.model={tiny_sd_path}",
        "stages.1.system.guidance.1.prior.resolution=null", "stages.1.system.representation.lr_deformation=0.05",
        "trainer.val_every=0", "trainer.ckpt_every=3", "trainer.test_views=4", "trainer.test_resolution=32",
        "export.frames=4", "export.fps=4", "export.views=12", "export.view_resolution=48", "export.resolution=32",
        "export.refine_steps=5", "export.texture_fit_steps=5", "export.texture_size=64",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (tmp_path / "out" / "4dfy-zeroscope").iterdir()
    test = run / "renders" / "test"
    assert (test / "orbit_time.mp4").stat().st_size > 0 and (test / "time_front.png").is_file()
    manifest = json.loads((run / "export" / "frames" / "manifest.json").read_text())
    assert manifest["frames"] == 4 and manifest["fps"] == 4 and manifest["times"] == [0, 0.333333, 0.666667, 1]
    frames = [read_splat_ply(run / "export" / "frames" / f"frame_{k:03d}.ply") for k in range(4)]
    assert len({len(f["means"]) for f in frames}) == 1  # one set of Gaussians, moved
    assert (frames[0]["means"] != frames[3]["means"]).any()  # the field moved them
    gltf, _ = read_glb(run / "export" / "model.glb")
    prim = gltf["meshes"][0]["primitives"][0]
    assert len(prim["targets"]) == 3 and gltf["meshes"][0]["weights"] == [0.0, 0.0, 0.0]
    (anim,) = gltf["animations"]
    assert anim["channels"][0]["target"]["path"] == "weights"
    assert gltf["accessors"][anim["samplers"][0]["input"]]["max"] == [0.75]  # 4 frames at 4 fps
    assert manifest["glb"]["morph_targets"] == 3
    page = (run / "export" / "viewer.html").read_text()  # the page embeds the animated GLB (tests/test_viewer.py plays one)
    assert base64.b64encode((run / "export" / "model.glb").read_bytes()).decode() in page
    issues = validate_glb(run / "export" / "model.glb")
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"][:5]
