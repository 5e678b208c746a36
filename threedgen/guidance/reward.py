"""Reward guidance: a frozen critic scores the renders against the prompt; its loss is minimised directly.

Not score distillation: the gradient is the critic's, through its own differentiable preprocessing
(``threedgen/rewards/``). It composes with any objective by listing both in ``system.guidance``, each
with its weight schedule (VLM3D: SDS at 1 and the VLM reward at ``[0, 300, 1, 10000]``); neither
knows about the other. ``until_step`` stops the reward after a step (VLM3D scores the first 10k).
Registered as ``reward`` and as ``vlm_reward`` (the same guidance; the critic is chosen by ``critic``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ModuleSpec, module
from .base import Guidance, GuidanceInput


class RewardGuidance(Guidance):
    @dataclass
    class Config:
        RANGES = {"until_step": (-1, None), "resolution": (0, 4096)}
        critic: ModuleSpec = module("critic", "qwen_vl")
        """``qwen_vl`` (Qwen2-VL-class VLM), ``clip`` or ``toy`` (the toy classifier), with its settings."""
        until_step: int = -1
        """Skip the reward from this step on (-1: never)."""
        resolution: int = 0
        """Resize the renders to this square size before the critic (0: as rendered)."""

    def __init__(self, cfg: "RewardGuidance.Config"):
        super().__init__()
        if cfg.resolution < 0:
            raise ValueError(f"resolution must be >= 0 (0: the render size), got {cfg.resolution}")
        self.cfg = cfg
        self.critic = cfg.critic.build()

    def check_render_size(self, height: int, width: int) -> None:
        r = self.cfg.resolution
        check = getattr(self.critic, "check_image_size", None)
        if check is not None:
            check(*((r, r) if r else (height, width)))

    def forward(self, inp: GuidanceInput, prompts, step: int) -> dict:
        if 0 <= self.cfg.until_step <= step:
            return {"loss_reward": torch.zeros((), device=inp.rgb.device)}
        prompt = prompts if isinstance(prompts, str) else getattr(prompts, "text", None)
        if not prompt:
            raise ValueError("the reward guidance needs the run's prompt (system.prompt)")
        rgb = inp.rgb
        r = self.cfg.resolution
        if r and rgb.shape[-2:] != (r, r):
            rgb = F.interpolate(rgb, size=(r, r), mode="bilinear", align_corners=False, antialias=r < rgb.shape[-1])
        res = self.critic(rgb, prompt, inp.cameras)
        return {"loss_reward": res.pop("loss"), **res}
