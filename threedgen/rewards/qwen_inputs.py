"""Qwen2-VL / Qwen2.5-VL inputs built in torch, so a reward's gradient reaches the renders.

The stock image processor goes through NumPy/PIL and detaches; this module does the same steps on
tensors (``docs/rewards.md`` describes them):

1. ``target_size``: the processor's ``smart_resize`` — each side rounded to a multiple of
   ``patch_size * merge_size`` (28), the pixel count kept within ``[min_pixels, max_pixels]``;
2. ``pixel_values``: bicubic resize (antialiased when shrinking), normalise with the processor's
   mean and std, then patchify exactly as the processor lays patches out: per merged 2x2 block of
   14-pixel patches, each patch flattened as (channel, temporal, row, column) with the single
   frame repeated ``temporal_patch_size`` times;
3. ``input_ids``: the chat template's text with one ``<|image_pad|>`` per image expanded to
   ``t*h*w / merge_size**2`` tokens — the count the vision tower's ``image_grid_thw`` implies.

``VisionSpec.load`` reads ``preprocessor_config.json`` (and the tokenizer) of a model folder and
refuses a folder without one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

IMAGE_PAD = "<|image_pad|>"


@dataclass(frozen=True)
class VisionSpec:
    """The image processor settings the preprocessing must reproduce."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @classmethod
    def load(cls, folder: str | Path) -> "VisionSpec":
        """From ``<folder>/preprocessor_config.json``; ValueError naming the file when it is missing."""
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            raise ValueError(f"VLM folder {str(folder)!r} has no preprocessor_config.json: the critic needs the "
                             "image processor's patch, merge and pixel-range settings (save the processor beside the model)")
        raw = json.loads(path.read_text())
        size = raw.get("size") or {}
        return cls(
            patch_size=int(raw.get("patch_size", cls.patch_size)), merge_size=int(raw.get("merge_size", cls.merge_size)),
            temporal_patch_size=int(raw.get("temporal_patch_size", cls.temporal_patch_size)),
            min_pixels=int(raw.get("min_pixels") or size.get("shortest_edge") or size.get("min_pixels") or cls.min_pixels),
            max_pixels=int(raw.get("max_pixels") or size.get("longest_edge") or size.get("max_pixels") or cls.max_pixels),
            image_mean=tuple(float(x) for x in raw.get("image_mean", cls.image_mean)),
            image_std=tuple(float(x) for x in raw.get("image_std", cls.image_std)),
        )


def target_size(height: int, width: int, spec: VisionSpec) -> tuple[int, int]:
    """The processor's ``smart_resize``: sides multiples of ``spec.factor``, pixels within the range."""
    f = spec.factor
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"a {height}x{width} image cannot be shown to the VLM: its aspect ratio is above 200 (the Qwen2-VL "
                         "image processor's limit); render closer to square or set the reward's resolution")
    h, w = round(height / f) * f, round(width / f) * f
    if h * w > spec.max_pixels:
        beta = math.sqrt(height * width / spec.max_pixels)
        h, w = max(f, math.floor(height / beta / f) * f), max(f, math.floor(width / beta / f) * f)
    elif h * w < spec.min_pixels:
        beta = math.sqrt(spec.min_pixels / (height * width))
        h, w = math.ceil(height * beta / f) * f, math.ceil(width * beta / f) * f
    if h <= 0 or w <= 0:
        raise ValueError(f"a {height}x{width} image has no size that is a multiple of {f} within the VLM's pixel range")
    return h, w


def pixel_values(images: torch.Tensor, spec: VisionSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B,3,H,W]`` in [0,1] -> ``(pixel_values [B*h*w, 3*T*P*P], image_grid_thw [B,3])``, differentiable."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B,3,H,W], got {tuple(images.shape)}")
    B, C, H, W = images.shape
    h, w = target_size(H, W, spec)
    x = images
    if (h, w) != (H, W):
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=h < H or w < W)
    mean = torch.tensor(spec.image_mean, dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(spec.image_std, dtype=x.dtype, device=x.device)[:, None, None]
    x = (x - mean) / std
    P, M, T = spec.patch_size, spec.merge_size, spec.temporal_patch_size
    gh, gw = h // P, w // P
    x = x.reshape(B, C, gh // M, M, P, gw // M, M, P).permute(0, 2, 5, 3, 6, 1, 4, 7)  # B, h/M, w/M, M, M, C, P, P
    x = x.unsqueeze(6).expand(*x.shape[:6], T, P, P)  # the one frame repeated over the temporal patch
    pv = x.reshape(B * gh * gw, C * T * P * P)
    thw = torch.tensor([[1, gh, gw]] * B, dtype=torch.long, device=images.device)
    return pv, thw


def image_token_count(grid_thw: torch.Tensor, spec: VisionSpec) -> list[int]:
    """LLM tokens per image: its patches merged ``merge_size x merge_size`` into one."""
    return [int(t * h * w) // spec.merge_size**2 for t, h, w in grid_thw.tolist()]


def chat_text(tokenizer, question: str, n_images: int) -> str:
    """The chat template's text for one user turn of ``n_images`` images then ``question``, ready for
    the assistant's first token (one ``<|image_pad|>`` per image, not yet expanded)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the VLM's tokenizer has no chat template (tokenizer_config.json 'chat_template' or "
                         "chat_template.jinja): the critic cannot lay out the multi-image question")
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    if text.count(IMAGE_PAD) != n_images:
        raise ValueError(f"the VLM's chat template wrote {text.count(IMAGE_PAD)} {IMAGE_PAD} tokens for {n_images} images; "
                         "it is not a Qwen2-VL-style template")
    return text


def input_ids(tokenizer, text: str, tokens_per_image: list[int]) -> torch.Tensor:
    """``[1, L]`` ids of ``text`` with image ``i``'s pad token repeated ``tokens_per_image[i]`` times."""
    parts = text.split(IMAGE_PAD)
    if len(parts) - 1 != len(tokens_per_image):
        raise ValueError(f"{len(parts) - 1} image slots in the text for {len(tokens_per_image)} images")
    expanded = parts[0] + "".join(IMAGE_PAD * n + rest for n, rest in zip(tokens_per_image, parts[1:]))
    ids = tokenizer(expanded, return_tensors="pt", add_special_tokens=False)["input_ids"]
    pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    if int((ids == pad_id).sum()) != sum(tokens_per_image):
        raise ValueError(f"the tokenizer does not keep {IMAGE_PAD} as one special token; is this a Qwen2-VL tokenizer?")
    return ids


def answer_token(tokenizer, word: str) -> int:
    """The first token of ``word`` as the assistant's first token (no leading space)."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if not ids:
        raise ValueError(f"the VLM's tokenizer has no token for the answer {word!r}")
    return int(ids[0])
