"""``DDPMPrior``: a diffusers UNet text-to-image model with a DDPM-family (discrete-time, variance-
preserving) schedule, behind the interface of ``prior_api.py``.

Covers Stable Diffusion 1.5 / 2.1 (latent, ``AutoencoderKL``, CLIP text encoder; epsilon or
v-prediction), DeepFloyd IF stage I (pixel space, T5, 6 output channels of which the first 3 are
epsilon) and any pixel-space UNet folder without a VAE (the toy prior in ``assets/toy-prior``).
Its levels are the scheduler's timesteps ``0..T-1`` and ``(a_t, b_t) = (sqrt(abar_t), sqrt(1 - abar_t))``.

Text-to-video UNets (``UNet3DConditionModel``: zeroscope, ModelScope; ``UNetMotionModel``: AnimateDiff)
take ``[B,C,F,h,w]`` clips; everything else (levels, CFG, the VAE per frame) is the same, so
``video = True`` is the only difference an objective sees.

Inpainting UNets (SD inpainting: 9 input channels = noisy latent 4 + mask 1 + masked-image latent
4; a pixel model's 7 = 3 + 1 + 3) are recognised by ``in_channels = 2 C + 1`` and read
``Conditioning.mask``/``masked``; a ControlNet (``PriorConfig.controlnet`` or the folder's
``controlnet/``) takes the C-channel noisy input and ``Conditioning.control`` and adds its residuals
to the UNet's, as diffusers' ``StableDiffusionControlNetInpaintPipeline`` wires them.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Optional, Union

import torch

from .camera_condition import camera_vectors, is_camera_conditioned
from .model_folder import VIDEO_UNETS, ModelFolder, PriorConfig, freeze, weight_dtype
from .prior_api import Conditioning, NoiseLevels, Prior

log = logging.getLogger(__name__)

DDPM_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "LMSDiscreteScheduler",
                   "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
                   "UniPCMultistepScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "DEISMultistepScheduler")
"""Scheduler classes whose config describes a DDPM training schedule (``beta_*``), any of which
the DDIM/DDPM scheduler of ``PriorConfig.scheduler`` can be rebuilt from."""


"""Denoisers over ``[B,C,F,h,w]`` clips: zeroscope / ModelScope's UNet3D and AnimateDiff's motion UNet."""


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
        self._speed_up_denoiser()
        self.video = type(self.unet).__name__ in VIDEO_UNETS
        """A text-to-video UNet: model inputs are ``[B,C,F,h,w]`` clips (``video_sds``)."""
        self.per_frame_text = type(self.unet).__name__ == "UNetMotionModel"  # AnimateDiff; UNet3D repeats one per clip
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
        in_ch, out_ch = int(self.unet.config.in_channels), int(self.unet.config.out_channels)
        base = int(self.vae.config.latent_channels) if self.vae is not None else min(in_ch, out_ch)
        if in_ch not in (base, 2 * base + 1):
            raise ValueError(
                f"{cfg.model}: the UNet takes {in_ch} input channels; a prior's UNet takes {base} (the model "
                f"space) or {2 * base + 1} (an inpainting UNet: noisy input, mask, masked image)"
            )
        self.inpainting = in_ch == 2 * base + 1
        self.latent_channels = base
        self.controlnet = self._load_controlnet(cfg, f, diffusers)
        self.latent_resolution = int(self.unet.config.sample_size)
        self.cond_width = int(self.unet.config.cross_attention_dim)
        self.camera_conditioned = is_camera_conditioned(self.unet)
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

    def _load_controlnet(self, cfg: PriorConfig, folder: ModelFolder, diffusers):
        if cfg.controlnet:
            src, sub = ModelFolder(replace(cfg, model=cfg.controlnet, variant=None), self.dtype, single=True), None
        elif folder.has("controlnet"):
            src, sub = folder, "controlnet"
        else:
            return None
        net = freeze(src.load(diffusers.ControlNetModel, sub)).to(self._home)
        if int(net.config.cross_attention_dim) != int(self.unet.config.cross_attention_dim):
            raise ValueError(f"ControlNet {cfg.controlnet or 'controlnet/'} reads text embeddings of width "
                             f"{net.config.cross_attention_dim}, the UNet {self.unet.config.cross_attention_dim}: not the same base model")
        log.info("ControlNet %s (conditioning %d channels, scale %g)", cfg.controlnet or f"{cfg.model}/controlnet",
                 net.config.conditioning_channels, cfg.controlnet_scale)
        return net

    def _denoise(self, x_t, level, cond: Conditioning, cameras) -> torch.Tensor:
        dev = self._exec_device
        t = level.clamp_min(0).to(dev)
        x = x_t
        if self.inpainting:
            if cond.mask is None or cond.masked is None:
                raise ValueError(f"{self.model_id} is an inpainting UNet: its objective must pass a mask and a masked image "
                                 "(the disds guidance does); plain objectives need a text-to-image prior")
            x = torch.cat([x_t, cond.mask.to(x_t), cond.masked.to(x_t)], 1)
        kw = {}
        if self.controlnet is not None:
            if cond.control is None:
                raise ValueError(f"{self.model_id} has a ControlNet: its objective must pass a control image (disds passes depth)")
            with self._running(self.controlnet) as net:
                dt = weight_dtype(net)
                down, mid = net(x_t.to(dev, dt), t, encoder_hidden_states=cond.emb.to(dev, dt),
                                controlnet_cond=cond.control.to(dev, dt), conditioning_scale=self.cfg.controlnet_scale,
                                return_dict=False)
            kw = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        if self.camera_conditioned:  # a multi-view prior: each image's camera (zeros: unknown)
            kw["class_labels"] = camera_vectors(None if cameras is None else cameras.c2w, x.shape[0])
        emb = cond.emb
        if emb.dim() == 4:  # a caption per frame [N,F,L,D] (video_sds frame_prompts)
            if not self.per_frame_text or emb.shape[1] != x.shape[2]:
                raise ValueError(f"{self.model_id}: {emb.shape[1]} frame captions for clips of {x.shape[2]} frames through a "
                                 f"{type(self.unet).__name__}; per-frame captions need a UNetMotionModel and one per frame")
            emb = emb.flatten(0, 1)
        elif self.per_frame_text:
            emb = emb.repeat_interleave(x.shape[2], 0)
        with self._running(self.denoiser) as unet:
            dt = weight_dtype(unet)
            if "class_labels" in kw:
                kw["class_labels"] = kw["class_labels"].to(dev, dt)
            return unet(x.to(dev, dt), t, encoder_hidden_states=emb.to(dev, dt), **kw).sample

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
