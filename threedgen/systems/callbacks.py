"""Training side-effects: atomic checkpoints, a progress bar, ``progress.json`` and validation grids
(metrics go through Lightning's loggers: threedgen/systems/loggers.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from ..utils.atomic import staged_path, write_bytes
from ..utils.images import depth_to_image, make_grid, save_png


def atomic_save_checkpoint(trainer: pl.Trainer, path: Path) -> None:
    """Write to a temporary file and rename, so an interrupted save never corrupts ``last.ckpt``. In a
    distributed run every rank enters the save (Lightning waits for all of them) and rank 0 writes."""
    if not getattr(trainer, "is_global_zero", True):  # (a bare object with save_checkpoint: one process)
        trainer.save_checkpoint(path)  # writes nothing on this rank; joins the save's barrier
        return
    with staged_path(path) as tmp:
        trainer.save_checkpoint(tmp)


class OnRankZero(pl.Callback):
    """Runs a callback that writes files or prints (progress, validation grids) on rank 0 only."""

    def __init__(self, inner: pl.Callback):
        self.inner = inner

    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.inner.on_train_start(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.is_global_zero:
            self.inner.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.inner.on_train_end(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception):
        if trainer.is_global_zero:
            self.inner.on_exception(trainer, pl_module, exception)


class AtomicCheckpoint(pl.Callback):
    """``last.ckpt`` every ``every`` steps, at the end, and on Ctrl-C or any crash in a step."""

    def __init__(self, path: Path, every: int, stage: str):
        self.path, self.every, self.stage = Path(path), max(1, every), stage

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint["threedgen_stage"] = self.stage

    def on_train_start(self, trainer, pl_module):
        self._start = trainer.global_step  # a resumed run does not rewrite the checkpoint it started from

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # Saved at the start of the step after the ``every``-th, not at its end: Lightning calls the
        # callbacks' on_train_batch_end before the module's, where the representation densifies and
        # refreshes its occupancy grid; a checkpoint taken there would miss that step's half.
        step = trainer.global_step
        if step % self.every == 0 and step != getattr(self, "_start", 0):
            _settle(pl_module)
            atomic_save_checkpoint(trainer, self.path)

    def on_train_end(self, trainer, pl_module):
        _settle(pl_module)
        atomic_save_checkpoint(trainer, self.path)

    def on_exception(self, trainer, pl_module, exception):
        from .health import NonFiniteError

        if trainer.global_step == 0 or isinstance(exception, NonFiniteError):  # never save NaN over the last good state
            return
        try:
            _settle(pl_module)
        except NonFiniteError:
            return
        atomic_save_checkpoint(trainer, self.path)


def _settle(pl_module) -> None:
    """The system's NaN/Inf verdict on its last step, read before a save (systems/health.py): on a GPU
    it arrives a step late, so a checkpoint could otherwise hold parameters nobody has checked."""
    settle = getattr(pl_module, "settle_health", None)
    if settle is not None:
        settle()


class ProgressBar(pl.Callback):
    """tqdm bar with step, it/s, ETA and the main losses."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.bar = None
        self._shown_at = float("-inf")

    def on_train_start(self, trainer, pl_module):
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=trainer.global_step, desc=self.desc, dynamic_ncols=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.bar is None:
            return
        self.bar.update(trainer.global_step - self.bar.n)
        now = time.monotonic()
        if now - self._shown_at < 1.0:  # the losses live on the device: reading them waits for the step, so once a second
            return
        self._shown_at = now
        logs = getattr(pl_module, "_step_logs", {})
        shown = {k.split("/")[-1]: f"{float(v):.3g}" for k, v in logs.items() if "loss" in k and "/w_" not in k}
        self.bar.set_postfix(shown, refresh=False)

    def _close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_train_end(self, trainer, pl_module):
        self._close()

    def on_exception(self, trainer, pl_module, exception):
        self._close()


class ProgressFile(pl.Callback):
    """``progress.json`` in the run folder, rewritten (atomically) at most every ``every_s`` seconds:
    stage (name, index, count), step and total, it/s over the last steps, ETA of the stage and of the
    run. The web app (threedgen/app/jobs.py) reads it; anyone can ``watch cat`` it."""

    def __init__(self, path: Path, stage: str, index: int, stages: list[tuple[str, int]], every_s: float = 1.0):
        self.path, self.stage, self.index, self.stages, self.every_s = Path(path), stage, index, stages, every_s
        self.marks: list[tuple[float, int]] = []
        self.written = 0.0

    def write(self, step: int, phase: str = "train") -> None:
        now = time.time()
        self.marks = (self.marks + [(now, step)])[-20:]
        (t0, s0), (t1, s1) = self.marks[0], self.marks[-1]
        rate = (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None
        total = self.stages[self.index][1]
        left = max(total - step, 0) + sum(n for _, n in self.stages[self.index + 1:])
        doc = {"phase": phase, "stage": self.stage, "stage_index": self.index, "stages": [s for s, _ in self.stages],
               "step": step, "total": total, "it_s": rate, "eta_s": None if rate is None else (total - step) / rate,
               "run_eta_s": None if rate is None else left / rate, "time": now}
        write_bytes(self.path, (json.dumps(doc) + "\n").encode())
        self.written = now

    def on_train_start(self, trainer, pl_module):
        self.write(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if time.time() - self.written >= self.every_s or trainer.global_step >= trainer.max_steps:
            self.write(trainer.global_step)

    def on_train_end(self, trainer, pl_module):
        self.write(trainer.global_step, "stage done")


def save_view_grid(system, path: Path, cameras, extra_rows: bool = True) -> None:
    """rgb / alpha / depth (/ normal) rows of renders of ``cameras``, as one PNG."""
    outs = system.render_views(cameras)
    rgb = torch.cat([o.rgb for o in outs]).cpu()
    alpha = torch.cat([o.alpha for o in outs]).cpu()
    depth = torch.cat([o.depth for o in outs]).cpu()
    rows = [list(rgb)]
    if extra_rows:
        rows.append(list(alpha))
        rows.append([depth_to_image(d, a) for d, a in zip(depth, alpha)])
        if outs[0].normal is not None:
            normal = torch.cat([o.normal for o in outs]).cpu()
            rows.append([(n * 0.5 + 0.5) * a + (1 - a) for n, a in zip(normal, alpha)])
    save_png(path, make_grid(rows))


class ValidationGrid(pl.Callback):
    """A PNG grid of fixed orbit views every ``every`` steps (and at the end)."""

    def __init__(self, folder: Path, every: int):
        self.folder, self.every = Path(folder), every
        self.saved_step = -1

    def _save(self, trainer, pl_module):
        if trainer.global_step == self.saved_step:
            return
        self.saved_step = trainer.global_step
        save_view_grid(pl_module, self.folder / f"step{trainer.global_step:06d}.png", pl_module.validation_cameras())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.every and trainer.global_step % self.every == 0:
            self._save(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if self.every:
            self._save(trainer, pl_module)
