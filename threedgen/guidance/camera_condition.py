"""Camera conditioning of a multi-view prior (MVDream's idea on a diffusers ``UNet2DConditionModel``).

A text-to-image prior only learns which side it sees from the coarse view words ("front view", "side
view"), which leave a shape with a 90° symmetry (a cube) no yaw to settle on: score distillation then
averages the yaws into a solid of revolution (docs/objectives.md). A camera-conditioned prior is told
the exact camera of each image: its 4×4 camera-to-world matrix, flattened to 16 numbers with the
translation scaled to unit length, enters through diffusers' ``class_embed_type="projection"``
embedding, which is added to the timestep embedding. All zeros means "camera unknown" (the prior is
trained with 10% of its images so), which is what sampling without cameras passes.
"""

from __future__ import annotations

import torch

CAMERA_DIM = 16


def is_camera_conditioned(unet) -> bool:
    """Whether a UNet reads camera vectors as its class labels."""
    c = unet.config
    return getattr(c, "class_embed_type", None) == "projection" and int(getattr(c, "projection_class_embeddings_input_dim", 0) or 0) == CAMERA_DIM


def camera_vectors(c2w: torch.Tensor | None, n: int) -> torch.Tensor:
    """``[n,16]`` camera vectors from camera-to-world matrices ``[n,4,4]`` (None: zeros, camera unknown)."""
    if c2w is None:
        return torch.zeros(n, CAMERA_DIM)
    m = c2w.detach().float().clone()
    if m.shape[0] != n:
        raise ValueError(f"{m.shape[0]} cameras for a batch of {n} images")
    m[:, :3, 3] = torch.nn.functional.normalize(m[:, :3, 3], dim=-1)
    return m.reshape(n, CAMERA_DIM)
