"""Stage 1: representation -> raw triangle mesh in world units, with the bad-input checks.

NeRF and DMTet provide ``isosurface(resolution, threshold)`` themselves; a Gaussian scene goes
through ``splat_field.SplatField`` first. This module only validates what comes back.
"""

from __future__ import annotations

import numpy as np
import torch


def check_finite_parameters(representation) -> None:
    """A diverged run has NaN/Inf weights; meshing it gives garbage, so name the tensor instead."""
    if not isinstance(representation, torch.nn.Module):
        return
    for name, p in representation.named_parameters():
        bad = int((~torch.isfinite(p.detach())).sum())
        if bad:
            raise ValueError(
                f"the representation has non-finite parameters ({bad} of {p.numel()} values in {name!r} are NaN/Inf): "
                "the run diverged. Export an earlier checkpoint (--resume PATH) or lower the learning rate."
            )


def extract_surface(representation, resolution: int, threshold) -> tuple[np.ndarray, np.ndarray]:
    """(vertices [V,3] float32, faces [F,3] int64) of the representation's isosurface."""
    if not hasattr(representation, "isosurface"):
        raise ValueError(f"{type(representation).__name__} cannot produce a mesh (it has no isosurface())")
    check_finite_parameters(representation)
    out = representation.isosurface(resolution=resolution, threshold=threshold)
    v, f = np.asarray(out[0], dtype=np.float32), np.asarray(out[1], dtype=np.int64)
    if len(f) == 0:
        raise ValueError("the isosurface is empty (no faces): nothing to export; lower export.threshold or use export.threshold=auto")
    if not np.isfinite(v).all():
        raise ValueError("the isosurface has non-finite vertices; the representation's density contains NaN/Inf")
    return v, f
