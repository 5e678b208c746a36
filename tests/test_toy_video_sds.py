"""Video SDS through the committed toy video prior (``assets/toy-video``, issue 21): its gradient on a still
cube already points the caption's way frame by frame, and the offline recipe ``configs/toy/4d-gaussian.yaml``,
shortened, moves the object the caption's way (docs/4d.md)."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from threedgen.config import build_module
from threedgen.data.cameras import clip_times, make_cameras, still_cameras
from threedgen.prompts.processor import PromptProcessor
from threedgen.toy import world as W
from threedgen.toy.evaluate_video import classify_motion
from threedgen.toy.motion_bench import alpha_centroids
from threedgen.toy.render import render_scene
from threedgen.toy.video_dataset import frame_captions, moved_cameras

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "toy" / "4d-gaussian.yaml"


def _still_cube(guidance, shift_x: float):
    """The toy world's red cube, not moving, from the front at 8 times, moved by ``shift_x`` along world x;
    in the prior's space ``[1,C,8,h,w]`` (``video_sds.clips``)."""
    cams = moved_cameras(make_cameras(torch.full((8,), 10.0), torch.zeros(8), 2.0, 52.0, 32, 32),
                         torch.tensor([[shift_x, 0.0, 0.0]]).expand(8, 3))
    return guidance.clips(render_scene([W.parse_prompt("a red cube")] * 8, cams, ssaa=2)["rgb"]), cams


def test_video_sds_gradient_on_a_still_cube_points_the_caption_way():
    """Frame by frame, -g . dI/dx (the pull along world x that video SDS, as the recipe configures it, puts on a
    still centred cube) is positive at the clip's start and negative at its end for "moving left" (the clip
    starts right of centre and ends left of it, video_dataset.offsets), and the other way round for "moving right"."""
    torch.manual_seed(0)
    g = build_module("guidance", {"name": "video_sds", "prior": {"model": str(ROOT / "assets" / "toy-video"), "device": "cpu"},
                                  "frames": 8, "view_dependent": False, "frame_prompts": frame_captions("{prompt}"),
                                  "frame_noise_share": 0.9, "guidance_scale": 7.5, "weighting": "sds"})
    with torch.no_grad():
        (z, cams), d = _still_cube(g, 0.0), 0.05
        dz = (_still_cube(g, d)[0] - _still_cube(g, -d)[0]) / (2 * d)
    level = torch.tensor([g.prior.levels.at(0.5)])
    for motion, sign in (("moving left", 1.0), ("moving right", -1.0)):
        prompts = PromptProcessor(PromptProcessor.Config(prompt=f"a red cube {motion}", view_dependent=False)).bundle(g.prior)
        pull = -sum((g.clip_gradient(z, level, prompts, cams[:1]) * dz).sum((0, 1, 3, 4)) for _ in range(6))
        assert sign * pull[:3].mean() > 0 > sign * pull[-3:].mean(), (motion, pull)


def test_toy_video_sds_recipe_moves_the_cube_the_caption_way(tmp_path):
    """The offline video-SDS recipe, shortened: seen from the front the cube travels left, and the test renders
    include the front-view strip."""
    args = ["--config", str(RECIPE), "--train", "-q", f"output_dir={tmp_path}/out",
            "system.prompt=a red cube moving left", "stages.0.steps=120", "stages.1.steps=60", "system.representation.num_points=500",
            "trainer.val_every=0", "trainer.ckpt_every=100", "trainer.test_views=4", "trainer.test_resolution=32",
            "export.formats=[ply]"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (tmp_path / "out" / "toy-4d-gaussian").iterdir()
    assert (run / "renders" / "test" / "time_front.png").is_file()
    from threedgen.toy.run_measure import White, load_run

    system = load_run(run, RECIPE, args[4:])
    with torch.no_grad():
        out = system.renderer(system.representation, still_cameras(system.camera_cfg, clip_times(8), 32), White())
    c = alpha_centroids(out.alpha)
    assert classify_motion(c) == "left", c
