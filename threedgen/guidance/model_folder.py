"""Finding and loading a prior's diffusers folder: the config, hub resolution, dtype/device, and
``ModelFolder``, which loads the components a prior names (denoiser, VAE, tokenizers, text encoders).

A model is a local diffusers folder (relative to the current directory, then to the repository
root) or a hub id already in the Hugging Face cache. diffusers and transformers are imported
inside functions only.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch

log = logging.getLogger(__name__)

DENOISERS = ("unet", "transformer")
"""Subfolders that hold the denoising network, in the order they are looked for."""

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root (the parent of the ``threedgen`` package); relative model folders such as
``assets/toy-prior`` are looked up here after the current directory."""


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
    dtype: Literal["auto", "fast", "fp32", "fp16", "bf16"] = "auto"
    """Weight dtype; ``auto`` is fp16 on a GPU and fp32 on a CPU; ``fast`` is fp16 on a GPU, bf16 on a CPU that
    computes bfloat16 natively (AVX512-BF16 or AMX) and fp32 on other CPUs, where bf16 is emulated and slower."""
    device: str = "auto"
    """``auto`` (cuda if available, else cpu), ``cpu``, ``cuda``, ``cuda:1``, ..."""
    variant: Optional[str] = None
    """Weight file variant passed to ``from_pretrained`` (e.g. ``fp16`` for DeepFloyd IF)."""
    revision: Optional[str] = None
    cpu_offload: bool = False
    """Keep the UNet and VAE on the CPU and move each to the GPU only while it runs (saves memory,
    costs a transfer per call). The text encoder is always loaded only when needed and freed after."""
    compile: bool = False
    """``torch.compile`` the denoiser (UNet or transformer) in place. The first call compiles (the toy
    prior on one CPU thread: 74 s cold, 7 s from inductor's cache) and later calls run faster (its
    forward 1.35x; ``benchmarks/bench_floor.py --compile`` measures a recipe with and without), so it
    pays only over long runs. Not with ``cpu_offload`` (each move would recompile)."""
    cuda_graph: bool = False
    """On a GPU, replay the denoiser's no-grad calls as CUDA graphs, one per input shape
    (``threedgen/guidance/cuda_graphs.py``): the host launches a whole forward at once instead of its operators
    one by one (about 1,200 for SD 2.1's UNet), with no compile time. No effect on a CPU. Not with ``cpu_offload``
    (the weights move) nor with ``compile`` (which traces the denoiser itself)."""
    resolution: Optional[int] = None
    """Image size the render is resized to before encoding; default the denoiser's ``sample_size`` times
    the VAE's downsampling factor (512 for SD 2.1-base, 64 for IF stage I)."""
    controlnet: Optional[str] = None
    """A diffusers ``ControlNetModel`` (local folder or cached hub id, e.g. a depth ControlNet of the
    prior's base) applied in every denoiser call; None: the prior folder's own ``controlnet/``
    subfolder when it has one (the ControlNet pipelines' layout), else no ControlNet."""
    controlnet_scale: float = 1.0
    """The ControlNet residuals' weight (diffusers' ``controlnet_conditioning_scale``)."""
    encode_mode: Literal["sample", "mean"] = "sample"
    """Latent models: take a sample of the VAE posterior (threestudio) or its mean."""
    scheduler: Literal["ddim", "ddpm"] = "ddim"
    """Scheduler class loaded from ``scheduler/`` (exposed as ``prior.scheduler`` for sampling code;
    objectives use ``alpha_sigma``/``ddim_step`` instead)."""

    def __post_init__(self):
        for a, b, why in (("compile", "cpu_offload", "every move between devices would recompile the denoiser"),
                          ("cuda_graph", "cpu_offload", "the graphs would replay on the weights' old addresses"),
                          ("cuda_graph", "compile", "the graphs record the eager denoiser; a compiled one is traced by torch.compile")):
            if getattr(self, a) and getattr(self, b):
                raise ValueError(f"prior.{a} and prior.{b} do not go together ({why}); set one of them to false")


VIDEO_UNETS = ("UNet3DConditionModel", "UNetMotionModel")
"""diffusers classes of text-to-video UNets (zeroscope / ModelScope; AnimateDiff)."""


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


