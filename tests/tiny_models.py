"""Tiny random diffusion models of the real diffusers/transformers classes, built offline.

Each ``build_*`` function writes a folder in the standard diffusers layout (``save_pretrained``
of every component plus a ``model_index.json``) so tests load it back through exactly the same
prior (``threedgen.guidance.priors``) / ``from_pretrained`` path a user's Stable Diffusion or DeepFloyd IF folder
takes. Nothing is downloaded. Sizes follow notes/platform.md section 5 (well under 1 M
parameters per model; a forward pass takes a few milliseconds on a CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TEXT_DIM = 32
MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_tokenizer(max_length: int = MAX_LENGTH):
    """A byte-level CLIP tokenizer without merges (514 tokens; platform.md 5.1 option A)."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def clip_text_encoder(tok, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return CLIPTextModel(cfg).eval()


def t5_tokenizer(max_length: int = MAX_LENGTH):
    """A character-level T5 (Unigram) tokenizer built from an in-memory vocabulary."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,.-'!?"
    pieces += [(c, -3.0) for c in alphabet] + [("▁" + c, -3.5) for c in alphabet]
    extra = 4
    pieces += [(f"<extra_id_{i}>", 0.0) for i in range(extra - 1, -1, -1)]
    return T5Tokenizer(vocab=pieces, extra_ids=extra, model_max_length=max_length)


def t5_text_encoder(tok, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=len(tok),
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    return T5EncoderModel(cfg).eval()


def unet(in_channels: int = 4, out_channels: int = 4, sample_size: int = 8, seed: int = 0, **kw):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=32,
        **kw,
    ).eval()


def vae(seed: int = 0, sample_size: int = 16):
    """A two-level AutoencoderKL: 2x downsampling, 4 latent channels, SD's scaling factor."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=sample_size,
        norm_num_groups=32,
        scaling_factor=0.18215,
    ).eval()


def sd_scheduler(prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def if_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        beta_schedule="squaredcos_cap_v2",
        variance_type="learned_range",
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=1.5,
        clip_sample=True,
        prediction_type="epsilon",
    )


def _save(path: Path, pipeline_class: str, components: dict) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": pipeline_class, "_diffusers_version": "0.42.1"}
    for name, obj in components.items():
        if obj is None:
            index[name] = [None, None]
            continue
        obj.save_pretrained(path / name)
        lib = "transformers" if type(obj).__module__.startswith("transformers") else "diffusers"
        index[name] = [lib, type(obj).__name__]
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path


