"""Toy clips for the toy video prior: toy objects moving in simple captioned ways, F frames at 32².

A clip is one toy scene seen by one camera while the object moves: "a red cube moving left" slides the
object along world -x (right: +x, up: +y, down: -y) over ``AMPLITUDE`` world units, centred on the
origin; "bouncing" lifts it along +y and back (``|sin|`` over the clip). The object is moved by moving
the camera the opposite way (the toy renderer keeps objects at the origin and its lighting is fixed in
the world, so the two are the same picture). Cameras look at the object from the front half
(``CLIP_CAMERAS``: azimuth within ±35°), where world left is screen left, so a caption's direction is
also the direction on screen that the prior's quality gate tracks (``evaluate_video.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.cameras import CameraConfig, RandomCameraSampler
from ..schedule import Schedule
from . import world as W

FRAMES = 8
RESOLUTION = 32
AMPLITUDE = 0.5
MOTIONS = ("left", "right", "up", "down", "bouncing")
MOTION_WORDS = ("moving", "left", "right", "up", "down", "bouncing")
"""Words the video prior's tokenizer adds to the toy vocabulary."""
FRAME_WORDS = ("frame", "zero", "one", "two", "three", "four", "five", "six", "seven")
"""Words of per-frame captions (``train_video.py --frame-words``): "... moving left frame three"."""


def frame_captions(text: str, frames: int = FRAMES) -> list[str]:
    """One caption per frame, the frame's index in words appended: the spatial layers then see both the
    motion and where in the clip the frame is, and can place the object there (docs/4d.md)."""
    if frames > len(FRAME_WORDS) - 1:
        raise ValueError(f"frame words name at most {len(FRAME_WORDS) - 1} frames, got {frames}")
    return [f"{text} frame {FRAME_WORDS[1 + f]}".strip() for f in range(frames)]
CLIP_CAMERAS = CameraConfig(batch_size=Schedule(1), width=Schedule(RESOLUTION), height=Schedule(RESOLUTION),
                            elevation_range=(0.0, 30.0), azimuth_range=(-35.0, 35.0), distance_range=(1.8, 2.2),
                            fovy_range=(50.0, 55.0), light="none")


def caption(scene: W.ToyScene, motion: str) -> str:
    if motion not in MOTIONS:
        raise ValueError(f"unknown toy motion {motion!r}; known: {', '.join(MOTIONS)}")
    return f"{scene.prompt} bouncing" if motion == "bouncing" else f"{scene.prompt} moving {motion}"


def parse_motion(prompt: str) -> tuple[W.ToyScene, str]:
    """``"a red cube moving left"`` -> (the toy scene, "left"); ValueError naming the known motions."""
    words = prompt.strip().split()
    if words[-1:] == ["bouncing"]:
        return W.parse_prompt(" ".join(words[:-1])), "bouncing"
    if len(words) >= 2 and words[-2] == "moving" and words[-1] in MOTIONS:
        return W.parse_prompt(" ".join(words[:-2])), words[-1]
    raise ValueError(f"{prompt!r} names no toy motion: end it with 'moving left|right|up|down' or 'bouncing'")


def offsets(motion: str, frames: int = FRAMES) -> torch.Tensor:
    """``[F,3]`` world offsets of the object over a clip."""
    s = torch.linspace(0.0, 1.0, frames)
    out = torch.zeros(frames, 3)
    if motion == "bouncing":
        out[:, 1] = AMPLITUDE * torch.sin(torch.pi * s)
    else:
        axis, sign = {"left": (0, -1.0), "right": (0, 1.0), "up": (1, 1.0), "down": (1, -1.0)}[motion]
        out[:, axis] = sign * AMPLITUDE * (s - 0.5)
    return out


def moved_cameras(cams, shift: torch.Tensor):
    """``cams`` seeing an object moved by ``shift`` ``[B,3]`` (the toy renderer keeps objects at the origin, so
    each camera moves by ``-shift`` instead; the same picture)."""
    out = cams[list(range(len(cams)))]
    out.c2w = cams.c2w.clone()
    out.c2w[:, :3, 3] -= shift.to(out.c2w)
    return out


def render_clips(scenes: list[W.ToyScene], motions: list[str], seed: int, frames: int = FRAMES) -> torch.Tensor:
    """``[N,3,F,H,W]`` clips in [0,1]: scene i moving by motion i, one random front-half camera per clip."""
    from .render import render_scene

    n = len(scenes)
    cams = RandomCameraSampler(CLIP_CAMERAS, seed=seed).sample(0, batch_size=n)
    idx = [i for i in range(n) for _ in range(frames)]
    cams = moved_cameras(cams[idx], torch.stack([offsets(m, frames) for m in motions]).reshape(-1, 3))
    rgb = render_scene([scenes[i] for i in idx], cams, ssaa=2)["rgb"]
    return rgb.reshape(n, frames, 3, RESOLUTION, RESOLUTION).transpose(1, 2)


def load_clip_dataset(cache_dir: str | Path, clips_per_pair: int, seed: int = 0) -> dict:
    """Every (plain toy scene, motion) pair ``clips_per_pair`` times: ``clips`` uint8 ``[N,3,F,32,32]`` and
    ``captions`` (cached in ``cache_dir``)."""
    path = Path(cache_dir) / f"toy_clips_v1_{clips_per_pair}_{seed}.pt"
    if path.is_file():
        return torch.load(path, weights_only=False)
    pairs = [(s, m) for s in W.all_scenes() if not s.marker for m in MOTIONS]
    pairs = [p for p in pairs for _ in range(clips_per_pair)]
    chunks = []
    for i in range(0, len(pairs), 256):
        part = pairs[i : i + 256]
        chunks.append((render_clips([s for s, _ in part], [m for _, m in part], seed=seed * 7919 + i) * 255).round().to(torch.uint8))
    data = {"clips": torch.cat(chunks), "captions": [caption(s, m) for s, m in pairs]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(data, tmp)
    tmp.replace(path)
    return data