def resolve_model(model: str, revision: Optional[str] = None, single: bool = False) -> tuple[str, bool]:
    """``(location, is_local)``: an absolute folder path, or the hub id when it is in the HF cache.
    ``single``: the folder is one model (``config.json`` at its root, e.g. a ControlNet), not a pipeline.

    Local folders are tried relative to the current directory, then to the repository root. A
    string that names no folder is treated as a hub id; it must be in the Hugging Face cache when
    the hub is offline. Raises ``PriorNotFoundError`` naming every place looked at.
    """
    p = Path(model).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, REPO_ROOT / p]
    for c in candidates:
        if c.is_dir():
            c = c.resolve()
            if single and not (c / "config.json").is_file():
                raise PriorNotFoundError(f"model folder {str(c)!r} has no config.json; a single diffusers model "
                                         "(e.g. a ControlNet) is a folder with config.json and its weights")
            if not single and not any((c / d / "config.json").is_file() for d in DENOISERS):
                raise PriorNotFoundError(
                    f"diffusion prior folder {str(c)!r} has no unet/ or transformer/ subfolder (looked for "
                    f"{str(c / 'unet' / 'config.json')!r}); a prior folder is in diffusers layout: "
                    "model_index.json, unet/ (or transformer/), scheduler/, text_encoder/, tokenizer/ and, "
                    "for latent models, vae/"
                )
            return str(c), True
    looked = " and ".join(repr(str(c)) for c in dict.fromkeys(candidates))
    if not _looks_like_hub_id(model):
        raise PriorNotFoundError(f"diffusion prior {model!r} not found: no folder at {looked}")
    if _hub_file(model, "config.json" if single else "model_index.json", revision) is None:
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


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name in ("auto", "fast") and device.type == "cuda":
        return torch.float16
    if name == "auto":
        return torch.float32
    if name == "fast":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 on this CPU in hardware (on the 2-core dev machine's AVX512-BF16 the toy
    prior's forward is 1.3x faster than in float32; emulated elsewhere, it is slower)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def weight_dtype(module) -> torch.dtype:
    """The dtype of ``module``'s first floating-point parameter: what its inputs are cast to. diffusers'
    ``ModelMixin.dtype`` gives the same for the models loaded here, but walks every submodule looking for
    casting hooks on each read (0.7 ms on the toy UNet, every denoiser call); this reads one parameter."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def freeze(module):
    module.requires_grad_(False)
    module.eval()
    return module


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not readable JSON ({str(err).splitlines()[0]}); the model folder is damaged") from None


class ModelFolder:
    """One diffusers model (folder or cached hub id) and the loading of its components.

    ``load`` turns a missing weight file into a ``PriorNotFoundError`` naming the model and subfolder.
    """

    def __init__(self, cfg: "PriorConfig", dtype: torch.dtype, single: bool = False):
        self.cfg = cfg
        self.dtype = dtype
        self.location, self.is_local = resolve_model(cfg.model, cfg.revision, single)
        self.index = {} if single else self._read_index()
        self.load_kw = dict(variant=cfg.variant, revision=cfg.revision)
        if not self.is_local and hub_offline():
            self.load_kw["local_files_only"] = True

    def _read_index(self) -> dict:
        if self.is_local:
            f = Path(self.location) / "model_index.json"
        else:
            path = _hub_file(self.location, "model_index.json", self.cfg.revision)
            f = Path(path) if path else None
        if f is not None and f.is_file():
            return json.loads(f.read_text())
        return {}

    def config(self, subfolder: str, name: str = "config.json") -> dict:
        """A component's JSON config (``{}`` when absent)."""
        if self.is_local:
            f = Path(self.location) / subfolder / name
            return json.loads(f.read_text()) if f.is_file() else {}
        path = _hub_file(self.location, f"{subfolder}/{name}", self.cfg.revision)
        return json.loads(Path(path).read_text()) if path else {}

    def vocabulary(self) -> Optional[frozenset]:
        """The words the model was trained on, when its folder lists them in ``vocabulary.txt`` (one per
        line; the toy priors do): a prompt with other words is refused rather than embedded as noise."""
        f = Path(self.location) / "vocabulary.txt" if self.is_local else None
        if f is None or not f.is_file():
            return None
        return frozenset(w.strip().lower() for w in f.read_text().split() if w.strip())

    def is_video(self) -> bool:
        """Whether ``unet/`` holds a text-to-video UNet (read from its config, nothing loaded)."""
        return self.config("unet").get("_class_name") in VIDEO_UNETS

    def check_text_pairs(self) -> None:
        """ValueError when a local tokenizer has token ids beyond its text encoder's embedding table
        (``tokenizer.json`` vs ``text_encoder/config.json``; likewise ``_2`` and ``_3``): the pair does
        not belong together, and embedding a prompt would fail with an index error at the first step."""
        if not self.is_local:
            return
        root = Path(self.location)
        for suffix in ("", "_2", "_3"):
            tok, enc = root / f"tokenizer{suffix}" / "tokenizer.json", root / f"text_encoder{suffix}" / "config.json"
            if not (tok.is_file() and enc.is_file()):
                continue
            t, e = _read_json(tok), _read_json(enc)
            vocab = t.get("model", {}).get("vocab")
            ids = list(vocab.values()) if isinstance(vocab, dict) else []
            ids += [a.get("id", 0) for a in t.get("added_tokens", [])]
            size = e.get("vocab_size") or e.get("text_config", {}).get("vocab_size")
            if ids and size and max(ids) >= int(size):
                raise ValueError(f"{tok} has token ids up to {max(ids)} but {enc} embeds only {size} tokens: the tokenizer "
                                 "is not the one this text encoder was trained with; copy both from the same model")

    def has(self, name: str) -> bool:
        entry = self.index.get(name)
        if self.is_local:
            on_disk = (Path(self.location) / name / "config.json").is_file()
            return on_disk and (entry is None or (isinstance(entry, list) and entry[0] is not None))
        return isinstance(entry, list) and entry[0] is not None

    def component_class(self, name: str, lib, default: str):
        entry = self.index.get(name)
        cls_name = entry[1] if isinstance(entry, list) and len(entry) == 2 and entry[1] else default
        return getattr(lib, cls_name, None) or getattr(lib, default)

    def load(self, cls, subfolder: Optional[str], dtype_kw: str = "torch_dtype"):
        """``cls.from_pretrained`` of ``subfolder`` (None: the folder itself is the model, e.g. a ControlNet repo)."""
        sub = {"subfolder": subfolder} if subfolder else {}
        try:
            return cls.from_pretrained(self.location, **sub, **{dtype_kw: self.dtype}, **self.load_kw)
        except OSError as e:  # missing weight files, wrong variant: say which model and folder
            variant = f" (variant {self.cfg.variant!r}; set prior.variant=null for plain weights)" if self.cfg.variant else ""
            raise PriorNotFoundError(
                f"could not load {cls.__name__} from {self.location}/{subfolder or ''}{variant}: {str(e).splitlines()[0]}"
            ) from None

    def load_scheduler(self, cls):
        if self.is_local and not (Path(self.location) / "scheduler").is_dir():
            raise PriorNotFoundError(
                f"diffusion prior folder {self.location!r} has no scheduler/ subfolder (looked for "
                f"{str(Path(self.location) / 'scheduler' / 'scheduler_config.json')!r})"
            )
        return cls.from_pretrained(self.location, subfolder="scheduler", **{k: v for k, v in self.load_kw.items() if k != "variant"})

    def load_tokenizer(self, subfolder: str):
        from transformers import AutoTokenizer

        kw = {k: v for k, v in self.load_kw.items() if k != "variant"}
        return AutoTokenizer.from_pretrained(self.location, subfolder=subfolder, **kw)

    def load_text_encoder(self, subfolder: str, device: torch.device):
        import transformers

        if self.is_local and not (Path(self.location) / subfolder / "config.json").is_file():
            raise PriorNotFoundError(
                f"diffusion prior folder {self.location!r} has no {subfolder}/ (looked for "
                f"{str(Path(self.location) / subfolder / 'config.json')!r}); it is needed to "
                "embed prompts that are not in the embedding cache"
            )
        cls = self.component_class(subfolder, transformers, "AutoModel")
        te = cls.from_pretrained(self.location, subfolder=subfolder, dtype=self.dtype, **self.load_kw)
        return freeze(te).to(device)

    def text_fingerprint(self, subfolders) -> str:
        """Identifies the text encoders and tokenizers, for the prompt-embedding cache key.

        Local folders: size and modification time of every file under the given subfolders (so a
        retrained toy prior misses the cache). Hub ids: id, revision, variant.
        """
        if not self.is_local:
            return f"hub:{self.location}@{self.cfg.revision}:{self.cfg.variant}"
        parts = [f"local:{self.location}"]
        for sub in subfolders:
            d = Path(self.location) / sub
            if d.is_dir():
                for f in sorted(d.rglob("*")):
                    if f.is_file():
                        st = f.stat()
                        parts.append(f"{f.relative_to(self.location)}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(parts)
