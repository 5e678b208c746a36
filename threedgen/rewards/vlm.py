"""A vision-language model as a differentiable critic (VLM3D; ``docs/rewards.md``).

A frozen Qwen2.5-VL (or Qwen2-VL) Instruct model sees every view of the batch in one user message
followed by a question that asks whether the object matches the prompt and is geometrically sound,
answered with one word. The loss is the margin of the "No" logit over the "Yes" logit of the
assistant's first token (``loss: logit``), or ``p(No) - p(Yes)`` over the two (``loss: prob``).
Gradients reach the renders through ``qwen_inputs.pixel_values`` (torch resize, normalise,
patchify); transformers is not patched and its image processor is not called.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch

from ..guidance.model_folder import resolve_device, resolve_model
from . import qwen_inputs as Q
from .base import Critic, shared_model

log = logging.getLogger("threedgen")

QUESTION = (
    'These images are several views of one 3D object. Considering all views together, does the object satisfy both: '
    '(1) it shows "{prompt}"; (2) its geometry is sound and consistent: one face only, no broken or intersecting '
    'surfaces, no floating pieces? Answer only "{yes}" or "{no}".'
)
"""VLM3D's content-and-geometry question (its ``prompt_type: 2``), reworded."""


class QwenVLCritic(Critic):
    @dataclass
    class Config:
        model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
        """A transformers folder (or cached hub id) of a Qwen2-VL-class model with its tokenizer (and chat
        template) and ``preprocessor_config.json``."""
        dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
        """``auto``: bf16 on a GPU, fp32 on a CPU."""
        device: str = "auto"
        question: str = QUESTION
        """The question after the images; ``{prompt}`` is the run's prompt, ``{yes}``/``{no}`` the answers."""
        yes: str = "Yes"
        no: str = "No"
        loss: Literal["logit", "prob"] = "logit"
        """``logit``: logit(No) - logit(Yes) (VLM3D's default); ``prob``: p(No) - p(Yes) over the two answers."""
        max_views: int = 0
        """Views of the batch shown to the VLM (the first ones); 0: all."""
        gradient_checkpointing: bool = False
        """Recompute the VLM's layers in the backward pass (less memory for many or large views)."""

    def __init__(self, cfg: "QwenVLCritic.Config"):
        super().__init__()
        self.cfg = cfg
        for word in ("{prompt}",):
            if word not in cfg.question:
                raise ValueError(f"critic.question must contain {word} (where the run's prompt goes), got {cfg.question!r}")
        if cfg.max_views < 0:
            raise ValueError(f"critic.max_views must be >= 0 (0: every view), got {cfg.max_views}")
        q = cfg.question.format(prompt="", yes=cfg.yes, no=cfg.no)
        if cfg.yes not in q or cfg.no not in q or cfg.yes == cfg.no:
            raise ValueError(f"critic.question must name both answers {cfg.yes!r} and {cfg.no!r} (write {{yes}} and {{no}} "
                             "or the words themselves), so the VLM answers with one of the two tokens the loss reads")
        location, _ = resolve_model(cfg.model, single=True)
        self.spec = Q.VisionSpec.load(location) if _is_dir(location) else _hub_spec(cfg.model)
        dev = resolve_device(cfg.device)
        dtype = {"auto": torch.bfloat16 if dev.type == "cuda" else torch.float32, "fp32": torch.float32,
                 "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.dtype]
        model, tok = shared_model((location, str(dtype), str(dev), "qwen_vl"), lambda: _load(location, dtype, dev))
        self.hold(model)
        self.tokenizer = tok
        self.yes_id, self.no_id = Q.answer_token(tok, cfg.yes), Q.answer_token(tok, cfg.no)
        if self.yes_id == self.no_id:
            raise ValueError(f"the answers {cfg.yes!r} and {cfg.no!r} start with the same token")
        Q.chat_text(tok, "x", 1)  # the chat template exists and is Qwen2-VL-like: fail at start-up, not at step 0
        if cfg.gradient_checkpointing:
            _enable_checkpointing(model)
        self._ids: dict[tuple, torch.Tensor] = {}

    def check_image_size(self, height: int, width: int) -> None:
        """ValueError when a ``height x width`` view has no size in multiples of 28 the VLM takes."""
        Q.target_size(height, width, self.spec)

    def question(self, prompt: str) -> str:
        return self.cfg.question.format(prompt=prompt, yes=self.cfg.yes, no=self.cfg.no)

    def inputs(self, images: torch.Tensor, prompt: str) -> dict:
        """The model's keyword inputs for ``images`` and the question about ``prompt`` (differentiable in the images)."""
        model = self.model
        pv, thw = Q.pixel_values(images.to(torch.float32), self.spec)
        key = (prompt, tuple(map(tuple, thw.tolist())))
        ids = self._ids.get(key)
        if ids is None:
            text = Q.chat_text(self.tokenizer, self.question(prompt), len(images))
            ids = self._ids[key] = Q.input_ids(self.tokenizer, text, Q.image_token_count(thw, self.spec))
        dev = next(model.parameters()).device
        return dict(input_ids=ids.to(dev), attention_mask=torch.ones_like(ids, device=dev),
                    pixel_values=pv.to(device=dev, dtype=model.dtype), image_grid_thw=thw.to(dev))

    def forward(self, images: torch.Tensor, prompt: str, cameras=None) -> dict:
        if self.cfg.max_views:
            images = images[: self.cfg.max_views]
        logits = self.model(**self.inputs(images.clamp(0, 1), prompt), logits_to_keep=1).logits[0, -1].float()
        yes, no = logits[self.yes_id], logits[self.no_id]
        p_yes = torch.softmax(torch.stack([yes, no]), 0)[0]
        loss = (no - yes) if self.cfg.loss == "logit" else (1 - 2 * p_yes)
        return {"loss": loss, "p_yes": p_yes.detach(), "margin": (yes - no).detach()}


def _is_dir(location: str) -> bool:
    from pathlib import Path

    return Path(location).is_dir()


def _hub_spec(model_id: str) -> Q.VisionSpec:
    from ..guidance.model_folder import _hub_file
    from pathlib import Path

    path = _hub_file(model_id, "preprocessor_config.json", None)
    if path is None:
        raise ValueError(f"VLM {model_id!r} has no preprocessor_config.json in the Hugging Face cache")
    return Q.VisionSpec.load(Path(path).parent)


def _load(location: str, dtype: torch.dtype, device: torch.device):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    log.info("critic: loading %s (%s on %s)", location, str(dtype).replace("torch.", ""), device)
    model = AutoModelForImageTextToText.from_pretrained(location, dtype=dtype).to(device)
    model.requires_grad_(False)
    model.eval()
    return model, AutoTokenizer.from_pretrained(location)


def _enable_checkpointing(model) -> None:
    """transformers recomputes layers only in training mode; the VLM has no dropout to switch on, which
    is checked, so training mode changes nothing else."""
    drop = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    rates = {k: v for k, v in vars(model.config.get_text_config()).items() if "dropout" in k and isinstance(v, float) and v > 0}
    if drop or rates:
        raise ValueError(f"critic.gradient_checkpointing needs a VLM without dropout; this one has {drop[:3] or rates}")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
