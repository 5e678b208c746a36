"""The toy video prior as a model: built from the toy image prior (``motion_unet_from``, ``extend_text_side``),
saved as a diffusers AnimateDiff folder (``save_video_prior``) and read back to continue training
(``read_export``). Training itself is ``train_video.py``; why the model is built this way is in docs/4d.md."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from . import world as W
from .video_dataset import MOTION_WORDS


def motion_unet_from(base_unet, init_std: float = 0.0, seed: int = 0):
    """A ``UNetMotionModel`` equal to ``base_unet`` per frame when ``init_std`` is 0: motion modules whose
    output projections are 0. A small ``init_std`` starts them at N(0, init_std) instead, which a
    two-clip probe found to open the direction gap sooner (docs/4d.md)."""
    from diffusers import MotionAdapter, UNetMotionModel

    c = base_unet.config
    with torch.random.fork_rng():  # the motion modules' inner layers draw from the global RNG: seed it, so a seed is one prior
        torch.manual_seed(seed)
        adapter = MotionAdapter(block_out_channels=tuple(c.block_out_channels), motion_layers_per_block=c.layers_per_block,
                                motion_mid_block_layers_per_block=1, motion_num_attention_heads=2,
                                motion_norm_num_groups=c.norm_num_groups, motion_max_seq_length=32, use_motion_mid_block=True)
    unet = UNetMotionModel.from_unet2d(base_unet, adapter)
    g = torch.Generator().manual_seed(seed)
    for name, mod in unet.named_modules():
        if "motion_modules" in name and name.endswith("proj_out"):
            torch.nn.init.zeros_(mod.bias)
            if init_std > 0:
                mod.weight.data.copy_(init_std * torch.randn(mod.weight.shape, generator=g))
            else:
                torch.nn.init.zeros_(mod.weight)
    return unet


def extend_text_side(base: Path, extra_words: tuple = ()):
    """The toy tokenizer over the vocabulary plus ``MOTION_WORDS`` and the toy text encoder with its token
    table re-indexed to it (old words keep their rows; each new word starts at its own random row, drawn
    with the old rows' mean and per-dimension spread). Started all at the mean row, "left" and "right"
    were still 0.02 apart after 1,500 steps. Distinct rows alone did not make the prior follow the
    direction either (after 520 steps its denoising loss was equal to five decimals with the caption's
    direction and the opposite one); see docs/4d.md. Returns
    ``(tokenizer, text_encoder, new_token_ids)``."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from .tokenizer import build_tokenizer

    old_tok = CLIPTokenizer.from_pretrained(base / "tokenizer")
    te = CLIPTextModel.from_pretrained(base / "text_encoder")
    tok = build_tokenizer(tuple(W.VOCABULARY) + MOTION_WORDS + tuple(extra_words))
    old = te.get_input_embeddings().weight.detach()
    g = torch.Generator().manual_seed(0)
    table = old.mean(0) + old.std(0) * torch.randn(len(tok), old.shape[1], generator=g)
    old_vocab = old_tok.get_vocab()
    new_ids = []
    for token, i in tok.get_vocab().items():
        if token in old_vocab:
            table[i] = old[old_vocab[token]]
        else:
            new_ids.append(i)
    te.resize_token_embeddings(len(tok))
    with torch.no_grad():
        te.get_input_embeddings().weight.copy_(table)
    te.config.bos_token_id, te.config.eos_token_id, te.config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    return tok, te, new_ids


def save_video_prior(out: Path, base: Path, unet, text_encoder, tokenizer, extra: dict, extra_words: tuple = ()) -> None:
    import diffusers

    from .tokenizer import write_tokenizer_files

    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")
    write_tokenizer_files(out, tuple(W.VOCABULARY) + MOTION_WORDS + tuple(extra_words))
    shutil.copytree(base / "scheduler", out / "scheduler", dirs_exist_ok=True)
    index = {"_class_name": "AnimateDiffPipeline", "_diffusers_version": diffusers.__version__,
             "unet": ["diffusers", "UNetMotionModel"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"], "vae": [None, None]}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "training.json").write_text(json.dumps(extra, indent=2) + "\n")


def read_export(folder: Path, frame_words: bool, vocabulary: int, fail) -> dict:
    """An exported toy video prior to continue (``--init-from``): its UNet, text encoder and ``training.json``.
    Refused, naming the difference, when it was trained with other per-frame captions or another vocabulary."""
    from diffusers import UNetMotionModel
    from transformers import CLIPTextModel

    path = folder / "training.json"
    if not path.is_file():
        fail(f"--init-from {folder}: no training.json there; give the folder train_video.py exported (its --out)")
    report = json.loads(path.read_text())
    if bool(report["args"].get("frame_words")) != bool(frame_words):
        fail(f"--init-from {folder} was trained {'with' if report['args'].get('frame_words') else 'without'} "
             f"--frame-words; continue it the same way")
    te = CLIPTextModel.from_pretrained(folder / "text_encoder")
    if te.get_input_embeddings().weight.shape[0] != vocabulary:
        fail(f"--init-from {folder} has a vocabulary of {te.get_input_embeddings().weight.shape[0]} tokens, this "
             f"training {vocabulary}; it was made by another version of the toy words")
    return {"unet": UNetMotionModel.from_pretrained(folder / "unet"), "text_encoder": te, "report": report}
