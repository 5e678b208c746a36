"""``DiffusionPrior``: one wrapper around a diffusers text-to-image model, shared by all objectives.

It loads a diffusers model folder or hub id through ``from_pretrained``: Stable Diffusion
1.5 / 2.1-base (latent space, ``AutoencoderKL``, CLIP text encoder), DeepFloyd IF stage I (pixel
space, T5 text encoder, 6 output channels of which the first 3 are epsilon), and any pixel-space
UNet folder without a VAE (the toy prior in ``assets/toy-prior``).

Everything an objective needs is expressed in DESIGN.md's terms: the forward process
``x_t = a_t * z + b_t * eps`` (``alpha_sigma``), and a prediction returned as the pair
``(x0_hat, eps_hat)`` whatever the network predicts (epsilon, v or x0). Objectives never touch a
scheduler's tables.

Classifier-free guidance is written one way: ``eps_u + s * (eps_c - eps_u)`` (diffusers' form).
A scale taken from a paper or codebase that wrote ``eps_c + s * (eps_c - eps_u)`` (DreamFusion,
threestudio's SDS and IF guidance) ports as ``s + 1``: threestudio's ``guidance_scale: 100`` is 101 here.

The prior is deliberately *not* an ``nn.Module``: a guidance holds it as a plain attribute, so its
weights never enter a ``state_dict``, an optimizer or Lightning's device/dtype moves. ``get_prior``
loads each (model, dtype, device) once per process.

diffusers and transformers are imported inside functions only.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root (the parent of the ``threedgen`` package); relative model folders such as
``assets/toy-prior`` are looked up here after the current directory."""

ScaleLike = Union[float, torch.Tensor]


class PriorNotFoundError(FileNotFoundError):
    """The model folder or hub id could not be found; the message says where we looked."""


class PromptTruncatedWarning(UserWarning):
    """A prompt was longer than the tokenizer's maximum length and was cut."""


@dataclass
class PriorConfig:
    model: str = "assets/toy-prior"
    """Local diffusers folder (relative to the current directory, then to the repository root) or a
    hub id such as ``stabilityai/stable-diffusion-2-1-base`` (must already be in the HF cache when
    ``HF_HUB_OFFLINE=1``)."""
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """Weight dtype; ``auto`` is fp16 on a GPU and fp32 on a CPU."""
    device: str = "auto"
    """``auto`` (cuda if available, else cpu), ``cpu``, ``cuda``, ``cuda:1``, ..."""
    variant: Optional[str] = None
    """Weight file variant passed to ``from_pretrained`` (e.g. ``fp16`` for DeepFloyd IF)."""
    revision: Optional[str] = None
    cpu_offload: bool = False
    """Keep the UNet and VAE on the CPU and move each to the GPU only while it runs (saves memory,
    costs a transfer per call). The text encoder is always loaded only when needed and freed after."""
    resolution: Optional[int] = None
    """Image size the render is resized to before encoding; default ``unet.config.sample_size`` times
    the VAE's downsampling factor (512 for SD 2.1-base, 64 for IF stage I)."""
    encode_mode: Literal["sample", "mean"] = "sample"
    """Latent models: take a sample of the VAE posterior (threestudio) or its mean."""
    scheduler: Literal["ddim", "ddpm"] = "ddim"
    """Scheduler class loaded from ``scheduler/`` (exposed as ``prior.scheduler`` for sampling code;
    objectives use ``alpha_sigma``/``ddim_step`` instead)."""


@dataclass
class Prediction:
    """A denoiser output in (x0_hat, eps_hat) terms.

    ``eps``/``x0`` are the guided prediction (after CFG when it was applied); ``eps_cond`` and
    ``eps_uncond`` are the two branches of a CFG call (``None`` for a plain ``predict``).
    All float32, shaped like ``x_t``.
    """

    eps: torch.Tensor
    x0: torch.Tensor
    eps_cond: Optional[torch.Tensor] = None
    eps_uncond: Optional[torch.Tensor] = None


# ---- guidance algebra (pure functions) ----------------------------------------------------------


def _per_sample(s: ScaleLike, like: torch.Tensor) -> ScaleLike:
    if torch.is_tensor(s) and s.dim() > 0:
        return s.to(like).view(-1, *([1] * (like.dim() - 1)))
    return float(s)


