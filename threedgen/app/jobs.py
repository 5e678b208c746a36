"""The web app's runs: a queue that trains one run at a time in its own ``launch.py`` process.

Why processes: a run is exactly what ``launch.py`` does from a shell (same checks, same files, same
resume), the app stays responsive while it trains, and a crashed run cannot take the app down. Stop
sends Ctrl-C (SIGINT): the run writes its checkpoint and exits, and Resume queues it again with
``--resume`` on its folder. Progress comes from the run's ``progress.json``
(``threedgen/systems/callbacks.py``) and its latest validation grid; the files come from ``export/``.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
STEPS_RANGE = (1, 100_000)


@dataclass
class Job:
    id: int
    recipe: str
    prompt: str
    seed: int
    steps: Optional[int]
    out_dir: Path
    resume: Optional[Path] = None
    state: str = "queued"  # queued | running | stopping | stopped | failed | done
    error: str = ""
    log: list[str] = field(default_factory=list)
    started: Optional[float] = None
    finished: Optional[float] = None
    proc: Optional[subprocess.Popen] = None

    @property
    def run_dir(self) -> Optional[Path]:
        """The run folder ``launch.py`` made (``<out>/<recipe name>/<prompt>@<time>``), once it exists."""
        if self.resume is not None:
            return self.resume
        found = sorted(self.out_dir.glob("*/*@*"))
        return found[-1] if found else None

    def progress(self) -> dict:
        run = self.run_dir
        doc: dict = {}
        if run is not None and (run / "progress.json").is_file():
            try:
                doc = json.loads((run / "progress.json").read_text())
            except (OSError, ValueError):  # replaced while read: the next poll gets it
                doc = {}
        if self.state == "running" and doc.get("phase") == "stage done" and doc.get("stage_index", 0) + 1 == len(doc.get("stages", [0])):
            doc["phase"] = "rendering and exporting"
        return doc

    def latest_validation(self) -> Optional[Path]:
        run = self.run_dir
        grids = sorted((run / "renders" / "val").glob("*/step*.png"), key=lambda p: p.stat().st_mtime) if run else []
        return grids[-1] if grids else None

    def exports(self) -> list[Path]:
        run = self.run_dir
        folder = run / "export" if run else None
        if folder is None or not folder.is_dir():
            return []
        return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


class RunQueue:
    """One worker thread; ``submit`` validates first (the same checks as ``launch.py``) and raises
    ``ValueError`` with the one-line reason, so bad input never reaches the queue."""

    def __init__(self, out_root: Path, python: str = sys.executable, extra_args: tuple[str, ...] = ()):
        self.out_root = Path(out_root)
        self.python, self.extra_args = python, tuple(extra_args)
        self.jobs: list[Job] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._worker = threading.Thread(target=self._loop, name="threedgen-runs", daemon=True)
        self._worker.start()

    # ---- submitting -------------------------------------------------------------------------
    def submit(self, recipe: str, prompt: str, seed: int = 0, steps: Optional[int] = None) -> Job:
        prompt = (prompt or "").strip()
        check_request(recipe, prompt, seed, steps)
        with self._lock:
            job_id = next(self._ids)
            job = Job(job_id, recipe, prompt, int(seed), None if steps is None else int(steps), self.out_root / f"job-{job_id:04d}")
            self.jobs.append(job)
        self._wake.set()
        return job

    def resume(self, job_id: int) -> Job:
        """Queue a stopped or failed run again from its checkpoint (a new job on the same folder)."""
        old = self.get(job_id)
        run = old.run_dir
        if old.state not in ("stopped", "failed") or run is None or not (run / "ckpts").is_dir():
            raise ValueError(f"run {job_id} has no checkpoint to resume (state {old.state}); start a new run instead")
        with self._lock:
            job = Job(next(self._ids), old.recipe, old.prompt, old.seed, old.steps, old.out_dir, resume=run)
            self.jobs.append(job)
        self._wake.set()
        return job

    def stop(self, job_id: int) -> Job:
        """A queued run is dropped; a running one gets Ctrl-C and saves its checkpoint."""
        job = self.get(job_id)
        with self._lock:
            if job.state == "queued":
                job.state = "stopped"
            elif job.state == "running" and job.proc is not None:
                job.state = "stopping"
                job.proc.send_signal(signal.SIGINT)
        return job

    def get(self, job_id: int) -> Job:
        for j in self.jobs:
            if j.id == job_id:
                return j
        raise ValueError(f"no run {job_id}")

    def wait(self, job_id: int, timeout: float) -> Job:
        end = time.time() + timeout
        job = self.get(job_id)
        while job.state in ("queued", "running", "stopping") and time.time() < end:
            time.sleep(0.2)
        return job

    # ---- the worker ---------------------------------------------------------------------------
    def _next(self) -> Optional[Job]:
        with self._lock:
            return next((j for j in self.jobs if j.state == "queued"), None)

    def _loop(self) -> None:
        while True:
            job = self._next()
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self._run(job)

    def command(self, job: Job) -> list[str]:
        args = [self.python, str(REPO / "launch.py"), "--config", str(REPO / job.recipe), "--train", "-q"]
        if job.resume is not None:
            args += ["--resume", str(job.resume)]
        args += [f"system.prompt={job.prompt}", f"seed={job.seed}", f"output_dir={job.out_dir}", *self.extra_args]
        if job.steps is not None:
            args.append(f"trainer.max_steps={job.steps}")
        return args

    def _run(self, job: Job) -> None:
        with self._lock:
            if job.state != "queued":
                return
            job.state, job.started = "running", time.time()
            job.out_dir.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            job.proc = subprocess.Popen(self.command(job), cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, bufsize=1, preexec_fn=_interruptible)
        for line in job.proc.stdout:
            job.log = (job.log + [line.rstrip()])[-200:]
        code = job.proc.wait()
        with self._lock:
            job.finished = time.time()
            if job.state == "stopping" or code == 130:
                job.state = "stopped"
            elif code == 0:
                job.state = "done"
            else:
                job.state = "failed"
                errors = [ln for ln in job.log if ln.startswith("error:")]
                job.error = errors[-1] if errors else (job.log[-1] if job.log else f"exit status {code}")


def check_request(recipe: str, prompt: str, seed, steps) -> None:
    """The checks ``launch.py`` makes before training (config, prompt, prompt words, models), plus
    the app's own fields; raises ``ValueError`` with one line naming what is wrong and what is right."""
    from ..config import ConfigError, load_config
    from ..systems.runner import plan_stages
    from .recipes import missing_models, named_models
    from ..recipe_files import load_raw

    if not prompt:
        raise ValueError("the prompt is empty: describe the object, e.g. 'a red cube'")
    path = REPO / recipe
    if not path.is_file():
        raise ValueError(f"no recipe {recipe!r}; pick one of the listed recipes")
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise ValueError(f"seed must be a whole number, got {seed!r}") from None
    if not 0 <= seed < 2**31:
        raise ValueError(f"seed must be in [0, 2^31), got {seed}")
    if steps is not None:
        if int(steps) != steps or not STEPS_RANGE[0] <= int(steps) <= STEPS_RANGE[1]:
            raise ValueError(f"steps must be a whole number in [{STEPS_RANGE[0]}, {STEPS_RANGE[1]}] (0 or empty: the recipe's own), got {steps}")
    raw_recipe = load_raw(path)
    if steps is not None and raw_recipe.get("stages"):
        counts = ", ".join(f"{st.get('name', i)} {st.get('steps', '?')}" for i, st in enumerate(raw_recipe["stages"]))
        raise ValueError(f"{recipe} runs in stages ({counts} steps); leave steps at 0 to use them")
    missing = missing_models(named_models(raw_recipe))
    if missing:
        raise ValueError(f"{recipe} needs a model this machine does not have: {missing[0]}")
    overrides = [f"system.prompt={prompt}", f"seed={seed}"] + ([f"trainer.max_steps={int(steps)}"] if steps is not None else [])
    try:
        cfg, raw = load_config(path, overrides)
        plan_stages(cfg, raw, Path(cfg.output_dir))  # the prompt's words against the prior's vocabulary
    except (ConfigError, ValueError, FileNotFoundError) as e:
        raise ValueError(str(e)) from None


def _interruptible() -> None:
    """In the run's process before it starts: Ctrl-C (Stop) restored to its default, since a server started
    in the background (``... &`` from a script) passes SIGINT on ignored and the run could not be stopped."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
