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

from .model_folder import ModelFolder, PriorConfig, freeze
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

        self._setup_device(cfg, device)
        self.folder = ModelFolder(cfg, self.dtype)
        self.location, self.is_local = self.folder.location, self.folder.is_local
        f = self.folder
        self.unet = freeze(f.load(f.component_class("unet", diffusers, "UNet2DConditionModel"), "unet")).to(self._home)
        self.denoiser = self.unet
        if f.has("vae"):
            self.vae = freeze(f.load(f.component_class("vae", diffusers, "AutoencoderKL"), "vae")).to(self._home)
        sched_cls = {"ddim": diffusers.DDIMScheduler, "ddpm": diffusers.DDPMScheduler}[cfg.scheduler]
        self.scheduler = f.load_scheduler(sched_cls)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.prediction_type = str(self.scheduler.config.prediction_type)
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(
                f"{cfg.model}: prediction_type {self.prediction_type!r} in scheduler/scheduler_config.json is not "
                "one a DDPM prior knows (epsilon, v_prediction, sample)"
            )
        self.parameterisation = self.prediction_type
        self.levels = NoiseLevels(self.num_train_timesteps, self.device)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(self.device, torch.float32)
        self._a = self.alphas_cumprod.sqrt()
        self._b = (1.0 - self.alphas_cumprod).clamp_min(0).sqrt()
        self.latent_channels = int(self.unet.config.in_channels)
        self.latent_resolution = int(self.unet.config.sample_size)
        self.cond_width = int(self.unet.config.cross_attention_dim)
        self._setup_vae()
        self._tokenizer = None
        log.info(
            "loaded diffusion prior %s (%s, %s, %s, prediction %s, %d train steps, resolution %d)",
            self.model_id, "latent" if self.is_latent else "pixel", self.dtype, self.device,
            self.prediction_type, self.num_train_timesteps, self.resolution,
        )

    def schedule_table(self) -> torch.Tensor:
        """``[n, 2]`` of ``(a, b)`` per level, for comparing two priors' schedules."""
        return torch.stack([self._a, self._b], 1).cpu()

    def time_embedding(self, denoiser: torch.nn.Module) -> tuple[torch.nn.Module, int]:
        """The module whose output is the network's timestep embedding, and its width (VSD's camera
        embedding is added there)."""
        return denoiser.time_embedding, int(denoiser.time_embedding.linear_2.out_features)

    def _denoise(self, x_t, level, cond: Conditioning, cameras, **kw) -> torch.Tensor:
        with self._running(self.denoiser) as unet:
            return unet(
                x_t.to(self._exec_device, unet.dtype),
                level.clamp_min(0).to(self._exec_device),
                encoder_hidden_states=cond.emb.to(self._exec_device, unet.dtype),
                **kw,
            ).sample

    # ---- text -------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self.folder.load_tokenizer("tokenizer")
        return self._tokenizer

    @property
    def max_text_length(self) -> int:
        n = int(getattr(self.tokenizer, "model_max_length", 77) or 77)
        return 77 if n > 100_000 else n  # "unlimited" sentinel in some tokenizer configs

    def _embed(self, prompts: list[str]) -> Conditioning:
        batch = self._tokenize(self.tokenizer, prompts, self.max_text_length)
        te = self._text_encoder("text_encoder")
        kw = {}
        if "T5" in type(te).__name__ or getattr(te.config, "use_attention_mask", False):
            kw["attention_mask"] = batch["attention_mask"].to(self.device)
        return Conditioning(emb=te(batch["input_ids"].to(self.device), **kw)[0])
