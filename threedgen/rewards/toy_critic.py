"""The toy world's classifier as a critic, so reward recipes run and are measured offline.

Per view: ``-log p(shape) - log p(colour)`` of the prompt's object under the classifier's heads, plus,
for prompts with a front marker, ``-log p(view)`` of the view the camera really has (front, side,
back, overhead by ``threedgen/prompts/views.py``), which penalises a marker seen from behind (Janus).
The loss is the mean over views. ``assets/toy-critic`` is a classifier trained with a different
seed and width from the one ToyBench judges with (``assets/toy-prior/classifier``), so a reward
recipe is not scored by the very network it optimised against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.cameras import CameraBatch
from ..guidance.model_folder import REPO_ROOT
from .base import Critic, shared_model


class ToyCritic(Critic):
    @dataclass
    class Config:
        model: str = "assets/toy-critic"
        """A classifier folder written by ``python -m threedgen.toy.classifier`` (config.json + model.safetensors)."""
        view_weight: float = 1.0
        """Weight of the view term on marker prompts (0: shape and colour only)."""

    def __init__(self, cfg: "ToyCritic.Config"):
        super().__init__()
        from ..toy.classifier import load_classifier

        self.cfg = cfg
        path = _find(cfg.model)
        self.hold(shared_model((str(path), "toy"), lambda: load_classifier(path)))
        self._labels: dict[str, object] = {}

    def labels(self, prompt: str):
        if prompt not in self._labels:
            from ..toy import world as W

            try:
                scene = W.parse_prompt(prompt)
            except ValueError as e:
                raise ValueError(f"the toy critic judges toy-world prompts only: {e}") from None
            self._labels[prompt] = scene
        return self._labels[prompt]

    def forward(self, images: torch.Tensor, prompt: str, cameras: CameraBatch) -> dict:
        from ..prompts.views import view_index
        from ..toy import world as W

        scene = self.labels(prompt)
        model = self.model
        dev = next(model.parameters()).device
        x = images.clamp(0, 1).float()
        if x.shape[-2:] != (32, 32):
            x = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        logits = model(x.to(dev))
        B = len(x)
        shape = torch.full((B,), W.SHAPES.index(scene.shape), device=dev)
        colour = torch.full((B,), W.COLOUR_NAMES.index(scene.colour), device=dev)
        ce_shape, ce_colour = F.cross_entropy(logits["shape"], shape), F.cross_entropy(logits["colour"], colour)
        loss = ce_shape + ce_colour
        out = {"p_shape": torch.exp(-ce_shape).detach(), "p_colour": torch.exp(-ce_colour).detach()}
        if scene.marker and self.cfg.view_weight > 0:
            view = view_index(cameras.elevation_deg, cameras.azimuth_deg)[:B].to(dev)
            ce_view = F.cross_entropy(logits["view"], view)
            loss = loss + self.cfg.view_weight * ce_view
            out["p_view"] = torch.exp(-ce_view).detach()
        return {"loss": loss, **out}


def _find(model: str) -> Path:
    p = Path(model).expanduser()
    for c in ([p] if p.is_absolute() else [Path.cwd() / p, REPO_ROOT / p]):
        if (c / "config.json").is_file() and (c / "model.safetensors").is_file():
            return c.resolve()
    raise ValueError(f"toy critic {model!r} not found (a folder with config.json and model.safetensors, written by "
                     "`python -m threedgen.toy.classifier --out <folder>`)")
