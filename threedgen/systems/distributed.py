"""One scene trained by several processes (GPUs, CPU processes, machines) through Lightning's DDP.

Lightning starts the processes (``trainer.devices`` per machine x ``trainer.num_nodes``, or torchrun /
SLURM start them), sets up the process group (gloo on CPU, NCCL on GPUs) and does every collective
below. What text-to-3D needs on top:

- **Views split across ranks.** Every rank draws the step's whole batch (``data.batch_size`` x world
  size cameras, from the run's seed and the step) and renders its own slice, so N processes see the
  same cameras as one process with an N-times batch (``GenerationSystem._sample_cameras``).
- **Gradients averaged by the strategy** (``reduce_gradients``: one flat all-reduce per step, before
  clipping and the optimiser). ``scene_ddp_strategy`` is Lightning's ``DDPStrategy`` without the
  ``DistributedDataParallel`` wrapper: Gaussian densification replaces parameter tensors during
  training, which a wrapper built over the first step's parameters cannot follow.
- **Densification kept identical on every rank** (``gathered_screen_meta``): the screen-space
  gradients and radii that gsplat's strategy accumulates are gathered from all ranks before it
  decides, and its random draws come from a stream that does not depend on the rank, so every rank
  grows and prunes the same Gaussians and the parameters stay equal.
- **One writer.** Checkpoints are saved by rank 0 (every rank enters the save, Lightning writes on
  rank 0 only), validation grids, logs, progress, test renders and exports too; every process of a
  run uses the same run folder (``RUN_DIR_ENV``).

tests/test_ddp.py checks that two gloo processes end where one process with the doubled batch does.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

RUN_DIR_ENV = "THREEDGEN_RUN_DIR"
"""The run folder every process of a distributed run writes to. Set by the first process for the
processes Lightning starts; set it yourself (to a folder on a shared filesystem) when torchrun or
SLURM start the processes on several machines."""


def scene_ddp_strategy(backend: str):
    """Lightning's DDP (process launch, process group, collectives, rank-0 checkpoint writes) without
    wrapping the module in ``DistributedDataParallel``; the system averages its gradients itself
    through ``reduce_gradients``. The ranks' parameters are made equal to rank 0's at the start.
    (Defined on first use: importing this module imports no Lightning.)"""
    from lightning.pytorch.overrides.distributed import _sync_module_states
    from lightning.pytorch.strategies import DDPStrategy

    class SceneDDPStrategy(DDPStrategy):
        def configure_ddp(self) -> None:
            _sync_module_states(self.model)

    return SceneDDPStrategy(process_group_backend=backend)


def build_strategy(world_size: int, accelerator: str):
    """``"auto"`` for one process, else ``SceneDDPStrategy`` (gloo on CPU, NCCL on GPUs)."""
    if world_size <= 1:
        return "auto"
    return scene_ddp_strategy("gloo" if accelerator == "cpu" else "nccl")


def rank_and_world(module) -> tuple[int, int]:
    """(global rank, world size) of a LightningModule's trainer; (0, 1) outside training."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return 0, 1
    return int(trainer.global_rank), int(trainer.world_size)


def process_rank() -> int:
    """This process's global rank as Lightning set it (from LOCAL_RANK/RANK/SLURM_PROCID before the
    strategy is set up, the strategy's own after); 0 in a single-process run."""
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


@torch.no_grad()
def reduce_gradients(params: list[torch.nn.Parameter], strategy) -> None:
    """Average the gradients of ``params`` over all ranks in one flat all-reduce (a missing gradient
    counts as zero, so ranks stay in step)."""
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    flat = strategy.reduce(flat, reduce_op="mean")
    i = 0
    for p in params:
        n = p.numel()
        g = flat[i : i + n].view_as(p)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        i += n


def _gather_cat(strategy, x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0 (sizes may differ between ranks)."""
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = strategy.all_gather(n).reshape(-1).tolist()
    pad = max(sizes) - x.shape[0]
    if pad:
        x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
    parts = strategy.all_gather(x)  # [world, max, ...]
    return torch.cat([parts[r, : sizes[r]] for r in range(len(sizes))])


def gathered_screen_meta(meta: dict, strategy, world_size: int) -> dict:
    """A render's Gaussian meta as if one process had rendered every rank's views: screen-space
    gradients (rescaled from each rank's batch mean to the global batch mean), radii and ids
    concatenated over ranks, ``n_cameras`` the global count. Unchanged when there is nothing to gather."""
    m2d = meta.get("means2d")
    if world_size <= 1 or m2d is None or m2d.grad is None:
        return meta
    packed = meta.get("gaussian_ids") is not None
    grad = _gather_cat(strategy, m2d.grad if packed else m2d.grad.flatten(0, -3)) / world_size
    out = dict(meta)
    holder = torch.zeros_like(grad)
    holder.grad = grad
    out["means2d"] = holder
    out["radii"] = _gather_cat(strategy, meta["radii"] if packed else meta["radii"].flatten(0, -3))
    if packed:
        out["gaussian_ids"] = _gather_cat(strategy, meta["gaussian_ids"])
    out["n_cameras"] = int(meta["n_cameras"]) * world_size
    return out


def shared_run_dir() -> Optional[str]:
    return os.environ.get(RUN_DIR_ENV) or None
