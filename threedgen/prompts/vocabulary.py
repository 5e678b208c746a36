"""Closed vocabularies: a prompt with words its prior never read is refused before a run starts.

The toy priors know a few dozen words (their folders list them in ``vocabulary.txt``; see
``threedgen/guidance/model_folder.py``). Any other word is embedded as pieces the prior was never
trained on, so "a red dragon" would train, silently, on noise; it is an error instead, raised while
the config is checked and before the run folder exists. Priors without the file (Stable Diffusion and
every real model) have an open vocabulary and are not checked.
"""

from __future__ import annotations

import dataclasses
import re


def unknown_words(text: str, vocabulary) -> list[str]:
    """Words (letters only, lower-cased, in order, once each) of ``text`` not in ``vocabulary``."""
    return [w for w in dict.fromkeys(re.findall(r"[^\W\d_]+", text.lower())) if w not in vocabulary]


def check_prompt_vocabulary(system_cfg, path: str = "system") -> None:
    """ValueError naming the words of the prompt (as the prompt processor sends it: after ``remove``)
    and of the negative prompt that a closed-vocabulary prior of one of the guidances does not know."""
    import torch

    from ..guidance.model_folder import ModelFolder, PriorConfig

    pp = getattr(system_cfg, "prompt_processor", None)
    pp_cfg = getattr(pp, "cfg", None)
    if pp_cfg is None or not hasattr(pp_cfg, "prompt"):
        return
    if getattr(system_cfg, "prompt", None):
        pp_cfg = dataclasses.replace(pp_cfg, prompt=system_cfg.prompt)
    prompt = dataclasses.replace(pp, cfg=pp_cfg).build().cfg.prompt  # the processor applies ``remove``
    whole = pp_cfg.prompt if getattr(pp_cfg, "remove_for", "all") == "image" else prompt  # what a video prior reads
    from .. import registry

    for i, g in enumerate(getattr(system_cfg, "guidance", []) or []):  # objectives that read the raw prompt themselves
        check = getattr(registry.get("guidance", g.name), "check_prompt", None)
        if check is not None:
            try:
                check(g.cfg, getattr(system_cfg, "prompt", "") or pp_cfg.prompt)
            except ValueError as e:
                raise ValueError(f"{path}.prompt (guidance {i}, {g.name}): {e}") from None
    for i, g in enumerate(getattr(system_cfg, "guidance", []) or []):
        prior_cfg = getattr(g.cfg, "prior", None)
        if not isinstance(prior_cfg, PriorConfig):
            continue
        try:
            folder = ModelFolder(prior_cfg, torch.float32)
            vocabulary = folder.vocabulary()
            text = whole if whole != prompt and folder.is_video() else prompt
        except Exception:  # noqa: BLE001 - a missing model is reported by the prior's own loading, with its path
            continue
        if vocabulary is None:
            continue
        unknown = unknown_words(f"{text} {pp_cfg.negative_prompt}", vocabulary)
        if unknown:
            raise ValueError(
                f"{path}.prompt {text!r}: {', '.join(repr(w) for w in unknown)} not in the vocabulary of "
                f"{prior_cfg.model} (guidance {i}), which knows only: {', '.join(sorted(vocabulary))}")
