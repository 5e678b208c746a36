"""Clip anchor: fit a moving scene to one video clip seen from one camera (video-anchored 4D: EG4D, PLA4D,
DreamGaussian4D's video-to-4D; ``docs/4d.md``).

Video SDS asks a video prior for motion one noisy step at a time; an anchored recipe asks it once: a clip
is sampled (or given), and the scene seen from the clip's camera at the clip's times must reproduce its
frames — a photometric loss, which moves the scene as far in one step as many SDS steps do. The other
views come from the other objectives of the recipe (per-frame image SDS for the shape and appearance the
clip does not show). Per step, with the anchor camera at the clip's F times::

    render r_f, alpha a_f of the scene at time tau_f from the anchor camera
    loss_clip_anchor = mean_f ||r_f - c_f||^2 + mask_weight * mean_f ||a_f - m_f||^2

where ``c_f`` are the clip's frames and ``m_f`` their foreground (``threedgen/data/clip_files.py``).
``first_frame_only`` fits frame 0 alone, to a static scene: the static stage's canonical object is the clip's
first frame.

Where the clip comes from (``source``):
- ``prior``: sampled once from ``prior`` (a text-to-video model: zeroscope/ModelScope, AnimateDiff, or a
  toy video prior) for the run's prompt, seeded by ``sample_seed``, at the start of the stage;
- a path: a video file or a folder of frames (a clip made elsewhere: video-to-4D);
- ``toy``: the toy world's analytic clip for a toy motion prompt ("a red cube moving left") — the answer a
  perfect toy video prior would give; it checks the recipe (field, cameras, losses) independently of a
  video prior, as the photometric guidance does for static scenes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..data.cameras import CameraBatch, CameraConfig, clip_times, make_cameras
from .base import Guidance, GuidanceInput
from .frame_prompts import check_frame_prompts, frame_conditioning, frame_uncond
from .model_folder import PriorConfig
from .photometric import match_images


class ClipAnchorGuidance(Guidance):
    @dataclass
    class Config:
        RANGES = {"frames": (1, 256), "mask_weight": (0, None), "sample_steps": (1, 1000), "guidance_scale": (0, None),
                  "elevation": (-90, 90), "distance": (1e-6, None), "fovy": (1e-3, 179.999), "tolerance": (0, 1),
                  "frame_noise_share": (0, 1)}
        source: str = "prior"
        """'prior' (sample the clip from ``prior``), 'toy' (the toy world's clip) or a video file / frame folder."""
        prior: Optional[PriorConfig] = None
        """The text-to-video model that samples the clip (``source: prior``, where it is required)."""
        frames: int = 8
        """F: frames of the clip the scene is fitted to, at times 0, 1/(F-1), ..., 1."""
        first_frame_only: bool = False
        """Fit frame 0 only, at no time (a static stage making the canonical object)."""
        elevation: Optional[float] = None
        """The clip's camera in degrees (None: the data's evaluation view)."""
        azimuth: float = 0.0
        distance: Optional[float] = None
        fovy: Optional[float] = None
        mask_weight: float = 1.0
        """Weight of the silhouette term (render alpha vs the clip's foreground)."""
        background: tuple[float, float, float] = (1.0, 1.0, 1.0)
        """The clip's backdrop colour: frames are composited on it and the foreground is what differs from it."""
        tolerance: float = 0.1
        """How far (per channel, in [0,1]) a pixel must differ from ``background`` to count as the object."""
        sample_steps: int = 30
        guidance_scale: float = 7.5
        sample_seed: int = 0
        frame_noise_share: float = 0.0
        """``source: prior``: share of the starting noise's variance common to the clip's frames (``clip_noise.py``; 0:
        independent frames, as a video model with temporal layers samples; near 1 for a prior whose frames are
        denoised on their own)."""
        frame_prompts: list[str] = field(default_factory=list)
        """``source: prior``: one caption template per frame with ``{prompt}`` for a prior that reads a caption per
        frame (``guidance/frame_prompts.py``; a ``--frame-words`` toy video prior: ``"{prompt} frame zero"`` …); empty: one per clip."""

    def __init__(self, cfg: "ClipAnchorGuidance.Config"):
        super().__init__()
        self.cfg = cfg
        self.clip: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (rgb [F,3,H,W], mask [F,1,H,W]) once made
        self._size = None
        from ..renderers.background import SolidBackground

        self.own_background = SolidBackground(SolidBackground.Config(color=tuple(cfg.background)))
        """The anchor views are rendered on the clip's backdrop, whatever the other views' background."""
        if cfg.source == "prior":
            from .priors import get_prior

            if cfg.prior is None:
                raise ValueError("clip_anchor: source 'prior' samples the clip from a text-to-video model: set prior.model "
                                 "(or source: toy / a video file)")
            self.prior = get_prior(cfg.prior)
            if not getattr(self.prior, "video", False):
                raise ValueError(f"clip_anchor: source 'prior' needs a text-to-video prior (a UNet3DConditionModel or "
                                 f"UNetMotionModel under unet/); {cfg.prior.model} has a {type(self.prior.denoiser).__name__}")
            if cfg.frame_prompts:
                check_frame_prompts(cfg.frame_prompts, cfg.frames, self.prior, "clip_anchor")
        elif cfg.source != "toy":
            from pathlib import Path

            if not Path(cfg.source).exists():
                raise ValueError(f"clip_anchor.source: {cfg.source} does not exist; expected 'prior', 'toy', "
                                 "a video file or a folder of frames")

    @staticmethod
    def check_prompt(cfg: "ClipAnchorGuidance.Config", prompt: str) -> None:
        """Checked with the config, before a run folder exists: the toy clip needs a toy motion prompt."""
        if cfg.source == "toy":
            from ..toy.video_dataset import parse_motion

            parse_motion(prompt)

    def check_render_size(self, height: int, width: int) -> None:
        """Learns the render size; a clip file is read now, so a bad one stops the run before it trains."""
        self._size = (int(height), int(width))
        if self.cfg.source not in ("prior", "toy"):
            from ..data.clip_files import read_clip

            c = self.cfg
            self.clip = read_clip(c.source, c.frames, int(width), int(height), c.background, c.tolerance)

    # ---- the anchor views ---------------------------------------------------------------------
    def own_cameras(self, camera_cfg: CameraConfig) -> CameraBatch:
        """The clip's camera at each of its times (one view, no time, for ``first_frame_only``)."""
        c = self.cfg
        H, W = self._size or (int(camera_cfg.height(0)), int(camera_cfg.width(0)))
        times = clip_times(c.frames)
        n = 1 if c.first_frame_only else c.frames
        el = camera_cfg.eval_elevation if c.elevation is None else c.elevation
        dist = camera_cfg.eval_distance if c.distance is None else c.distance
        fovy = camera_cfg.eval_fovy if c.fovy is None else c.fovy
        center = torch.tensor(camera_cfg.center, dtype=torch.float32) if any(camera_cfg.center) else None
        return make_cameras(torch.full((n,), float(el)), torch.full((n,), float(c.azimuth)), dist, fovy, W, H,
                            time=None if c.first_frame_only else times, center=center)

    # ---- the clip -----------------------------------------------------------------------------
    def make_clip(self, prompts, cameras: CameraBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The anchor clip (rgb ``[F,3,H,W]``, mask ``[F,1,H,W]``) at the render size, made once."""
        if self.clip is not None:
            return self.clip
        c = self.cfg
        H, W = cameras.height, cameras.width
        if c.source == "toy":
            rgb, mask = self._toy_clip(prompts, cameras)
        elif c.source == "prior":
            from ..data.clip_files import prepare_clip

            cond, uncond = prompts.select(cameras[:1], False)
            if c.frame_prompts:
                cond = frame_conditioning(self.prior, [prompts.text], c.frame_prompts)
                uncond = frame_uncond(self.prior, prompts.negative_text, c.frame_prompts, uncond)
            g = torch.Generator().manual_seed(int(c.sample_seed))
            clip = self.prior.sample(cond, uncond, c.guidance_scale, n_steps=c.sample_steps, generator=g, frames=c.frames,
                                     frame_noise_share=c.frame_noise_share)
            rgb, mask = prepare_clip(clip[0].transpose(0, 1).cpu(), c.frames, W, H, c.background, c.tolerance)
        else:
            from ..data.clip_files import read_clip

            rgb, mask = read_clip(c.source, c.frames, W, H, c.background, c.tolerance)
        self.clip = (rgb, mask)
        return self.clip

    def _toy_clip(self, prompt, cameras: CameraBatch) -> tuple[torch.Tensor, torch.Tensor]:
        from ..toy.render import render_scene
        from ..toy.video_dataset import moved_cameras, offsets, parse_motion

        text = prompt if isinstance(prompt, str) else getattr(prompt, "text", "")
        scene, motion = parse_motion(text)
        cams = moved_cameras(self.own_cameras_all(cameras).to("cpu"), offsets(motion, self.cfg.frames))
        gt = render_scene(scene, cams, ssaa=2)
        bg = torch.tensor(self.cfg.background, dtype=torch.float32).view(1, 3, 1, 1)
        return gt["rgb"] * gt["mask"] + bg * (1 - gt["mask"]), gt["mask"]

    def own_cameras_all(self, cameras: CameraBatch) -> CameraBatch:
        """The clip's camera at all F times (also when this objective fits frame 0 only)."""
        n = self.cfg.frames
        out = cameras[[0] * n]
        out.time = clip_times(n).to(cameras.device)
        return out

    # ---- the loss -----------------------------------------------------------------------------
    def forward(self, inp: GuidanceInput, prompts, step: int) -> dict:
        rgb, mask = self.make_clip(prompts, inp.cameras)
        if rgb.device != inp.rgb.device or rgb.dtype != inp.rgb.dtype:  # moved once, not every step
            self.clip = rgb, mask = rgb.to(inp.rgb), mask.to(inp.rgb)
        n = inp.rgb.shape[0]
        return match_images(inp, rgb[:n], mask[:n], self.cfg.mask_weight, name="clip_anchor")


@torch.no_grad()
def clip_and_scene(system) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """For a system with a clip anchor: (the clip's frames, the scene rendered from the clip's camera at its
    times), each ``[F,3,H,W]`` on the CPU — what a user compares first; None without one."""
    anchors = [(i, g) for i, g in enumerate(system.guidances) if isinstance(g, ClipAnchorGuidance)]
    if not anchors:
        return None
    i, g = anchors[-1]
    system.prepare_prompts()
    cams = g.own_cameras_all(g.own_cameras(system.camera_cfg)).to(system.device)
    rgb, _ = g.make_clip(system._bundles[i], cams)
    was_training = system.training
    system.eval()
    try:
        scene = system.renderer(system.representation, cams, g.own_background).rgb.cpu()
    finally:
        system.train(was_training)
    return rgb.cpu(), scene
