"""Run logs through Lightning's loggers (threedgen/systems/loggers.py): metrics.csv by Lightning's
CSVLogger keeps its rows across resumes and stages and is replaced atomically; TensorBoard by one
switch; a logger whose package is missing is refused at start-up with one line."""

import csv
import importlib.util

import pytest

from test_cli import launch
from threedgen.systems.loggers import RunCSVLogger

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_csv_logger_keeps_earlier_rows_and_puts_stage_step_time_first(tmp_path):
    first = RunCSVLogger(tmp_path)
    first.log_metrics({"stage": "coarse", "time_s": 0.5, "train/loss": 1.25}, 10)
    first.log_metrics({"stage": "coarse", "time_s": 1.0, "train/loss": 1.0}, 20)
    # a resumed run (or the next stage) starts a new logger on the same folder: Lightning's own writer deletes the file
    second = RunCSVLogger(tmp_path)
    second.log_metrics({"stage": "fine", "time_s": 0.25, "train/loss": 0.5, "train/lr": 1e-3}, 30)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["step"] for r in rows] == ["10", "20", "30"]
    assert [r["stage"] for r in rows] == ["coarse", "coarse", "fine"]
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["stage", "step", "time_s"] and {"train/loss", "train/lr"} <= set(header)
    assert rows[0]["train/lr"] == "" and rows[2]["train/lr"] == "0.001"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]  # nothing staged left behind


@pytest.mark.slow
def test_tensorboard_switch_writes_the_same_scalars(tmp_path):
    from test_cli import TINY

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tmp_path / "tiny.yaml").write_text(TINY)
    r = launch("--config", "tiny.yaml", "--train", "-q", "trainer.export_at_end=false", "trainer.loggers=[csv,tensorboard]", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = (tmp_path / "outputs" / "tiny").iterdir()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    loss_key = next(k for k in rows[0] if k.startswith("train/loss"))
    scalars = events.Scalars(loss_key)
    assert [s.step for s in scalars] == [2, 4, 6]
    assert [round(s.value, 4) for s in scalars] == pytest.approx([round(float(r[loss_key]), 4) for r in rows], rel=1e-4)


def test_a_logger_whose_package_is_missing_is_refused_at_start_up(tmp_path):
    from test_cli import TINY

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    (tmp_path / "tiny.yaml").write_text(TINY)
    r = launch("--config", "tiny.yaml", "--train", "-q", "trainer.loggers=[csv,wandb]", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "pip install wandb" in r.stderr
    assert not (tmp_path / "outputs").exists()


def test_gradient_norms_are_computed_only_for_the_steps_that_are_logged():
    from types import SimpleNamespace

    import torch

    from threedgen.systems.loggers import LogMetrics

    grid, mlp = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(2))
    grid.grad, mlp.grad = torch.full((4,), 0.5), torch.tensor([3.0, 4.0])
    opt = torch.optim.Adam([{"params": [grid], "name": "grid", "lr": 0.01}, {"params": [mlp], "name": "mlp", "lr": 0.001}])
    cb, module = LogMetrics(every=5, stage="main"), SimpleNamespace()
    logged = []
    for step in range(12):  # the optimiser's step ``step`` makes global_step ``step + 1``, the step LogMetrics logs
        module._step_logs = {"train/loss": 1.0}  # training_step starts each step's scalars afresh
        cb.on_before_optimizer_step(SimpleNamespace(global_step=step, max_steps=12), module, opt)
        if len(module._step_logs) > 1:
            logged.append(step + 1)
            assert module._step_logs["grad_norm/grid"] == 1.0 and module._step_logs["grad_norm/mlp"] == 5.0
            assert module._step_logs["lr/grid"] == 0.01 and module._step_logs["lr/mlp"] == 0.001
    assert logged == [5, 10, 12]  # every 5 steps and the last