def build_sd(path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Latent text-to-image model in Stable Diffusion layout: 4x8x8 latents, 16x16 images."""
    tok = clip_tokenizer()
    return _save(
        path,
        "StableDiffusionPipeline",
        {
            "unet": unet(4, 4, sample_size=8, seed=seed),
            "vae": vae(seed=seed),
            "text_encoder": clip_text_encoder(tok, seed=seed),
            "tokenizer": tok,
            "scheduler": sd_scheduler(prediction_type),
            "safety_checker": None,
            "feature_extractor": None,
        },
    )


def build_pixel(path, seed: int = 0, sample_size: int = 16) -> Path:
    """Pixel-space 3-channel model without a VAE (the toy prior's layout)."""
    tok = clip_tokenizer()
    return _save(
        path,
        "DiffusionPipeline",
        {
            "unet": unet(3, 3, sample_size=sample_size, seed=seed),
            "text_encoder": clip_text_encoder(tok, seed=seed),
            "tokenizer": tok,
            "scheduler": sd_scheduler(),
        },
    )


def build_if(path, seed: int = 0) -> Path:
    """DeepFloyd-IF-stage-I-like: pixel space, T5 text encoder, 6 output channels (eps + variance)."""
    tok = t5_tokenizer()
    return _save(
        path,
        "IFPipeline",
        {
            "unet": unet(3, 6, sample_size=16, seed=seed),
            "text_encoder": t5_text_encoder(tok, seed=seed),
            "tokenizer": tok,
            "scheduler": if_scheduler(),
            "safety_checker": None,
            "feature_extractor": None,
            "watermarker": None,
        },
    )


def clip_text_encoder_with_projection(tok, hidden: int = 16, seed: int = 0):
    """SD3's CLIP-L / CLIP-G kind: ``CLIPTextModelWithProjection`` (pooled ``text_embeds`` + hidden states)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=37, projection_dim=hidden, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=MAX_LENGTH, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return CLIPTextModelWithProjection(cfg).eval()


def sd3_transformer(seed: int = 0, sample_size: int = 8):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=sample_size, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=TEXT_DIM, caption_projection_dim=16, pooled_projection_dim=TEXT_DIM,
        pos_embed_max_size=16,
    ).eval()


def sd3_vae(seed: int = 0):
    """SD3's VAE kind: scaling and shift factors (SD3's own numbers), 4 latent channels here."""
    v = vae(seed=seed)
    v.register_to_config(scaling_factor=1.5305, shift_factor=0.0609)
    return v


def build_sd3(path, seed: int = 0, shift: float = 3.0, t5: bool = True) -> Path:
    """An SD3-shaped flow-matching model: SD3Transformer2DModel on 4x8x8 latents (16x16 images), two
    CLIP encoders with projection (16 wide each, 32 together = the joint attention width), an optional
    T5 (32 wide) and FlowMatchEulerDiscreteScheduler with ``shift``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    tok, tok2 = clip_tokenizer(), clip_tokenizer()
    parts = {
        "transformer": sd3_transformer(seed=seed),
        "vae": sd3_vae(seed=seed),
        "text_encoder": clip_text_encoder_with_projection(tok, seed=seed),
        "tokenizer": tok,
        "text_encoder_2": clip_text_encoder_with_projection(tok2, seed=seed + 1),
        "tokenizer_2": tok2,
        "text_encoder_3": None,
        "tokenizer_3": None,
        "scheduler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift),
    }
    if t5:
        tok3 = t5_tokenizer()
        parts.update(text_encoder_3=t5_text_encoder(tok3, seed=seed + 2), tokenizer_3=tok3)
    return _save(path, "StableDiffusion3Pipeline", parts)


def controlnet(in_channels: int = 4, conditioning_embedding_out_channels=(8, 16), seed: int = 0):
    """A ControlNet of ``unet()``'s layout. Its zero convolutions are given small random weights, so
    its residuals are not zero and tests can see the control image reach the prediction."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel(
        in_channels=in_channels,
        conditioning_channels=3,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=32,
        conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
    )
    with torch.no_grad():
        for m in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            m.weight.normal_(0, 0.05)
    return net.eval()


def build_sd_inpaint(path, seed: int = 0, with_controlnet: bool = True) -> Path:
    """SD-inpainting layout (UNet of 9 input channels) with a depth-ControlNet subfolder (16² images, 8² latents)."""
    tok = clip_tokenizer()
    return _save(path, "StableDiffusionControlNetInpaintPipeline", {
        "unet": unet(9, 4, sample_size=8, seed=seed), "vae": vae(seed=seed), "text_encoder": clip_text_encoder(tok, seed=seed),
        "tokenizer": tok, "scheduler": sd_scheduler(), "controlnet": controlnet(4, (8, 16), seed=seed) if with_controlnet else None,
    })


def build_pixel_inpaint(path, seed: int = 0, sample_size: int = 16) -> Path:
    """Pixel-space inpainting model (7 = 3 + 1 + 3 input channels) with a full-resolution ControlNet (the toy layout)."""
    tok = clip_tokenizer()
    return _save(path, "StableDiffusionControlNetInpaintPipeline", {
        "unet": unet(7, 3, sample_size=sample_size, seed=seed), "text_encoder": clip_text_encoder(tok, seed=seed),
        "tokenizer": tok, "scheduler": sd_scheduler(), "controlnet": controlnet(3, (16,), seed=seed),
    })


def unet3d(in_channels: int = 4, sample_size: int = 8, seed: int = 0):
    """A text-to-video ``UNet3DConditionModel`` (zeroscope / ModelScope class; platform.md 5.4)."""
    from diffusers import UNet3DConditionModel

    torch.manual_seed(seed)
    return UNet3DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=TEXT_DIM, attention_head_dim=8,
        norm_num_groups=32,
    ).eval()


def build_video(path, seed: int = 0) -> Path:
    """Latent text-to-video model in zeroscope's layout (``TextToVideoSDPipeline``): 4x8x8 latents per frame."""
    tok = clip_tokenizer()
    return _save(path, "TextToVideoSDPipeline", {"unet": unet3d(seed=seed), "vae": vae(seed=seed),
                                                  "text_encoder": clip_text_encoder(tok, seed=seed), "tokenizer": tok,
                                                  "scheduler": sd_scheduler()})


def build_motion_video(path, seed: int = 0) -> Path:
    """Latent text-to-video model in AnimateDiff's layout (``UNetMotionModel``: an image UNet with motion
    modules), which reads one text embedding per frame."""
    from diffusers import MotionAdapter, UNetMotionModel

    tok = clip_tokenizer()
    torch.manual_seed(seed)
    adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=2,
                            motion_norm_num_groups=32, motion_max_seq_length=16)
    motion = UNetMotionModel.from_unet2d(unet(seed=seed), adapter).eval()
    return _save(path, "AnimateDiffPipeline", {"unet": motion, "vae": vae(seed=seed),
                                                "text_encoder": clip_text_encoder(tok, seed=seed), "tokenizer": tok,
                                                "scheduler": sd_scheduler()})