def cfg_combine(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: ScaleLike) -> torch.Tensor:
    """``eps_u + s * (eps_c - eps_u)`` (the one CFG convention; a paper's ``eps_c + s(eps_c - eps_u)``
    scale ports as ``s + 1``). ``scale`` is a float or a per-sample tensor [B]."""
    return eps_uncond + _per_sample(scale, eps_cond) * (eps_cond - eps_uncond)


def perpendicular_component(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per sample, the part of ``x`` orthogonal to ``y``: ``x - <x,y>/<y,y> * y``."""
    dims = tuple(range(1, x.dim()))
    coef = (x * y).sum(dims, keepdim=True) / (y * y).sum(dims, keepdim=True).clamp_min(eps)
    return x - coef * y


def perp_neg_combine(
    eps_pos: torch.Tensor,
    eps_uncond: torch.Tensor,
    eps_negs: list[torch.Tensor],
    neg_weights: torch.Tensor,
    scale: ScaleLike,
) -> torch.Tensor:
    """Perp-Neg guidance (Armandpour et al. 2023, as in threestudio):
    ``eps_u + s * (e_pos + sum_i w_i * perp(eps_neg_i - eps_u, e_pos))`` with ``e_pos = eps_pos - eps_u``.

    ``neg_weights`` is [B, K] (negative numbers push away from the negative view prompt)."""
    e_pos = eps_pos - eps_uncond
    acc = torch.zeros_like(e_pos)
    for i, eps_neg in enumerate(eps_negs):
        w = neg_weights[:, i].to(e_pos).view(-1, *([1] * (e_pos.dim() - 1)))
        acc = acc + w * perpendicular_component(eps_neg - eps_uncond, e_pos)
    return eps_uncond + _per_sample(scale, e_pos) * (e_pos + acc)


# ---- locating and loading ------------------------------------------------------------------------


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set (read now, not at import time)."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if env.strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub always ships with diffusers
        return False


def _looks_like_hub_id(model: str) -> bool:
    """``owner/name``: exactly one slash, not an explicit relative or absolute path."""
    return model.count("/") == 1 and not model.startswith((".", "/", "~")) and "\\" not in model and not model.endswith("/")


def resolve_model(model: str, revision: Optional[str] = None) -> tuple[str, bool]:
    """``(location, is_local)``: an absolute folder path, or the hub id when it is in the HF cache.

    Local folders are tried relative to the current directory, then to the repository root. A
    string that names no folder is treated as a hub id; it must be in the Hugging Face cache when
    the hub is offline. Raises ``PriorNotFoundError`` naming every place looked at.
    """
    p = Path(model).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, REPO_ROOT / p]
    for c in candidates:
        if c.is_dir():
            c = c.resolve()
            if not (c / "unet" / "config.json").is_file():
                raise PriorNotFoundError(
                    f"diffusion prior folder {str(c)!r} has no unet/ subfolder (looked for "
                    f"{str(c / 'unet' / 'config.json')!r}); a prior folder is in diffusers layout: "
                    "model_index.json, unet/, scheduler/, text_encoder/, tokenizer/ and, for latent "
                    "models, vae/"
                )
            return str(c), True
    looked = " and ".join(repr(str(c)) for c in dict.fromkeys(candidates))
    if not _looks_like_hub_id(model):
        raise PriorNotFoundError(f"diffusion prior {model!r} not found: no folder at {looked}")
    if _hub_file(model, "model_index.json", revision) is None:
        offline = hub_offline()
        how = (
            "HF_HUB_OFFLINE=1 is set, so nothing is fetched"
            if offline
            else "fetching it from the hub failed (no network?)"
        )
        raise PriorNotFoundError(
            f"diffusion prior {model!r} not found: no folder at {looked}, and as a Hugging Face hub "
            f"id its model_index.json is not in the local HF cache ({how}). Hub models must be in the "
            f"HF cache first (e.g. `hf download {model}` on a machine with network, then "
            "copy ~/.cache/huggingface), or point `model` at a local diffusers folder"
        )
    return model, False


def _hub_file(repo_id: str, filename: str, revision: Optional[str]) -> Optional[str]:
    """Path of a hub file from the local cache (or downloaded when online); None if unavailable."""
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    try:
        cached = try_to_load_from_cache(repo_id, filename, revision=revision)
    except Exception:
        cached = None
    if isinstance(cached, str):
        return cached
    if hub_offline():
        return None
    try:
        return hf_hub_download(repo_id, filename, revision=revision)
    except Exception as e:  # network errors, gated repos, missing repos
        log.warning("could not fetch %s from hub repo %s: %s", filename, repo_id, e)
        return None


def _resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _freeze(module):
    module.requires_grad_(False)
    module.eval()
    return module


class DiffusionPrior:
    """A frozen diffusers text-to-image model in (a_t, b_t, x0_hat, eps_hat) terms.

    Shapes: images ``[B,3,H,W]`` in [0,1]; latents/model inputs ``z``, ``x_t`` ``[B,C,h,w]``
    (``C = latent_channels``; pixel models use the image itself in [-1,1]); timesteps ``t`` are
    integer indices ``[B]`` into the training schedule (0 .. ``num_train_timesteps``-1; -1 means
    "clean", a = 1, b = 0); text embeddings ``[B,L,D]``.
    """

    def __init__(self, cfg: PriorConfig, device: Optional[Union[str, torch.device]] = None):
        import diffusers

        self.cfg = cfg
        self.device = _resolve_device(cfg.device) if device is None else torch.device(device)
        self.dtype = _resolve_dtype(cfg.dtype, self.device)
        self.location, self.is_local = resolve_model(cfg.model, cfg.revision)
        self.model_id = cfg.model
        self._index = self._read_index()
        self._load_kw = dict(variant=cfg.variant, revision=cfg.revision)
        if not self.is_local and hub_offline():
            self._load_kw["local_files_only"] = True
        self._exec_device = self.device
        self._home = torch.device("cpu") if cfg.cpu_offload else self.device

        unet_cls = self._component_class("unet", diffusers, "UNet2DConditionModel")
        self.unet = _freeze(self._load(unet_cls, "unet")).to(self._home)
        self.vae = None
        if self._has_component("vae"):
            vae_cls = self._component_class("vae", diffusers, "AutoencoderKL")
            self.vae = _freeze(self._load(vae_cls, "vae")).to(self._home)
        sched_cls = {"ddim": diffusers.DDIMScheduler, "ddpm": diffusers.DDPMScheduler}[cfg.scheduler]
        if self.is_local and not (Path(self.location) / "scheduler").is_dir():
            raise PriorNotFoundError(
                f"diffusion prior folder {self.location!r} has no scheduler/ subfolder (looked for "
                f"{str(Path(self.location) / 'scheduler' / 'scheduler_config.json')!r})"
            )
        self.scheduler = sched_cls.from_pretrained(
            self.location, subfolder="scheduler", **{k: v for k, v in self._load_kw.items() if k != "variant"}
        )
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.prediction_type = str(self.scheduler.config.prediction_type)
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"{self.model_id}: unsupported prediction_type {self.prediction_type!r}")
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(self.device, torch.float32)

        self.is_latent = self.vae is not None
        self.latent_channels = int(self.unet.config.in_channels)
        self.latent_resolution = int(self.unet.config.sample_size)
        if self.vae is not None:
            self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
            self.scaling_factor = float(self.vae.config.scaling_factor)
            shift = getattr(self.vae.config, "shift_factor", None)
            self.shift_factor = float(shift) if shift is not None else 0.0
        else:
            self.vae_scale_factor, self.scaling_factor, self.shift_factor = 1, 1.0, 0.0
        self.resolution = int(cfg.resolution or self.latent_resolution * self.vae_scale_factor)

        self._tokenizer = None
        self._text_encoder = None
        self.text_encoder_loads = 0
        """How many times the text encoder was loaded (tests use it to prove a cache hit)."""
        log.info(
            "loaded diffusion prior %s (%s, %s, %s, prediction %s, %d train steps, resolution %d)",
            self.model_id,
            "latent" if self.is_latent else "pixel",
            self.dtype,
            self.device,
            self.prediction_type,
            self.num_train_timesteps,
            self.resolution,
        )

    # ---- loading helpers ------------------------------------------------------------------------

    def _read_index(self) -> dict:
        if self.is_local:
            f = Path(self.location) / "model_index.json"
        else:
            path = _hub_file(self.location, "model_index.json", self.cfg.revision)
            f = Path(path) if path else None
        if f is not None and f.is_file():
            return json.loads(f.read_text())
        return {}

    def _has_component(self, name: str) -> bool:
        entry = self._index.get(name)
        if self.is_local:
            on_disk = (Path(self.location) / name / "config.json").is_file()
            return on_disk and (entry is None or (isinstance(entry, list) and entry[0] is not None))
        return isinstance(entry, list) and entry[0] is not None

    def _component_class(self, name: str, lib, default: str):
        entry = self._index.get(name)
        cls_name = entry[1] if isinstance(entry, list) and len(entry) == 2 and entry[1] else default
        return getattr(lib, cls_name, None) or getattr(lib, default)

    def _load(self, cls, subfolder: str, dtype_kw: str = "torch_dtype"):
        try:
            return cls.from_pretrained(self.location, subfolder=subfolder, **{dtype_kw: self.dtype}, **self._load_kw)
        except OSError as e:  # missing weight files, wrong variant: say which model and folder
            variant = f" (variant {self.cfg.variant!r}; set prior.variant=null for plain weights)" if self.cfg.variant else ""
            raise PriorNotFoundError(
                f"could not load {cls.__name__} from {self.location}/{subfolder}{variant}: {str(e).splitlines()[0]}"
            ) from None

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

    def __deepcopy__(self, memo):  # shared, never copied (e.g. when a guidance module is deep-copied)
        return self

    def __repr__(self) -> str:
        kind = "latent" if self.is_latent else "pixel"
        return f"DiffusionPrior({self.model_id!r}, {kind}, {self.dtype}, {self.device})"

    # ---- text ---------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            kw = {k: v for k, v in self._load_kw.items() if k != "variant"}
            self._tokenizer = AutoTokenizer.from_pretrained(self.location, subfolder="tokenizer", **kw)
        return self._tokenizer

    @property
    def text_encoder_loaded(self) -> bool:
        return self._text_encoder is not None

    @property
    def max_text_length(self) -> int:
        n = int(getattr(self.tokenizer, "model_max_length", 77) or 77)
        return 77 if n > 100_000 else n  # "unlimited" sentinel in some tokenizer configs

    def _load_text_encoder(self):
        if self._text_encoder is None:
            import transformers

            if self.is_local and not (Path(self.location) / "text_encoder" / "config.json").is_file():
                raise PriorNotFoundError(
                    f"diffusion prior folder {self.location!r} has no text_encoder/ (looked for "
                    f"{str(Path(self.location) / 'text_encoder' / 'config.json')!r}); it is needed to "
                    "embed prompts that are not in the embedding cache"
                )
            cls = self._component_class("text_encoder", transformers, "AutoModel")
            te = cls.from_pretrained(self.location, subfolder="text_encoder", dtype=self.dtype, **self._load_kw)
            self._text_encoder = _freeze(te).to(self.device)
            self.text_encoder_loads += 1
        return self._text_encoder

    def free_text_encoder(self) -> None:
        """Drop the text encoder (T5-XXL for IF is ~9 GB in fp16); it reloads if needed again."""
        if self._text_encoder is not None:
            self._text_encoder = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Embeddings ``[N, L, D]`` (float32, on ``device``) of ``prompts``, padded to the tokenizer's
        maximum length ``L``. Longer prompts are truncated with a ``PromptTruncatedWarning``."""
        prompts = [str(p) for p in prompts]
        tok = self.tokenizer
        L = self.max_text_length
        for p, ids in zip(prompts, tok(prompts, padding=False, truncation=False)["input_ids"]):
            if len(ids) > L:
                warnings.warn(
                    f"prompt {p!r} is {len(ids)} tokens long, more than the text encoder's {L}; "
                    f"it was truncated to {L} tokens",
                    PromptTruncatedWarning,
                    stacklevel=2,
                )
        batch = tok(prompts, padding="max_length", max_length=L, truncation=True, return_tensors="pt")
        te = self._load_text_encoder()
        ids = batch["input_ids"].to(self.device)
        kw = {}
        if "T5" in type(te).__name__ or getattr(te.config, "use_attention_mask", False):
            kw["attention_mask"] = batch["attention_mask"].to(self.device)
        out = te(ids, **kw)[0]
        return out.float()

    def text_fingerprint(self) -> str:
        """Identifies the text encoder + tokenizer weights, for the prompt-embedding cache key.

        Local folders: size and modification time of every file under ``text_encoder/`` and
        ``tokenizer/`` (so a retrained toy prior misses the cache). Hub ids: id, revision, variant.
        """
        if not self.is_local:
            return f"hub:{self.location}@{self.cfg.revision}:{self.cfg.variant}"
        parts = [f"local:{self.location}"]
        for sub in ("text_encoder", "tokenizer"):
            d = Path(self.location) / sub
            if d.is_dir():
                for f in sorted(d.rglob("*")):
                    if f.is_file():
                        st = f.stat()
                        parts.append(f"{f.relative_to(self.location)}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(parts)

    # ---- images <-> model space ---------------------------------------------------------------

    def encode(self, rgb01: torch.Tensor, mode: Optional[str] = None, resolution: Optional[int] = None) -> torch.Tensor:
        """Render ``[B,3,H,W]`` in [0,1] -> model-space ``z`` (float32), differentiable.

        Bilinear resize to the model resolution, then ``2x - 1``; latent models encode with the VAE
        (posterior ``sample`` or ``mean``) and multiply by ``scaling_factor``.
        """
        R = int(resolution or self.resolution)
        x = rgb01
        if x.shape[-2:] != (R, R):
            x = F.interpolate(x, (R, R), mode="bilinear", align_corners=False)
        x = x * 2.0 - 1.0
        if self.vae is None:
            return x.float()
        mode = mode or self.cfg.encode_mode
        with self._running(self.vae) as vae:
            dist = vae.encode(x.to(self._exec_device, vae.dtype)).latent_dist
            z = dist.sample() if mode == "sample" else dist.mean
        return ((z.float() - self.shift_factor) * self.scaling_factor).to(rgb01.device)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Model-space ``z`` -> image ``[B,3,H,W]`` in [0,1] (differentiable; expensive for SD)."""
        if self.vae is None:
            return ((z[:, :3] + 1.0) / 2.0).clamp(0, 1)
        with self._running(self.vae) as vae:
            x = vae.decode((z / self.scaling_factor + self.shift_factor).to(self._exec_device, vae.dtype)).sample
        return ((x.float() + 1.0) / 2.0).clamp(0, 1).to(z.device)

    # ---- forward process ------------------------------------------------------------------------

    def _t(self, t, batch: Optional[int] = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.device)
        if t.is_floating_point():
            t = t.round()
        t = t.long().reshape(-1)
        if batch is not None and t.numel() == 1 and batch != 1:
            t = t.expand(batch)
        return t

    def alpha_sigma(self, t, ndim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a_t, b_t) = (sqrt(abar_t), sqrt(1 - abar_t))`` shaped ``[B,1,...]`` (``ndim`` dims in all).
        ``t < 0`` means clean: ``(1, 0)``."""
        t = self._t(t)
        ac = self.alphas_cumprod[t.clamp(min=0)]
        ac = torch.where(t < 0, torch.ones_like(ac), ac)
        shape = (-1,) + (1,) * (ndim - 1)
        return ac.sqrt().view(shape), (1.0 - ac).clamp_min(0).sqrt().view(shape)

    def add_noise(self, z: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
        """``x_t = a_t * z + b_t * eps``."""
        a, b = self.alpha_sigma(self._t(t, z.shape[0]), z.dim())
        return a * z + b * eps

    def percent_to_timestep(self, p: float) -> int:
        """A noise level given as a fraction of the schedule -> timestep index ``floor(T * p)``,
        clamped to ``[0, T-1]``."""
        return int(min(max(int(self.num_train_timesteps * float(p)), 0), self.num_train_timesteps - 1))

    # ---- denoiser -------------------------------------------------------------------------------

    def _to_pred(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        out = out[:, : x_t.shape[1]].float()  # IF stage I: 6 channels = eps (3) + learned variance (3)
        a, b = self.alpha_sigma(t, x_t.dim())
        if self.prediction_type == "epsilon":
            eps = out
        elif self.prediction_type == "v_prediction":
            eps = a * out + b * x_t
        else:  # "sample"
            eps = (x_t - a * out) / b.clamp_min(1e-8)
        x0 = (x_t - b * eps) / a
        return Prediction(eps=eps, x0=x0)

    def predict(self, x_t: torch.Tensor, t, emb: torch.Tensor, **unet_kwargs) -> Prediction:
        """One UNet call on ``x_t [N,C,h,w]`` at timesteps ``t [N]`` with text ``emb [N or 1,L,D]``,
        converted to ``(x0_hat, eps_hat)`` (epsilon, v-prediction (``eps = a v + b x_t``) or x0
        models). Not wrapped in ``no_grad``: callers that do not backpropagate through the UNet
        (SDS) wrap it; LoRA training (VSD) does not."""
        N = x_t.shape[0]
        t = self._t(t, N)
        if emb.shape[0] == 1 and N > 1:
            emb = emb.expand(N, -1, -1)
        with self._running(self.unet) as unet:
            out = unet(
                x_t.to(self._exec_device, unet.dtype),
                t.to(self._exec_device),
                encoder_hidden_states=emb.to(self._exec_device, unet.dtype),
                **unet_kwargs,
            ).sample
        return self._to_pred(out.to(x_t.device), x_t.float(), t)

    def predict_eps(
        self, x_t: torch.Tensor, t, cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: ScaleLike
    ) -> Prediction:
        """Classifier-free guided prediction in ONE batched UNet call of ``2B``.

        ``eps = eps_u + s * (eps_c - eps_u)`` (diffusers' convention; a paper's
        ``eps_c + s * (eps_c - eps_u)`` scale ports as ``s + 1``). ``cond``/``uncond`` are
        ``[B or 1, L, D]``; ``guidance_scale`` a float or per-sample ``[B]``. Returns the guided
        ``eps`` and its ``x0`` plus both branches.
        """
        B = x_t.shape[0]
        t = self._t(t, B)
        cond = cond.expand(B, -1, -1) if cond.shape[0] == 1 else cond
        uncond = uncond.expand(B, -1, -1) if uncond.shape[0] == 1 else uncond
        pred = self.predict(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond.to(cond)]))
        eps_c, eps_u = pred.eps[:B], pred.eps[B:]
        eps = cfg_combine(eps_c, eps_u, guidance_scale)
        a, b = self.alpha_sigma(t, x_t.dim())
        return Prediction(eps=eps, x0=(x_t.float() - b * eps) / a, eps_cond=eps_c, eps_uncond=eps_u)

    def predict_eps_perp_neg(
        self,
        x_t: torch.Tensor,
        t,
        pos: torch.Tensor,
        uncond: torch.Tensor,
        negs: torch.Tensor,
        neg_weights: torch.Tensor,
        guidance_scale: ScaleLike,
    ) -> Prediction:
        """Perp-Neg guided prediction in one UNet call of ``(2 + K) B``.

        ``pos``/``uncond`` ``[B,L,D]``, ``negs`` ``[B,K,L,D]``, ``neg_weights`` ``[B,K]``
        (see ``perp_neg_combine``). ``eps_cond`` in the result is the positive branch."""
        B, K = x_t.shape[0], negs.shape[1]
        t = self._t(t, B)
        embs = torch.cat([pos, uncond.to(pos)] + [negs[:, k].to(pos) for k in range(K)])
        pred = self.predict(torch.cat([x_t] * (2 + K)), t.repeat(2 + K), embs)
        chunks = pred.eps.split(B)
        eps = perp_neg_combine(chunks[0], chunks[1], list(chunks[2:]), neg_weights, guidance_scale)
        a, b = self.alpha_sigma(t, x_t.dim())
        return Prediction(eps=eps, x0=(x_t.float() - b * eps) / a, eps_cond=chunks[0], eps_uncond=chunks[1])

    # ---- deterministic sampling / inversion (eta = 0) -------------------------------------------

    def ddim_step(self, x_t: torch.Tensor, t, t_prev, eps: torch.Tensor, x0: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Move ``x_t`` from noise level ``t`` to ``t_prev`` along the predicted ``(x0, eps)``:
        ``a_prev * x0 + b_prev * eps`` with ``x0 = (x_t - b_t eps) / a_t``. Works in either direction
        (``t_prev > t`` is a DDIM inversion step); ``t_prev = -1`` lands on the clean estimate."""
        if x0 is None:
            a, b = self.alpha_sigma(self._t(t, x_t.shape[0]), x_t.dim())
            x0 = (x_t - b * eps) / a
        a_p, b_p = self.alpha_sigma(self._t(t_prev, x_t.shape[0]), x_t.dim())
        return a_p * x0 + b_p * eps

    def _guided(self, x, t, cond, uncond, guidance_scale) -> Prediction:
        if uncond is None or (not torch.is_tensor(guidance_scale) and float(guidance_scale) == 1.0):
            return self.predict(x, t, cond)
        return self.predict_eps(x, t, cond, uncond, guidance_scale)

    @torch.no_grad()
    def ddim_invert(
        self,
        z: torch.Tensor,
        t_from: int,
        t_to: int,
        n_steps: int,
        cond: torch.Tensor,
        uncond: Optional[torch.Tensor] = None,
        guidance_scale: ScaleLike = 1.0,
        return_trajectory: bool = False,
    ):
        """Deterministic DDIM inversion (eta = 0) of ``z`` (at noise level ``t_from``; ``-1`` or ``0``
        for a clean latent) up to ``t_to`` in ``n_steps`` equal steps. The UNet is evaluated at each
        current level (at ``max(t, 0)``) with CFG when ``uncond`` is given and the scale is not 1.
        Returns ``x_{t_to}`` (and the list of intermediate states with ``return_trajectory``).
        The general form (per-sample levels, stride grids, eta) is ``guidance.inversion``."""
        from .inversion import invert_along

        ts = torch.linspace(float(t_from), float(t_to), int(n_steps) + 1).round().long()
        levels = ts.view(-1, 1).expand(-1, z.shape[0])
        inv = invert_along(self, z, levels, cond, uncond, guidance_scale, keep_trajectory=return_trajectory)
        return (inv.x, inv.trajectory) if return_trajectory else inv.x

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        uncond: Optional[torch.Tensor] = None,
        guidance_scale: ScaleLike = 1.0,
        n_steps: int = 50,
        generator: Optional[torch.Generator] = None,
        x_T: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Plain DDIM (eta = 0) text-to-image sampling -> images ``[B,3,H,W]`` in [0,1]; for checking
        a prior, not used by the objectives. ``cond`` ``[B,L,D]`` sets the batch size."""
        B = cond.shape[0]
        shape = (B, self.latent_channels, self.latent_resolution, self.latent_resolution)
        x = x_T if x_T is not None else torch.randn(shape, generator=generator).to(self.device)
        T = self.num_train_timesteps
        ts = torch.linspace(T - 1, 0, int(n_steps)).round().long().tolist() + [-1]
        for t_cur, t_next in zip(ts[:-1], ts[1:]):
            pred = self._guided(x, t_cur, cond, uncond, guidance_scale)
            x = self.ddim_step(x, t_cur, t_next, pred.eps, x0=pred.x0)
        return self.decode(x)


# ---- one instance per (model, dtype, device) ----------------------------------------------------

_PRIORS: dict[tuple, DiffusionPrior] = {}


def get_prior(cfg: PriorConfig, device: Optional[Union[str, torch.device]] = None) -> DiffusionPrior:
    """The shared ``DiffusionPrior`` for ``cfg``: loaded once per (model, dtype, device, variant,
    revision) and reused by every guidance. Per-call options (``encode_mode``, ``resolution``) of a
    later config are passed by the caller; ``cpu_offload`` and ``scheduler`` follow the first config."""
    dev = _resolve_device(cfg.device) if device is None else torch.device(device)
    location, _ = resolve_model(cfg.model, cfg.revision)
    key = (location, _resolve_dtype(cfg.dtype, dev), str(dev), cfg.variant, cfg.revision)
    prior = _PRIORS.get(key)
    if prior is None:
        prior = _PRIORS[key] = DiffusionPrior(cfg, device=dev)
    return prior


def clear_prior_cache() -> None:
    """Forget every shared prior (frees their memory once nothing else holds them)."""
    _PRIORS.clear()
    gc.collect()
