"""Run logs through Lightning's loggers: ``metrics.csv`` by Lightning's ``CSVLogger``, TensorBoard and
Weights & Biases by one switch (``trainer.loggers: [csv, tensorboard, wandb]``).

Every ``trainer.log_every`` steps ``LogMetrics`` hands the step's scalars (losses, weights, learning
rates, gradient norms) to every logger of the trainer, so a run opens in the tools researchers use.

The CSV file keeps what threedgen promised of it (tests/test_cli.py, tests/test_nonfinite.py): one file
per run across stages and resumes (``stage``, ``step``, ``time_s`` first, a column per scalar), never
half-written. Lightning's own writer deletes an existing ``metrics.csv`` when a logger starts (a resumed
run or the next stage would lose the history) and rewrites it in place; ``RunCSVLogger`` gives it a
writer that reads the existing rows instead and replaces the file atomically.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only

from ..utils.atomic import staged_path

FIRST = ("stage", "step", "time_s")


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it keeps the rows already in the file and writes atomically."""

    def _check_log_dir_exists(self) -> None:
        self.kept: list[dict] = []
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.kept = list(csv.DictReader(f))

    def save(self) -> None:
        if not self.metrics:
            return
        self.kept += [{k: _fmt(v) for k, v in row.items()} for row in self.metrics]
        keys = list(FIRST)
        for row in self.kept:
            keys += [k for k in row if k not in keys]
        with staged_path(Path(self.metrics_file_path)) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.kept)
        self.metrics = []


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` writing ``<run>/metrics.csv`` (no version folders) with ``_KeepingWriter``; flushed at
    every log so a killed run keeps its rows up to the last log."""

    def __init__(self, run_dir: Path):
        super().__init__(save_dir=str(run_dir), name="", version="", flush_logs_every_n_steps=1)

    @property
    def log_dir(self) -> str:
        return self.root_dir

    @property
    def experiment(self) -> _KeepingWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def log_metrics(self, metrics: dict, step=None) -> None:
        self.experiment.log_metrics(metrics, step)
        self.save()


def build_loggers(names: list[str], run_dir: Path, run_name: str) -> list:
    """The Lightning loggers ``trainer.loggers`` names, writing into the run folder (a missing package is
    refused earlier, by ``TrainerConfig``)."""
    out = []
    for name in names:
        if name == "csv":
            out.append(RunCSVLogger(run_dir))
        elif name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            out.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False))
        elif name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            out.append(WandbLogger(save_dir=str(run_dir), name=run_name, project="threedgen"))
    return out


class LogMetrics(pl.Callback):
    """Every ``every`` steps (and the last), the step's scalars to every logger of the trainer; the CSV
    logger also gets the stage name and the seconds since this process started the stage."""

    def __init__(self, every: int, stage: str):
        self.every, self.stage = max(1, every), stage
        self.t0 = time.perf_counter()

    def logs_at(self, trainer, step: int) -> bool:
        return step % self.every == 0 or step == trainer.max_steps

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        """Each group's gradient norm (before clipping) and learning rate, on the steps that are logged
        only: a norm reads every gradient (DreamFusion's hash grid: 16.8 M values) and is read nowhere else."""
        if not self.logs_at(trainer, trainer.global_step + 1):  # the step the optimiser is about to complete
            return
        logs = getattr(pl_module, "_step_logs", None)
        if logs is None:
            return
        for pg in optimizer.param_groups:
            name = pg.get("name", "group")
            grads = [p.grad.detach() for p in pg["params"] if p.grad is not None]
            if grads:  # torch's own total norm: no copy of the gradients, no sync
                logs[f"grad_norm/{name}"] = torch.nn.utils.get_total_norm(grads)
            logs[f"lr/{name}"] = pg["lr"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if not self.logs_at(trainer, step):
            return
        logs = {k: float(v) for k, v in getattr(pl_module, "_step_logs", {}).items()}
        for lg in trainer.loggers:
            if isinstance(lg, RunCSVLogger):
                lg.log_metrics({"stage": self.stage, "time_s": round(time.perf_counter() - self.t0, 3), **logs}, step)
            else:
                lg.log_metrics(logs, step)
