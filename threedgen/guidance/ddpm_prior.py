"""``DDPMPrior``: a diffusers UNet text-to-image model with a DDPM-family (discrete-time, variance-
preserving) schedule, behind the interface of ``prior_api.py``.

Covers Stable Diffusion 1.5 / 2.1 (latent, ``AutoencoderKL``, CLIP text encoder; epsilon or
v-prediction), DeepFloyd IF stage I (pixel space, T5, 6 output channels of which the first 3 are
epsilon) and any pixel-space UNet folder without a VAE (the toy prior in ``assets/toy-prior``).
Its levels are the scheduler's timesteps ``0..T-1`` and ``(a_t, b_t) = (sqrt(abar_t), sqrt(1 - abar_t))``.
"""

from __future__ import annotations

import logging
from typing import Optional, Union

import torch

from .model_folder import PriorConfig, freeze
from .prior_api import Conditioning, NoiseLevels, Prior

log = logging.getLogger(__name__)

DDPM_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "LMSDiscreteScheduler",
                   "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
                   "UniPCMultistepScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "DEISMultistepScheduler")
"""Scheduler classes whose config describes a DDPM training schedule (``beta_*``), any of which
the DDIM/DDPM scheduler of ``PriorConfig.scheduler`` can be rebuilt from."""


class DDPMPrior(Prior):
    """A frozen diffusers UNet with a DDPM schedule (see the module docstring)."""

    kind = "ddpm"
    targets = ("epsilon", "v_prediction", "sample")
    """Parameterisations a LoRA on this model may be trained in (VSD's ``lora_target``)."""

    def __init__(self, cfg: PriorConfig, device: Optional[Union[str, torch.device]] = None):
        import diffusers

        f = self._setup(cfg, device)
        self.unet = freeze(f.load(f.component_class("unet", diffusers, "UNet2DConditionModel"), "unet")).to(self._home)
        self.denoiser = self.unet
        if f.has("vae"):
            self.vae = freeze(f.load(f.component_class("vae", diffusers, "AutoencoderKL"), "vae")).to(self._home)
        sched_cls = {"ddim": diffusers.DDIMScheduler, "ddpm": diffusers.DDPMScheduler}[cfg.scheduler]
        self.scheduler = f.load_scheduler(sched_cls)
        kind = str(self.scheduler.config.prediction_type)
        if kind not in self.targets:
            raise ValueError(
                f"{cfg.model}: prediction_type {kind!r} in scheduler/scheduler_config.json is not "
                "one a DDPM prior knows (epsilon, v_prediction, sample)"
            )
        self.parameterisation = kind
        self.levels = NoiseLevels(int(self.scheduler.config.num_train_timesteps), self.device)
        abar = self.scheduler.alphas_cumprod.to(self.device, torch.float32)
        self._a, self._b = abar.sqrt(), (1.0 - abar).clamp_min(0).sqrt()
        self.latent_channels = int(self.unet.config.in_channels)
        self.latent_resolution = int(self.unet.config.sample_size)
        self.cond_width = int(self.unet.config.cross_attention_dim)
        self._setup_vae()
        log.info(
            "loaded diffusion prior %s (%s, %s, %s, prediction %s, %d train steps, resolution %d)",
            self.model_id, "latent" if self.is_latent else "pixel", self.dtype, self.device,
            self.parameterisation, self.levels.n, self.resolution,
        )

    def time_embedding(self, denoiser: torch.nn.Module) -> tuple[torch.nn.Module, int]:
        """The module whose output is the network's timestep embedding, and its width (VSD's camera
        embedding is added there)."""
        return denoiser.time_embedding, int(denoiser.time_embedding.linear_2.out_features)

    def _denoise(self, x_t, level, cond: Conditioning, cameras) -> torch.Tensor:
        with self._running(self.denoiser) as unet:
            return unet(
                x_t.to(self._exec_device, unet.dtype),
                level.clamp_min(0).to(self._exec_device),
                encoder_hidden_states=cond.emb.to(self._exec_device, unet.dtype),
            ).sample

    # ---- text -------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        return self._tokenizer("tokenizer")

    @property
    def max_text_length(self) -> int:
        return self._max_length(self.tokenizer, 77)

    def _embed(self, prompts: list[str]) -> Conditioning:
        batch = self._tokenize(self.tokenizer, prompts, self.max_text_length)
        te = self._text_encoder("text_encoder")
        kw = {}
        if "T5" in type(te).__name__ or getattr(te.config, "use_attention_mask", False):
            kw["attention_mask"] = batch["attention_mask"].to(self.device)
        return Conditioning(emb=te(batch["input_ids"].to(self.device), **kw)[0])
