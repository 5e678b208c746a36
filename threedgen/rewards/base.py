"""The critic interface every reward shares, and the one place critics keep their frozen model.

A critic maps renders ``[B,3,H,W]`` in [0,1], the prompt text and the batch's cameras to a scalar
``loss`` (lower is better) whose gradient reaches the renders, plus detached statistics. The model it
judges with is frozen and kept outside the module tree (``hold``), so it never enters a run's
checkpoint and moving the system between devices does not copy it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.cameras import CameraBatch

_MODELS: dict[tuple, object] = {}


class Critic(nn.Module):
    """Subclasses define ``Config`` and ``forward(images, prompt, cameras) -> {"loss": scalar, ...}``."""

    def forward(self, images: torch.Tensor, prompt: str, cameras: CameraBatch) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def model(self):
        return self.__dict__["_held"]

    def hold(self, model) -> None:
        """Keep ``model`` (frozen, eval) without registering it as a submodule."""
        model.requires_grad_(False)
        model.eval()
        self.__dict__["_held"] = model


def shared_model(key: tuple, load):
    """One frozen model per ``key`` (location, dtype, device) per process, loaded by ``load()``."""
    model = _MODELS.get(key)
    if model is None:
        model = _MODELS[key] = load()
    return model


def clear_critic_cache() -> None:
    _MODELS.clear()
