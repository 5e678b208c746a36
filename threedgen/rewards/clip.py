"""CLIP as a differentiable critic: ``loss = 1 - cos(image embedding, text embedding)`` per view, averaged.

The cheaper reward of ``docs/rewards.md`` (DreamFields, VP3D's CLIP
variant). The image goes through the processor's steps in torch so the gradient reaches the renders:
resize the short side (bicubic, antialiased), centre crop, normalise with the processor's mean and std.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from ..guidance.model_folder import resolve_device, resolve_model
from .base import Critic, shared_model


@dataclass(frozen=True)
class ClipImageSpec:
    size: int = 224
    crop: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @classmethod
    def load(cls, folder: str | Path) -> "ClipImageSpec":
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            raise ValueError(f"CLIP folder {str(folder)!r} has no preprocessor_config.json (the image size, crop, mean and std)")
        raw = json.loads(path.read_text())
        size, crop = raw.get("size", cls.size), raw.get("crop_size", cls.crop)
        size = size.get("shortest_edge", size.get("height", cls.size)) if isinstance(size, dict) else size
        crop = crop.get("height", cls.crop) if isinstance(crop, dict) else crop
        return cls(int(size), int(crop), tuple(raw.get("image_mean", cls.mean)), tuple(raw.get("image_std", cls.std)))


def clip_pixels(images: torch.Tensor, spec: ClipImageSpec) -> torch.Tensor:
    """``[B,3,H,W]`` in [0,1] -> CLIP's normalised ``[B,3,crop,crop]``, differentiable."""
    H, W = images.shape[-2:]
    s = spec.size / min(H, W)
    h, w = max(spec.crop, round(H * s)), max(spec.crop, round(W * s))
    x = F.interpolate(images, size=(h, w), mode="bicubic", align_corners=False, antialias=s < 1)
    top, left = (h - spec.crop) // 2, (w - spec.crop) // 2
    x = x[..., top : top + spec.crop, left : left + spec.crop]
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - mean) / std


class ClipCritic(Critic):
    @dataclass
    class Config:
        model: str = "openai/clip-vit-base-patch16"
        """A transformers CLIP folder (or cached hub id) with its tokenizer and ``preprocessor_config.json``."""
        dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
        device: str = "auto"
        template: str = "{prompt}"
        """The text embedded for the prompt (e.g. ``a 3D render of {prompt}``)."""

    def __init__(self, cfg: "ClipCritic.Config"):
        super().__init__()
        if "{prompt}" not in cfg.template:
            raise ValueError(f"critic.template must contain {{prompt}}, got {cfg.template!r}")
        self.cfg = cfg
        location, _ = resolve_model(cfg.model, single=True)
        self.spec = ClipImageSpec.load(location)
        dev = resolve_device(cfg.device)
        dtype = {"auto": torch.float16 if dev.type == "cuda" else torch.float32, "fp32": torch.float32,
                 "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.dtype]
        model, self.tokenizer = shared_model((location, str(dtype), str(dev), "clip"), lambda: _load(location, dtype, dev))
        self.hold(model)
        self._text: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def text_embedding(self, prompt: str) -> torch.Tensor:
        if prompt not in self._text:
            tok = self.tokenizer([self.cfg.template.format(prompt=prompt)], padding=True, truncation=True, return_tensors="pt")
            dev = next(self.model.parameters()).device
            emb = self.model.get_text_features(**{k: v.to(dev) for k, v in tok.items()})
            emb = getattr(emb, "pooler_output", emb)
            self._text[prompt] = F.normalize(emb.float(), dim=-1)
        return self._text[prompt]

    def forward(self, images: torch.Tensor, prompt: str, cameras=None) -> dict:
        model = self.model
        x = clip_pixels(images.clamp(0, 1).float(), self.spec).to(next(model.parameters()).device, model.dtype)
        emb = model.get_image_features(pixel_values=x)
        emb = F.normalize(getattr(emb, "pooler_output", emb).float(), dim=-1)
        cos = (emb * self.text_embedding(prompt)).sum(-1)
        return {"loss": (1 - cos).mean(), "cos": cos.mean().detach()}


def _load(location: str, dtype: torch.dtype, device: torch.device):
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(location, dtype=dtype).to(device)
    model.requires_grad_(False)
    model.eval()
    return model, AutoTokenizer.from_pretrained(location)
