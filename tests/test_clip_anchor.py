"""Video-anchored 4D (issue 21, item 6): reading clips from disk, the clip anchor's three sources (a file,
a text-to-video model, the toy world) and its loss, and a short anchored run that moves the object the
clip's way (threedgen/guidance/clip_anchor.py, threedgen/data/clip_files.py)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from threedgen.data.cameras import CameraConfig
from threedgen.data.clip_files import pick_frames, read_clip
from threedgen.guidance.base import GuidanceInput
from threedgen.guidance.clip_anchor import ClipAnchorGuidance
from threedgen.guidance.model_folder import PriorConfig
from threedgen.toy.evaluate_video import classify_motion
from threedgen.toy.motion_bench import alpha_centroids

ROOT = Path(__file__).resolve().parents[1]


def square_clip(n=12, h=48, w=64, rgba=False):
    """``n`` frames of a dark square sliding right on white: uint8 ``[n,h,w,3|4]``."""
    frames = np.full((n, h, w, 4 if rgba else 3), 255, np.uint8)
    for k in range(n):
        x = 12 + 3 * k
        frames[k, 16:32, x : x + 12, :3] = (200, 30, 20)
        if rgba:
            frames[k, ..., 3] = 0
            frames[k, 16:32, x : x + 12, 3] = 255
    return frames


def write_frames(folder: Path, frames) -> Path:
    import imageio.v2 as iio

    folder.mkdir()
    for k, f in enumerate(frames):
        iio.imwrite(folder / f"frame_{k:03d}.png", f)
    return folder


@pytest.mark.parametrize("kind", ["folder", "gif", "rgba"])
def test_read_clip_picks_crops_and_masks(tmp_path, kind):
    import imageio.v2 as iio

    frames = square_clip(rgba=kind == "rgba")
    if kind == "gif":
        path = tmp_path / "clip.gif"
        iio.mimwrite(path, frames, duration=0.1)
    else:
        path = write_frames(tmp_path / "frames", frames)
    rgb, mask = read_clip(path, 4, 16, 16)
    assert rgb.shape == (4, 3, 16, 16) and mask.shape == (4, 1, 16, 16)
    assert 0 <= rgb.min() and rgb.max() <= 1
    c = alpha_centroids(mask)
    assert classify_motion(c) == "right"  # frames 0, 4, 7, 11 of a square moving right, centre-cropped to 48x48
    assert (rgb[:, :, mask[0, 0] < 0.5].mean() > 0.9) and rgb[0, 0][mask[0, 0] > 0.5].mean() > 0.6  # white around, red inside
    assert pick_frames(12, 4) == [0, 4, 7, 11]


def test_read_clip_bad_input_says_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_clip(tmp_path / "nope.mp4", 8, 16, 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        read_clip(tmp_path / "empty", 8, 16, 16)
    short = write_frames(tmp_path / "short", square_clip(n=3))
    with pytest.raises(ValueError, match="has 3 frames but the recipe needs 8"):
        read_clip(short, 8, 16, 16)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="expected a video"):
        read_clip(tmp_path / "notes.txt", 8, 16, 16)


def anchor(**kw):
    g = ClipAnchorGuidance(ClipAnchorGuidance.Config(**kw))
    g.check_render_size(32, 32)
    return g


@pytest.mark.parametrize("direction", ["left", "up"])
def test_toy_clip_moves_as_the_prompt_says(direction):
    g = anchor(source="toy", elevation=10, azimuth=20)
    cams = g.own_cameras(CameraConfig(eval_distance=1.8, eval_fovy=52.5))
    assert len(cams) == 8 and torch.allclose(cams.time, torch.linspace(0, 1, 8))
    rgb, mask = g.make_clip(f"a red cube moving {direction}", cams)
    assert rgb.shape == (8, 3, 32, 32) and mask.shape == (8, 1, 32, 32)
    assert classify_motion(alpha_centroids(mask)) == direction
    assert rgb[0][0][mask[0, 0] > 0.5].mean() > 2 * rgb[0][2][mask[0, 0] > 0.5].mean()  # red


def test_anchor_loss_is_zero_on_the_clip_and_pulls_towards_it():
    g = anchor(source="toy")
    cams = g.own_cameras(CameraConfig())
    rgb, mask = g.make_clip("a blue sphere moving right", cams)
    exact = g(GuidanceInput(rgb=rgb.clone(), cameras=cams, alpha=mask.clone()), "a blue sphere moving right", 0)
    assert float(exact["loss_clip_anchor"]) == 0 and float(exact["loss_clip_anchor_mask"]) == 0
    x = torch.full_like(rgb, 0.5, requires_grad=True)
    loss = g(GuidanceInput(rgb=x, cameras=cams, alpha=mask), "", 0)["loss_clip_anchor"]
    loss.backward()
    assert float(loss.detach()) > 0 and torch.allclose(-x.grad.sign()[rgb != 0.5], (rgb - 0.5).sign()[rgb != 0.5])
    first = anchor(source="toy", first_frame_only=True)
    one = first.own_cameras(CameraConfig())
    assert len(one) == 1 and one.time is None
    r1, _ = first.make_clip("a blue sphere moving right", one)
    out = first(GuidanceInput(rgb=r1[:1], cameras=one, alpha=None), "", 0)
    assert float(out["loss_clip_anchor"]) == 0 and "loss_clip_anchor_mask" not in out  # frame 0 alone


def test_toy_prompt_without_a_motion_is_refused():
    g = anchor(source="toy")
    with pytest.raises(ValueError, match="names no toy motion"):
        g.make_clip("a red cube", g.own_cameras(CameraConfig()))


def test_prior_source_samples_a_clip_from_a_video_model(tiny_video_path):
    from threedgen.prompts.processor import PromptProcessor

    def sampled():
        g = anchor(source="prior", prior=PriorConfig(model=str(tiny_video_path)), frames=4, sample_steps=2, sample_seed=3)
        bundle = PromptProcessor(PromptProcessor.Config(prompt="a corgi running", view_dependent=False, use_cache=False)).bundle(g.prior)
        return g.make_clip(bundle, g.own_cameras(CameraConfig()))

    (rgb, mask), (rgb2, _) = sampled(), sampled()
    assert rgb.shape == (4, 3, 32, 32) and mask.shape == (4, 1, 32, 32)
    assert torch.equal(rgb, rgb2)  # seeded: a resumed stage samples the same clip


def test_prior_source_reads_a_caption_per_frame_with_frame_prompts(tmp_path):
    """A prior trained on per-frame captions (a ``--frame-words`` toy video prior) samples the clip with them."""
    import tiny_models
    from threedgen.prompts.processor import PromptProcessor

    path = tiny_models.build_motion_video(tmp_path / "motion")
    templates = ["{prompt} frame zero", "{prompt} frame one", "{prompt} frame two", "{prompt} frame three"]
    g = anchor(source="prior", prior=PriorConfig(model=str(path)), frames=4, sample_steps=2, frame_prompts=templates)
    bundle = PromptProcessor(PromptProcessor.Config(prompt="a red cube moving left", view_dependent=False, use_cache=False)).bundle(g.prior)
    seen = []
    hook = g.prior.denoiser.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["encoder_hidden_states"]), with_kwargs=True)
    rgb, _ = g.make_clip(bundle, g.own_cameras(CameraConfig()))
    hook.remove()
    assert rgb.shape[0] == 4 and len(seen) >= 2
    want = g.prior.encode_text([t.format(prompt="a red cube moving left") for t in templates]).emb
    states = seen[0]  # CFG: the clip's 4 frame captions, then the negative per frame
    torch.testing.assert_close(states[:4], want)
    torch.testing.assert_close(states[4:], bundle.uncond.emb.expand(4, *states.shape[1:]))
    with pytest.raises(ValueError, match="4 templates"):
        anchor(source="prior", prior=PriorConfig(model=str(path)), frames=4, frame_prompts=templates[:2])
    # frame_noise_share 1: the clip's frames start from one noise (clip_noise.py), 0: each from its own
    for share in (1.0, 0.0):
        g = anchor(source="prior", prior=PriorConfig(model=str(path)), frames=4, sample_steps=2, frame_noise_share=share)
        seen.clear()
        hook = g.prior.denoiser.register_forward_pre_hook(lambda m, a, kw: seen.append(a[0] if a else kw["sample"]), with_kwargs=True)
        g.make_clip(bundle, g.own_cameras(CameraConfig()))
        hook.remove()
        x = seen[0]  # [2 (CFG), C, F, h, w]
        assert torch.equal(x[:, :, 0], x[:, :, 3]) == (share == 1.0)


def test_start_up_errors(tiny_sd_path, tmp_path):
    with pytest.raises(ValueError, match="set prior.model"):
        anchor(source="prior")
    with pytest.raises(ValueError, match="needs a text-to-video prior"):
        anchor(source="prior", prior=PriorConfig(model=str(tiny_sd_path)))
    with pytest.raises(ValueError, match="does not exist"):
        anchor(source=str(tmp_path / "missing.mp4"))


def test_anchored_run_moves_the_object_the_clip_way(tmp_path):
    """The toy anchored recipe, shortened: the static stage fits frame 0, the dynamic stage moves it left."""
    args = ["--config", str(ROOT / "configs" / "toy" / "4d-anchored.yaml"), "--train", "-q", f"output_dir={tmp_path}/out",
            "system.prompt=a red cube moving left", "stages.0.steps=120", "stages.1.steps=80", "system.representation.num_points=500",
            "stages.1.system.guidance.0.probability=0.2", "trainer.val_every=0", "trainer.ckpt_every=100",
            "trainer.test_views=4", "trainer.test_resolution=32", "export.formats=[ply]"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (tmp_path / "out" / "toy-4d-anchored").iterdir()
    assert (run / "renders" / "test" / "anchor.png").is_file() and (run / "renders" / "test" / "time_front.png").is_file()
    from threedgen.data.cameras import clip_times, still_cameras
    from threedgen.toy.run_measure import White, load_run

    system = load_run(run, ROOT / "configs" / "toy" / "4d-anchored.yaml", args[4:])
    with torch.no_grad():
        out = system.renderer(system.representation, still_cameras(system.camera_cfg, clip_times(8), 32), White())
    c = alpha_centroids(out.alpha)
    assert classify_motion(c) == "left", c  # seen from the front, not the clip's camera (20 degrees to the side)


def test_real_model_recipe_runs_on_tiny_stand_ins(tmp_path, tiny_sd_path, tiny_video_path):
    """configs/4d-anchored-zeroscope.yaml with SD-layout and zeroscope-layout stand-ins: the clip is sampled from the
    video model in both stages (the same clip: seeded) and the run writes the anchor comparison and the frames."""
    args = ["--config", str(ROOT / "configs" / "4d-anchored-zeroscope.yaml"), "--train", "-q", f"output_dir={tmp_path}/out",
            "stages.0.steps=3", "stages.1.steps=3", "data.width=16", "data.height=16", "system.representation.num_points=300",
            "stages.1.data.width=16", "stages.1.data.height=16", "stages.1.data.frames=4", "stages.1.data.batch_size=4",
            "trainer.val_every=0", "trainer.ckpt_every=3", "trainer.test_views=4", "trainer.test_resolution=32",
            "export.frames=4", "export.formats=[ply]"]
    for stage in ("", "stages.1."):
        args += [f"{stage}system.guidance.0.prior.model={tiny_sd_path}", f"{stage}system.guidance.0.prior.resolution=null",
                 f"{stage}system.guidance.1.prior.model={tiny_video_path}", f"{stage}system.guidance.1.prior.resolution=null",
                 f"{stage}system.guidance.1.frames=4", f"{stage}system.guidance.1.sample_steps=2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (tmp_path / "out" / "4d-anchored-zeroscope").iterdir()
    assert (run / "renders" / "test" / "anchor.png").is_file()
    assert len(list((run / "export" / "frames").glob("frame_*.ply"))) == 4


def test_a_clip_file_is_read_at_start_up(tmp_path):
    folder = write_frames(tmp_path / "frames", square_clip(n=12))
    g = anchor(source=str(folder), frames=4)
    assert g.clip is not None and g.clip[0].shape == (4, 3, 32, 32)  # read when the render size is known
    cams = g.own_cameras(CameraConfig())
    out = g(GuidanceInput(rgb=g.clip[0].clone(), cameras=cams, alpha=g.clip[1].clone()), None, 0)
    assert float(out["loss_clip_anchor"]) == 0
    short = write_frames(tmp_path / "short", square_clip(n=3))
    with pytest.raises(ValueError, match="needs 8"):
        anchor(source=str(short))


def test_toy_anchored_recipe_refuses_a_prompt_without_motion_before_writing(tmp_path, capsys):
    from threedgen.cli import main

    rc = main(["--config", str(ROOT / "configs" / "toy" / "4d-anchored.yaml"), "--train", "-q", "system.prompt=a red cube",
               f"output_dir={tmp_path}/out"])
    assert rc == 2 and not (tmp_path / "out").exists()
    assert "names no toy motion: end it with 'moving left|right|up|down' or 'bouncing'" in capsys.readouterr().err
