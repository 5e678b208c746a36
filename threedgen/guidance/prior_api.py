"""The one interface every objective speaks to a prior, whatever kind of model is behind it.

DESIGN.md asks objectives to think only in the forward process ``x_t = a_t z + b_t eps`` and a
prediction ``(x0_hat, eps_hat)``. This module is that contract:

- ``NoiseLevels`` (``levels.py``): the levels a prior hands out. Objectives never do arithmetic on a level; they
  ask for levels by *fraction of the noise range* (``at(0.5)``, ``draw(B, 0.02, 0.98, group=4)``,
  ``below(t, 0.05)``, ``clean(B)``) and pass them back. Internally a level is an index into the
  prior's training grid of ``n`` levels (0 least noisy, ``n - 1`` most) or ``CLEAN`` (-1, ``a = 1,
  b = 0``); a DDPM prior's index is its timestep, a flow prior's index is a point of its shifted
  sigma grid. A paper's integer DDPM ``t`` out of 1000 is the fraction ``t / 1000`` (docs/objectives.md).
- ``Conditioning`` (``conditioning.py``): what the denoiser is conditioned on (token embeddings, optional pooled
  embedding, mask and control image); it selects, expands and concatenates itself, so an
  objective batches conditions without knowing what they hold.
- ``Prediction``: ``eps``, ``x0``, and the ``a``, ``b`` of the level it was made at.
- ``Prior``: the shared algebra written once on top of four things a prior supplies: its ``(a, b)``
  table per level, ``_denoise`` (one network call), the model parameterisation and the VAE.
  ``predict(x_t, level, cond, cameras=None)`` is the only way an objective calls the network;
  cameras reach it (a text-to-image prior ignores them, a multi-view prior reads them).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .cfg import ScaleLike, cfg_combine, perp_neg_combine
from .conditioning import Conditioning, as_conditioning
from .clip_noise import clip_noise
from .levels import CLEAN, NoiseLevels
from .model_folder import ModelFolder, PriorConfig, PromptTruncatedWarning, resolve_device, resolve_dtype, weight_dtype

log = logging.getLogger(__name__)

PARAMETERISATIONS = ("epsilon", "v_prediction", "sample", "flow")


# ---- predictions ---------------------------------------------------------------------------------


@dataclass
class Prediction:
    """A denoiser output in ``(x0_hat, eps_hat)`` terms at the level with ``(a, b)``.

    ``eps``/``x0`` are the guided prediction (after CFG when it was applied); ``eps_cond`` and
    ``eps_uncond`` are the two branches of a CFG call (``None`` for a plain ``predict``).
    All float32, shaped like ``x_t`` (``a``, ``b``: ``[N,1,...]``).
    """

    eps: torch.Tensor
    x0: torch.Tensor
    a: Optional[torch.Tensor] = None
    b: Optional[torch.Tensor] = None
    eps_cond: Optional[torch.Tensor] = None
    eps_uncond: Optional[torch.Tensor] = None


def to_prediction(out: torch.Tensor, x_t: torch.Tensor, a: torch.Tensor, b: torch.Tensor, kind: str) -> Prediction:
    """The network output ``out`` in the parameterisation ``kind`` -> ``(x0_hat, eps_hat)``.

    epsilon: ``eps = out``; v: ``eps = a v + b x_t``; sample: ``eps = (x_t - a out) / b``;
    flow (rectified-flow velocity ``u = eps - x0`` with ``a + b = 1``): ``x0 = x_t - b u``, ``eps = x_t + a u``.
    """
    if kind == "epsilon":
        eps = out
    elif kind == "v_prediction":
        eps = a * out + b * x_t
    elif kind == "sample":
        eps = (x_t - a * out) / b.clamp_min(1e-8)
    elif kind == "flow":
        return Prediction(eps=x_t + a * out, x0=x_t - b * out, a=a, b=b)
    else:
        raise ValueError(f"unknown parameterisation {kind!r}; known: {', '.join(PARAMETERISATIONS)}")
    return Prediction(eps=eps, x0=(x_t - b * eps) / a, a=a, b=b)


def parameterise(kind: str, eps: torch.Tensor, x0: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """What a network of parameterisation ``kind`` outputs for ``(eps, x0)`` at ``(a, b)``: the
    inverse of ``to_prediction`` (a LoRA's training target, VSD)."""
    if kind == "epsilon":
        return eps
    if kind == "sample":
        return x0
    if kind == "v_prediction":
        return a * eps - b * x0  # diffusers' get_velocity
    if kind == "flow":
        return eps - x0
    raise ValueError(f"unknown parameterisation {kind!r}; known: {', '.join(PARAMETERISATIONS)}")


# ---- the prior -----------------------------------------------------------------------------------


class Prior:
    """A frozen generative prior in ``(a_t, b_t, x0_hat, eps_hat)`` terms (not an ``nn.Module``: a
    guidance holds it as a plain attribute, so its weights never enter a ``state_dict``, an
    optimizer or Lightning's moves).

    A subclass sets ``levels``, the per-level tables ``_a``/``_b`` (``[n]``), ``parameterisation``,
    ``vae`` (or None), the model-space fields, and implements ``_denoise`` and ``_embed``.
    Shapes: images ``[B,3,H,W]`` in [0,1]; model inputs ``[B,C,h,w]`` (pixel models: the image in
    [-1,1]); levels ``[B]`` from ``levels``.
    """

    kind = "prior"
    parameterisation = "epsilon"
    targets: tuple[str, ...] = ("epsilon",)
    vae = None
    video = False
    """True for a text-to-video denoiser: model inputs ``[B,C,F,h,w]``."""
    per_frame_text = False
    """True when the video denoiser reads one text embedding per frame (``Conditioning.emb`` may be ``[N,F,L,D]``)."""
    denoiser: torch.nn.Module
    _text_subfolders: tuple[str, ...] = ("text_encoder", "tokenizer")

    def _setup(self, cfg: PriorConfig, device) -> ModelFolder:
        """Device, dtype, the model folder and the text-component caches; returns the folder."""
        self.cfg = cfg
        self.device = resolve_device(cfg.device) if device is None else torch.device(device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self._exec_device = self.device
        self._home = torch.device("cpu") if cfg.cpu_offload else self.device
        self._text = {}
        self._tokenizers = {}
        self.text_encoder_loads = 0
        """How many times a text encoder was loaded (tests use it to prove a cache hit)."""
        self.folder = ModelFolder(cfg, self.dtype)
        self.folder.check_text_pairs()
        self.location, self.is_local = self.folder.location, self.folder.is_local
        return self.folder

    def _speed_up_denoiser(self) -> None:
        """``prior.compile``: compile ``denoiser``'s forward in place; ``prior.cuda_graph`` (on a GPU): replay its
        no-grad calls as CUDA graphs. Either way the module keeps its class and attributes (LoRA adapters
        still attach to a copy), and its hooks run outside (``nn.Module.compile`` would trace them too: the
        benchmarks' timing hooks then recompiled it at every call)."""
        if self.cfg.compile and not hasattr(self.denoiser.forward, "_torchdynamo_orig_callable"):
            self.denoiser.forward = torch.compile(self.denoiser.forward)
        if self.cfg.cuda_graph and self.device.type == "cuda":
            from .cuda_graphs import graph_forward

            graph_forward(self.denoiser)

    def _setup_vae(self) -> None:
        if self.vae is not None:
            c = self.vae.config
            self.vae_scale_factor = 2 ** (len(c.block_out_channels) - 1)
            self.scaling_factor = float(c.scaling_factor)
            shift = getattr(c, "shift_factor", None)
            self.shift_factor = float(shift) if shift is not None else 0.0
        else:
            self.vae_scale_factor, self.scaling_factor, self.shift_factor = 1, 1.0, 0.0
        self.is_latent = self.vae is not None
        self.resolution = int(self.cfg.resolution or self.latent_resolution * self.vae_scale_factor)

    # ---- forward process ------------------------------------------------------------------------

    def alpha_sigma(self, level, ndim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, b)`` of ``level`` shaped ``[B,1,...]`` (``ndim`` dims in all); clean is ``(1, 0)``."""
        t = self.levels(level)
        a = torch.where(t < 0, torch.ones((), device=t.device), self._a[t.clamp(min=0)])
        b = torch.where(t < 0, torch.zeros((), device=t.device), self._b[t.clamp(min=0)])
        shape = (-1,) + (1,) * (ndim - 1)
        return a.view(shape), b.view(shape)

    def schedule_table(self) -> torch.Tensor:
        """``[n, 2]`` of ``(a, b)`` per level, for comparing two priors' schedules."""
        return torch.stack([self._a, self._b], 1).cpu()

    @property
    def num_train_timesteps(self) -> int:
        """The scheduler's name for the number of noisy levels."""
        return self.levels.n

    @property
    def prediction_type(self) -> str:
        """The scheduler's name for ``parameterisation`` (``flow`` for a flow prior)."""
        return self.parameterisation

    def add_noise(self, z: torch.Tensor, eps: torch.Tensor, level) -> torch.Tensor:
        """``x_t = a_t z + b_t eps``."""
        a, b = self.alpha_sigma(self.levels(level, z.shape[0]), z.dim())
        return a * z + b * eps

    def ddim_step(self, x_t: torch.Tensor, level, to_level, eps: torch.Tensor, x0: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Move ``x_t`` from ``level`` to ``to_level`` along the predicted ``(x0, eps)``:
        ``a' x0 + b' eps`` (deterministic DDIM; for a flow prior, the Euler step of its ODE). Either
        direction (towards more noise is an inversion step); ``CLEAN`` lands on the clean estimate."""
        if x0 is None:
            a, b = self.alpha_sigma(self.levels(level, x_t.shape[0]), x_t.dim())
            x0 = (x_t - b * eps) / a
        a_p, b_p = self.alpha_sigma(self.levels(to_level, x_t.shape[0]), x_t.dim())
        return a_p * x0 + b_p * eps

    # ---- the denoiser ---------------------------------------------------------------------------

    def _denoise(self, x_t: torch.Tensor, level: torch.Tensor, cond: Conditioning, cameras) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - interface

    def predict(self, x_t: torch.Tensor, level, cond, cameras=None) -> Prediction:
        """One network call on ``x_t [N,C,h,w]`` at ``level [N]`` with ``cond`` (a ``Conditioning`` or a
        bare ``[N or 1,L,D]`` embedding), converted to ``(x0_hat, eps_hat)``. ``cameras`` (a
        ``CameraBatch`` of ``N``) reaches the prior. Not wrapped in ``no_grad``: SDS wraps it, LoRA
        training (VSD) does not."""
        N = x_t.shape[0]
        t = self.levels(level, N)
        cond = as_conditioning(cond).expand(N)
        out = self._denoise(x_t, t, cond, cameras)
        a, b = self.alpha_sigma(t, x_t.dim())
        return to_prediction(out[:, : x_t.shape[1]].to(x_t.device).float(), x_t.float(), a, b, self.parameterisation)

    def predict_guided(self, x_t: torch.Tensor, level, cond, uncond, guidance_scale: ScaleLike, cameras=None) -> Prediction:
        """Classifier-free guided prediction in ONE call of ``2B``: ``eps_u + s (eps_c - eps_u)``
        (``s`` a float or ``[B]``). Returns the guided ``eps`` and ``x0`` plus both branches; ``x0`` is
        combined the same way, which equals ``(x_t - b eps) / a`` and stays finite where ``a = 0``
        (a flow prior's noisiest level)."""
        B = x_t.shape[0]
        t = self.levels(level, B)
        cond, uncond = as_conditioning(cond).expand(B), as_conditioning(uncond).expand(B)
        pred = self.predict(torch.cat([x_t, x_t]), torch.cat([t, t]), Conditioning.cat([cond, uncond]), repeat_cameras(cameras, 2))
        eps_c, eps_u = pred.eps[:B], pred.eps[B:]
        x0 = cfg_combine(pred.x0[:B], pred.x0[B:], guidance_scale)  # affine in eps: no division by a
        return Prediction(cfg_combine(eps_c, eps_u, guidance_scale), x0, pred.a[:B], pred.b[:B], eps_c, eps_u)

    def predict_perp_neg(self, x_t: torch.Tensor, level, pos, uncond, negs: Sequence, neg_weights: torch.Tensor,
                         guidance_scale: ScaleLike, cameras=None) -> Prediction:
        """Perp-Neg guided prediction in one call of ``(2 + K) B`` (``cfg.perp_neg_combine``);
        ``negs`` K conditionings of ``B`` rows, ``neg_weights`` ``[B,K]``."""
        B, K = x_t.shape[0], len(negs)
        t = self.levels(level, B)
        conds = Conditioning.cat([as_conditioning(c).expand(B) for c in [pos, uncond, *negs]])
        pred = self.predict(torch.cat([x_t] * (2 + K)), t.repeat(2 + K), conds, repeat_cameras(cameras, 2 + K))
        e, x = pred.eps.split(B), pred.x0.split(B)
        eps = perp_neg_combine(e[0], e[1], list(e[2:]), neg_weights, guidance_scale)
        x0 = perp_neg_combine(x[0], x[1], list(x[2:]), neg_weights, guidance_scale)  # perp is homogeneous
        return Prediction(eps, x0, pred.a[:B], pred.b[:B], e[0], e[1])

    def predict_maybe_guided(self, x_t: torch.Tensor, level, cond, uncond=None, guidance_scale: ScaleLike = 1.0,
                             cameras=None) -> tuple[Prediction, int]:
        """CFG when there is an ``uncond`` and a scale other than 1, else the plain conditional
        prediction; returns it with the branches evaluated per sample (1 or 2)."""
        if uncond is None or (not torch.is_tensor(guidance_scale) and float(guidance_scale) == 1.0):
            return self.predict(x_t, level, cond, cameras), 1
        return self.predict_guided(x_t, level, cond, uncond, guidance_scale, cameras), 2

    @torch.no_grad()
    def sample(self, cond, uncond=None, guidance_scale: ScaleLike = 1.0, n_steps: int = 50,
               generator: Optional[torch.Generator] = None, x_T: Optional[torch.Tensor] = None, frames: int = 0,
               frame_noise_share: float = 0.0) -> torch.Tensor:
        """Deterministic text-to-image sampling (DDIM, or Euler for a flow prior) over ``n_steps``
        evenly spaced levels -> images ``[B,3,H,W]`` in [0,1]; for looking at a prior, not used by
        the objectives. ``cond`` sets the batch size. A video prior samples ``frames``-frame clips
        ``[B,3,F,H,W]`` (pixel priors; a latent video is decoded frame by frame), from starting noise
        whose frames share ``frame_noise_share`` of their variance (``clip_noise``)."""
        cond = as_conditioning(cond)
        B = len(cond)
        R = self.latent_resolution
        shape = (B, self.latent_channels, frames, R, R) if self.video else (B, self.latent_channels, R, R)
        if self.video and frames < 1:
            raise ValueError("sampling a video prior needs frames >= 1")
        if x_T is None:
            x_T = clip_noise(shape, frame_noise_share, generator) if self.video else torch.randn(shape, generator=generator)
        x = x_T.to(self.device)
        ts = torch.linspace(self.levels.n - 1, 0, int(n_steps)).round().long().tolist() + [CLEAN]
        for cur, nxt in zip(ts[:-1], ts[1:]):
            pred, _ = self.predict_maybe_guided(x, cur, cond, uncond, guidance_scale)
            x = self.ddim_step(x, cur, nxt, pred.eps, x0=pred.x0)
        if self.video:
            img = self.decode(x.transpose(1, 2).reshape(-1, x.shape[1], *x.shape[3:]))
            return img.reshape(B, frames, 3, *img.shape[-2:]).transpose(1, 2)
        return self.decode(x)

    # ---- images <-> model space -------------------------------------------------------------

    def encode(self, rgb01: torch.Tensor, mode: Optional[str] = None, resolution: Optional[int] = None) -> torch.Tensor:
        """Render ``[B,3,H,W]`` in [0,1] -> model-space ``z`` (float32), differentiable: bilinear
        resize, ``2x - 1``; latent models encode with the VAE (posterior ``sample`` or ``mean``) and
        apply ``(z - shift) * scale``."""
        R = int(resolution or self.resolution)
        x = rgb01
        if x.shape[-2:] != (R, R):
            x = F.interpolate(x, (R, R), mode="bilinear", align_corners=False)
        x = x * 2.0 - 1.0
        if self.vae is None:
            return x.float()
        mode = mode or self.cfg.encode_mode
        with self._running(self.vae) as vae:
            dist = vae.encode(x.to(self._exec_device, weight_dtype(vae))).latent_dist
            z = dist.sample() if mode == "sample" else dist.mean
        return ((z.float() - self.shift_factor) * self.scaling_factor).to(rgb01.device)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Model-space ``z`` -> image ``[B,3,H,W]`` in [0,1] (differentiable; expensive for SD)."""
        if self.vae is None:
            return ((z[:, :3] + 1.0) / 2.0).clamp(0, 1)
        with self._running(self.vae) as vae:
            x = vae.decode((z / self.scaling_factor + self.shift_factor).to(self._exec_device, weight_dtype(vae))).sample
        return ((x.float() + 1.0) / 2.0).clamp(0, 1).to(z.device)

    @contextlib.contextmanager
    def _running(self, module):
        """Model-level CPU offload: move ``module`` to the execution device for the call."""
        if module is None or not self.cfg.cpu_offload:
            yield module
            return
        module.to(self._exec_device)
        try:
            yield module
        finally:
            module.to(self._home)

    # ---- text -------------------------------------------------------------------------------

    def _embed(self, prompts: list[str]) -> Conditioning:
        raise NotImplementedError  # pragma: no cover - interface

    def _tokenizer(self, subfolder: str):
        if subfolder not in self._tokenizers:
            self._tokenizers[subfolder] = self.folder.load_tokenizer(subfolder)
        return self._tokenizers[subfolder]

    @staticmethod
    def _max_length(tok, default: int) -> int:
        """The tokenizer's length limit, ``default`` where it declares none (or the "unlimited" sentinel)."""
        n = int(getattr(tok, "model_max_length", default) or default)
        return default if n > 100_000 else n

    def _text_encoder(self, subfolder: str):
        if subfolder not in self._text:
            self._text[subfolder] = self.folder.load_text_encoder(subfolder, self.device)
            self.text_encoder_loads += 1
        return self._text[subfolder]

    @property
    def text_encoder_loaded(self) -> bool:
        return bool(self._text)

    def free_text_encoder(self) -> None:
        """Drop the text encoders (T5-XXL is ~9 GB in fp16); they reload if needed again."""
        if self._text:
            self._text = {}
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _tokenize(self, tok, prompts: list[str], max_length: int) -> dict:
        """Pad to ``max_length``; longer prompts are cut with a ``PromptTruncatedWarning``."""
        for p, ids in zip(prompts, tok(prompts, padding=False, truncation=False)["input_ids"]):
            if len(ids) > max_length:
                warnings.warn(
                    f"prompt {p!r} is {len(ids)} tokens long, more than the text encoder's {max_length}; "
                    f"it was truncated to {max_length} tokens",
                    PromptTruncatedWarning,
                    stacklevel=3,
                )
        return tok(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Conditioning:
        """The conditioning of each prompt (``[N, ...]``, float32, on ``device``)."""
        return self._embed([str(p) for p in prompts]).map(lambda t: t.float())

    def text_fingerprint(self) -> str:
        """Identifies the text encoders and tokenizers, for the prompt-embedding cache key."""
        return self.folder.text_fingerprint(self._text_subfolders)

    # ---- identity -----------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.cfg.model

    def space(self) -> tuple:
        """What a model input means: latent or pixel, channels, VAE factor, scale and shift."""
        return (self.is_latent, self.latent_channels, self.vae_scale_factor, round(self.scaling_factor, 6), round(self.shift_factor, 6))

    def __deepcopy__(self, memo):  # shared, never copied (e.g. when a guidance module is deep-copied)
        return self

    def __repr__(self) -> str:
        kind = "latent" if self.is_latent else "pixel"
        return f"{type(self).__name__}({self.model_id!r}, {kind}, {self.parameterisation}, {self.dtype}, {self.device})"


def repeat_cameras(cameras, n: int):
    """``cameras`` repeated ``n`` times along the batch (the branches of one batched call), or None."""
    if cameras is None or n == 1:
        return cameras
    return cameras[torch.arange(len(cameras)).repeat(n)]


__all__ = ["CLEAN", "Conditioning", "NoiseLevels", "Prediction", "Prior", "as_conditioning", "parameterise", "repeat_cameras", "to_prediction"]
