"""``PromptProcessor``: prompt -> ``PromptBundle`` of conditionings, cached on disk.

The conditionings (token embeddings, and pooled ones for SD3-class priors) of the prompt, the negative prompt, the empty prompt and the four view prompts
are computed once with the prior's text encoder, written to ``cache_dir`` (safetensors, atomic
write) under a hash of the text encoder's identity and every prompt string, and the text encoder
is freed. A later run with the same prompts and model reads the file and never loads the text
encoder (which matters for DeepFloyd IF, whose T5-XXL is ~4.7 B parameters).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..guidance.prior_api import Conditioning
from ..utils.atomic import new_staged_file
from .bundle import PERP_NEG_F_FS, PERP_NEG_F_FSB, PERP_NEG_F_SB, PERP_NEG_F_SF, PromptBundle
from .views import VIEWS, view_prompt

log = logging.getLogger(__name__)

CACHE_FORMAT = 2
"""2: one safetensors key per conditioning field (``cond/emb``, ``cond/pooled``, ...)."""

NAMES = ("cond", "uncond", "null", "cond_vd")


class PromptProcessor:
    @dataclass
    class Config:
        RANGES = {"front_threshold": (0, 180), "back_threshold": (0, 180), "overhead_threshold": (0, 90)}
        prompt: str = "a red cube"
        negative_prompt: str = ""
        """Replaces the empty prompt in CFG's unconditional branch (costs nothing extra)."""
        view_dependent: bool = True
        """Append ", front view" etc. by camera direction (threestudio's rule, ``prompts.views``)."""
        front_threshold: float = 45.0
        back_threshold: float = 45.0
        overhead_threshold: float = 60.0
        view_prefix: bool = False
        """``"front view of <prompt>"`` instead of ``"<prompt>, front view"``."""
        perp_neg: bool = False
        """Perp-Neg guidance (needs ``view_dependent``); the guidance runs (2+2)B UNet evaluations."""
        perp_neg_f_sb: tuple[float, float, float] = PERP_NEG_F_SB
        perp_neg_f_fsb: tuple[float, float, float] = PERP_NEG_F_FSB
        perp_neg_f_fs: tuple[float, float, float] = PERP_NEG_F_FS
        perp_neg_f_sf: tuple[float, float, float] = PERP_NEG_F_SF
        cache_dir: str = ".cache/threedgen/text-embeddings"
        """Relative to the current directory; set ``THREEDGEN_EMBEDDING_CACHE`` to override."""
        use_cache: bool = True
        remove: list[str] = field(default_factory=list)
        """Phrases cut from the prompt before it is embedded, e.g. a 4D recipe's static stage drops the motion
        ("moving left") that an image prior has never read."""
        remove_for: str = "all"
        """Which priors get the prompt without ``remove``: "all", or "image" (a video prior reads the whole
        prompt, motion included, while the image priors of the same run read it without the motion)."""
        negative_swaps: list[tuple[str, str]] = field(default_factory=list)
        """Pairs of phrases, e.g. ``[[moving left, moving right], [moving up, moving down]]``: where the prompt (as
        a prior reads it, after ``remove``) holds one of them, its negative prompt is the prompt with each such
        phrase exchanged for its partner, replacing ``negative_prompt``. A contrastive negative: CFG then pushes
        away from the opposite (the reversed motion) instead of from the empty prompt, which is what ties a
        clip's early frames to the right start when the object could sit either way (``docs/4d.md``)."""

    def __init__(self, cfg: "PromptProcessor.Config"):
        if cfg.perp_neg and not cfg.view_dependent:
            raise ValueError("prompt_processor.perp_neg needs prompt_processor.view_dependent: true")
        if cfg.remove_for not in ("all", "image"):
            raise ValueError(f"prompt_processor.remove_for must be 'all' or 'image', got {cfg.remove_for!r}")
        self._whole = replace(cfg, remove=[]) if cfg.remove and cfg.remove_for == "image" else None
        if cfg.remove:
            cfg = replace(cfg, prompt=remove_phrases(cfg.prompt, cfg.remove))
        if any(len(set(p)) != 2 or not all(w.strip() for w in p) for p in cfg.negative_swaps):
            raise ValueError(f"prompt_processor.negative_swaps must be pairs of two different phrases, got {cfg.negative_swaps}")
        swapped = swap_phrases(cfg.prompt, cfg.negative_swaps)
        if swapped != cfg.prompt:
            cfg = replace(cfg, negative_prompt=swapped)
        self.cfg = cfg

    @property
    def cache_dir(self) -> Path:
        env = os.environ.get("THREEDGEN_EMBEDDING_CACHE")
        return Path(env) if env else Path(self.cfg.cache_dir)

    def view_texts(self) -> list[str]:
        return [view_prompt(self.cfg.prompt, v, prefix=self.cfg.view_prefix) for v in VIEWS]

    def cache_key(self, prior) -> str:
        payload = {
            "format": CACHE_FORMAT,
            "text_encoder": prior.text_fingerprint(),
            "max_length": prior.max_text_length,
            "prompt": self.cfg.prompt,
            "negative_prompt": self.cfg.negative_prompt,
            "view_texts": self.view_texts(),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]

    def cache_path(self, prior) -> Path:
        return self.cache_dir / f"{self.cache_key(prior)}.safetensors"

    def bundle(self, prior) -> PromptBundle:
        """Conditionings for ``prior`` (a ``guidance.prior_api.Prior``), from the cache when possible."""
        if self._whole is not None and getattr(prior, "video", False):
            return PromptProcessor(self._whole).bundle(prior)
        cfg = self.cfg
        conds = self._read_cache(prior) if cfg.use_cache else None
        if conds is None:
            texts = [cfg.prompt, cfg.negative_prompt, ""] + self.view_texts()
            unique = list(dict.fromkeys(texts))
            log.info("embedding %d prompt(s) with %s's text encoder", len(unique), prior.model_id)
            emb = prior.encode_text(unique)
            prior.free_text_encoder()
            by_text = {t: emb[i].map(torch.clone) for i, t in enumerate(unique)}
            conds = {
                "cond": by_text[cfg.prompt],
                "uncond": by_text[cfg.negative_prompt],
                "null": by_text[""],
                "cond_vd": Conditioning.cat([by_text[t] for t in self.view_texts()]),
            }
            if cfg.use_cache:
                self._write_cache(prior, conds)
        uncond = conds["uncond"]
        null = uncond if cfg.negative_prompt == "" else conds["null"]
        return PromptBundle(
            cond=conds["cond"],
            uncond=uncond,
            null=null,
            cond_vd=conds["cond_vd"],
            text=cfg.prompt,
            negative_text=cfg.negative_prompt,
            view_texts=tuple(self.view_texts()),
            front_threshold=cfg.front_threshold,
            back_threshold=cfg.back_threshold,
            overhead_threshold=cfg.overhead_threshold,
            view_dependent=cfg.view_dependent,
            perp_neg=cfg.perp_neg,
            perp_neg_f_sb=tuple(cfg.perp_neg_f_sb),
            perp_neg_f_fsb=tuple(cfg.perp_neg_f_fsb),
            perp_neg_f_fs=tuple(cfg.perp_neg_f_fs),
            perp_neg_f_sf=tuple(cfg.perp_neg_f_sf),
            model_id=prior.model_id,
        )

    # ---- cache -----------------------------------------------------------------------------------

    def _read_cache(self, prior):
        path = self.cache_path(prior)
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path), device=str(prior.device))
        except Exception as e:  # a truncated or foreign file: recompute and overwrite
            log.warning("ignoring unreadable prompt-embedding cache %s (%s)", path, e)
            return None
        conds = {}
        for name in NAMES:
            fields = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(name + "/")}
            if "emb" not in fields:
                return None
            conds[name] = Conditioning(**fields)
        log.info("prompt embeddings for %r read from %s", self.cfg.prompt, path)
        return conds

    def _write_cache(self, prior, conds: dict) -> None:
        from safetensors.torch import save_file

        path = self.cache_path(prior)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            meta = {
                "model": str(prior.model_id),
                "prompt": self.cfg.prompt,
                "negative_prompt": self.cfg.negative_prompt,
                "view_texts": json.dumps(self.view_texts()),
            }
            fd, tmp = new_staged_file(path)
            os.close(fd)
            try:
                flat = {f"{name}/{k}": v.detach().float().cpu().clone() for name, c in conds.items() for k, v in c.present().items()}
                save_file({k: v.contiguous() for k, v in flat.items()}, tmp, metadata=meta)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError as e:  # a read-only cache dir must not stop a run
            log.warning("could not write the prompt-embedding cache %s (%s)", path, e)


def remove_phrases(prompt: str, phrases) -> str:
    """``prompt`` without each of ``phrases`` where it stands as whole words, spaces tidied."""
    import re

    for ph in sorted(phrases, key=len, reverse=True):
        prompt = re.sub(rf"(?<!\w){re.escape(ph.strip())}(?!\w)", " ", prompt)
    return " ".join(prompt.split())


def swap_phrases(prompt: str, pairs) -> str:
    """``prompt`` with every phrase of ``pairs`` that stands in it as whole words exchanged for its partner."""
    import re

    table = {a.strip(): b.strip() for a, b in pairs} | {b.strip(): a.strip() for a, b in pairs}
    if not table:
        return prompt
    pattern = "|".join(re.escape(k) for k in sorted(table, key=len, reverse=True))
    return re.sub(rf"(?<!\w)(?:{pattern})(?!\w)", lambda m: table[m.group(0)], prompt)
