"""Which prior a model folder is, and one shared instance of each per process.

``get_prior`` reads ``scheduler/scheduler_config.json`` and builds a ``DDPMPrior`` for
DDPM-family schedules (``beta_*`` tables: SD, DeepFloyd IF, the toy prior) or a ``FlowPrior`` for
``FlowMatchEulerDiscreteScheduler`` (SD3-class); anything else is refused before any step.
"""

from __future__ import annotations

from dataclasses import replace

import gc
from typing import Optional, Union

import torch

from .model_folder import ModelFolder, PriorConfig, resolve_device, resolve_dtype, resolve_model
from .prior_api import Prior

_PRIORS: dict[tuple, Prior] = {}


def prior_kind(cfg: PriorConfig) -> str:
    """``ddpm`` or ``flow`` from the folder's scheduler config; ValueError for any other schedule."""
    from .ddpm_prior import DDPM_SCHEDULERS

    folder = ModelFolder(cfg, torch.float32)
    sc = folder.config("scheduler", "scheduler_config.json")
    name = str(sc.get("_class_name", ""))
    if name.startswith("FlowMatch"):
        return "flow"
    if name in DDPM_SCHEDULERS or "beta_schedule" in sc or not sc:
        return "ddpm"  # no scheduler config at all: DDPMPrior says which file is missing
    raise ValueError(
        f"prior {cfg.model}: scheduler {name!r} is neither a DDPM-family schedule (DDPM, DDIM, PNDM, Euler, ... "
        "with beta_* settings) nor flow matching (FlowMatchEulerDiscreteScheduler); no prior knows its noise levels"
    )


def load_prior(cfg: PriorConfig, device: Optional[Union[str, torch.device]] = None) -> Prior:
    """A new prior of the folder's kind (``get_prior`` shares them)."""
    if prior_kind(cfg) == "flow":
        from .flow_prior import FlowPrior

        return FlowPrior(cfg, device=device)
    from .ddpm_prior import DDPMPrior

    return DDPMPrior(cfg, device=device)


def get_prior(cfg: PriorConfig, device: Optional[Union[str, torch.device]] = None) -> Prior:
    """The shared prior for ``cfg``: loaded once per (model, dtype, device, variant, revision) and
    reused by every guidance (a different ControlNet or its scale is a different prior). Per-call options (``encode_mode``, ``resolution``) of a later config are
    passed by the caller; ``cpu_offload`` and ``scheduler`` follow the first config; ``compile`` and ``cuda_graph`` are
    applied to the shared prior when any config asks for them."""
    dev = resolve_device(cfg.device) if device is None else torch.device(device)
    location, _ = resolve_model(cfg.model, cfg.revision)
    key = (location, resolve_dtype(cfg.dtype, dev), str(dev), cfg.variant, cfg.revision, cfg.controlnet, cfg.controlnet_scale)
    prior = _PRIORS.get(key)
    if prior is None:
        prior = _PRIORS[key] = load_prior(cfg, device=dev)
    elif (cfg.compile and not prior.cfg.compile) or (cfg.cuda_graph and not prior.cfg.cuda_graph):
        prior.cfg = replace(prior.cfg, compile=prior.cfg.compile or cfg.compile, cuda_graph=prior.cfg.cuda_graph or cfg.cuda_graph)
        prior._speed_up_denoiser()
    return prior


def clear_prior_cache() -> None:
    """Forget every shared prior (frees their memory once nothing else holds them)."""
    _PRIORS.clear()
    gc.collect()


def lora_target(base: Prior, wanted: str) -> str:
    """The LoRA loss target for ``base``: its own parameterisation for ``auto``, else ``wanted`` if it
    is one of the base's (``Prior.targets``: a v target is a DDPM velocity, not a flow's)."""
    target = base.parameterisation if wanted == "auto" else wanted
    if target not in base.targets:
        raise ValueError(
            f"lora_target {target!r} is not a parameterisation of the {base.kind} LoRA base {base.model_id}; "
            f"use auto or one of {', '.join(base.targets)}"
        )
    return target


def check_lora_base(prior, base) -> None:
    """The LoRA base must read the prior's model inputs, noise levels and conditionings unchanged.

    Raises ``ValueError`` naming the mismatch (checked at start-up, before any training step)."""
    if base is prior:
        return
    who = f"LoRA base {base.model_id} vs prior {prior.model_id}"
    if base.kind != prior.kind:
        raise ValueError(
            f"{who}: a {base.kind} model cannot be the LoRA base of a {prior.kind} prior (different forward "
            "processes, so the same level means different noise); pick a base of the prior's kind"
        )
    if base.space() != prior.space():
        raise ValueError(
            f"{who}: different model space ({'latent' if base.is_latent else 'pixel'}, {base.latent_channels} "
            f"channels, /{base.vae_scale_factor}, VAE scale/shift {base.scaling_factor}/{base.shift_factor} vs "
            f"{'latent' if prior.is_latent else 'pixel'}, {prior.latent_channels} channels, /{prior.vae_scale_factor}, "
            f"{prior.scaling_factor}/{prior.shift_factor}); the LoRA model denoises the prior's latents, so pick a "
            "base with the same latent space (e.g. SD 2.1 for SD 2.1-base)"
        )
    if base.cond_width != prior.cond_width:
        raise ValueError(
            f"{who}: text embedding width {base.cond_width} vs {prior.cond_width}; the LoRA model reads the prior's "
            "prompt embeddings, so both need the same text encoder"
        )
    if base.levels.n != prior.levels.n or not torch.allclose(base.schedule_table(), prior.schedule_table(), atol=1e-6):
        raise ValueError(f"{who}: different noise schedules; the same level must mean the same noise in both")
    if torch.empty(0, device=base.device).device != torch.empty(0, device=prior.device).device:  # "cuda" == "cuda:0"
        raise ValueError(f"{who}: on different devices ({base.device} vs {prior.device}); set lora_prior.device")
