"""NaN/Inf faults injected into a toy SDS run: a NaN in the guidance gradient is zeroed and counted
in metrics.csv; a NaN in the parameters stops the run with one line naming the step and the module,
and the last good checkpoint stays as it was."""

import csv
import math
from pathlib import Path

import torch

from threedgen import cli
from threedgen.guidance.sds import SDSGuidance
from threedgen.representations.nerf import NeRF

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "configs" / "toy" / "sds-nerf.yaml")


def _args(out: Path, *extra: str) -> list[str]:
    return ["--config", RECIPE, "--train", "-q", f"output_dir={out}", "trainer.max_steps=12", "trainer.ckpt_every=5",
            "trainer.val_every=0", "trainer.log_every=1", "trainer.export_at_end=false", "trainer.test_views=2", *extra]


def test_nan_in_the_guidance_gradient_is_zeroed_and_counted(tmp_path, monkeypatch):
    real = SDSGuidance._predict
    injected = []

    def predict_with_nans(self, x_t, t, prompts, cameras):
        pred = real(self, x_t, t, prompts, cameras)
        pred.eps[0, 0, 0, :3] = float("nan")  # 3 entries of the noise prediction on every step
        injected.append(3)
        return pred

    monkeypatch.setattr(SDSGuidance, "_predict", predict_with_nans)
    assert cli.main(_args(tmp_path)) == 0
    (metrics,) = tmp_path.rglob("metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    assert [float(r["train/nonfinite"]) for r in rows][-1] == 3
    assert float(rows[-1]["train/nonfinite_total"]) == sum(injected) == 36
    assert all(math.isfinite(float(r["train/loss"])) for r in rows)
    state = torch.load(next(tmp_path.rglob("last.ckpt")), map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _poison_at(monkeypatch, bad_step: int) -> None:
    """Four NaN values in the NeRF's hash grid right after step ``bad_step``'s update."""
    real = NeRF.after_step

    def poisoned(self, step, render_out):
        real(self, step, render_out)
        if step == bad_step:
            with torch.no_grad():
                self.grid.params[:4] = float("nan")

    monkeypatch.setattr(NeRF, "after_step", poisoned)


def test_nan_in_the_parameters_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    _poison_at(monkeypatch, 8)
    assert cli.main(_args(tmp_path)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: step 8: 4 NaN/Inf values in representation.grid.params (the representation)"), err[-3:]
    assert "the last good checkpoint is" in err[-1] and "(step 5)" in err[-1]
    assert not any("Traceback" in line for line in err)
    ck = torch.load(next(tmp_path.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert ck["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())


def test_read_a_step_late_as_on_a_gpu_the_verdict_still_comes_before_the_next_save(tmp_path, monkeypatch, capsys):
    """On a GPU each step's verdict is read at the next step (no host-device sync per step,
    threedgen/systems/health.py); the checkpoint due at the start of step 11 must read step 10's first."""
    from threedgen.systems.health import FiniteWatch

    monkeypatch.setattr(FiniteWatch, "defer_on_cpu", True)
    _poison_at(monkeypatch, 10)
    assert cli.main(_args(tmp_path)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: step 10: 4 NaN/Inf values in representation.grid.params"), err[-3:]
    ck = torch.load(next(tmp_path.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert ck["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())


def test_finite_watch_reports_the_step_it_was_given():
    from threedgen.systems.health import FiniteWatch, NonFiniteError

    w = FiniteWatch()
    good = [("a", torch.ones(3)), ("b", torch.zeros(2))]
    w.submit(1, good)
    bad = [("a", torch.ones(3)), ("b", torch.tensor([0.0, math.inf]))]
    try:
        w.submit(2, bad)
        raise AssertionError("expected NonFiniteError")
    except NonFiniteError as e:
        assert str(e).startswith("step 2: 1 NaN/Inf values in b")
    w.defer_on_cpu = True  # as on a GPU: the verdict waits for the next submit or settle
    w.submit(3, bad)
    try:
        w.settle()
        raise AssertionError("expected NonFiniteError")
    except NonFiniteError as e:
        assert str(e).startswith("step 3: 1 NaN/Inf values in b")
    w.settle()  # nothing outstanding
