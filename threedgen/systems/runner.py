"""Runs a validated recipe: output folder, stages, training, test renders and export.

Everything that can be checked (config, resume path, output folder) is checked before the
first file is written, so a bad command line leaves the disk as it was.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import yaml

from .. import registry
from ..config import ConfigError, RunConfig, to_plain
from ..prompts.vocabulary import check_prompt_vocabulary
from .distributed import build_strategy, process_rank, shared_run_dir
from .health import NonFiniteError

log = logging.getLogger("threedgen")


def slugify(text: str, max_len: int = 48) -> str:
    s = re.sub(r"[^a-zA-Z0-9]+", "_", text.strip().lower()).strip("_")
    return (s[:max_len] or "untitled").rstrip("_")


@dataclass
class Stage:
    name: str
    cfg: RunConfig
    ckpt: Path  # where this stage's last.ckpt lives
    final: Path  # written when the stage completes


def plan_stages(cfg: RunConfig, raw: dict, run_dir: Path) -> list[Stage]:
    ckpts = run_dir / "ckpts"
    if not cfg.stages:
        check_prompt_vocabulary(cfg.system.cfg)
        return [Stage("main", cfg, ckpts / "last.ckpt", ckpts / "last.ckpt")]
    stages = [Stage(st.name, sub, ckpts / "last.ckpt", ckpts / f"{st.name}.ckpt") for st, sub in cfg.stage_configs(raw)]
    for st in stages:
        check_prompt_vocabulary(st.cfg.system.cfg)
    for prev, st in zip(stages, stages[1:]):  # a stage that takes its scene from a fixed kind says so before stage 1 trains
        rep, src = st.cfg.system.cfg.representation, prev.cfg.system.cfg.representation
        cls = registry.get("representation", rep.name)
        accepts = getattr(cls, "converts_from", None)
        if accepts is not None and src.name not in accepts:
            raise ConfigError(f"stages.{stages.index(st)} ({st.name}): a {rep.name} scene starts from "
                              f"{' or '.join(accepts)}, but stage {prev.name!r} makes {src.name}; change that stage's representation")
        if hasattr(cls, "check_canonical"):
            try:
                cls.check_canonical(rep.cfg, src.cfg)
            except ValueError as e:
                raise ConfigError(f"stages.{stages.index(st)} ({st.name}): {e}") from None
    return stages


def _writable_root(path: Path) -> None:
    """Fail (creating nothing) unless ``path`` exists writable or could be created."""
    p = path.resolve()
    while not p.exists():
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK):
        raise ConfigError(f"output folder {str(path)!r} is not writable ({p} is not a writable folder); set output_dir=<a writable path>")


def check_checkpoint(path: Path) -> dict:
    """Load a checkpoint's metadata or fail with a one-line reason."""
    if not path.is_file():
        raise ConfigError(f"--resume {str(path)!r} does not exist; pass a last.ckpt from outputs/<recipe>/<run>/ckpts/ or --resume auto")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any failure means "not a checkpoint"
        why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise ConfigError(f"--resume {str(path)!r} could not be read ({why}): it is truncated, damaged or not a checkpoint; "
                          "pass a last.ckpt written by a run (or an earlier copy of it)") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise ConfigError(f"--resume {str(path)!r} is not a threedgen checkpoint (no state_dict/global_step)")
    return ckpt


def find_latest_run(cfg: RunConfig) -> Optional[Path]:
    base = Path(cfg.output_dir) / cfg.name
    slug = slugify(cfg.system.cfg.prompt or cfg.name)
    runs = sorted(p for p in base.glob(f"{slug}@*") if (p / "ckpts" / "last.ckpt").is_file())
    return runs[-1] if runs else None


def new_run_dir(cfg: RunConfig) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.output_dir) / cfg.name / f"{slugify(cfg.system.cfg.prompt or cfg.name)}@{stamp}"
    run_dir, i = base, 1
    while run_dir.exists():
        run_dir, i = base.with_name(f"{base.name}-{i}"), i + 1
    return run_dir


def resolve_run(cfg: RunConfig, resume: Optional[str], need_ckpt: bool) -> tuple[Path, Optional[Path]]:
    """(run folder, checkpoint to resume from or None). Creates nothing. In a process that Lightning
    (or torchrun/SLURM with ``THREEDGEN_RUN_DIR`` set) started for a distributed run, the shared folder."""
    shared = shared_run_dir()
    if shared and not need_ckpt and resume in (None, "auto"):  # an explicit --resume PATH is the same for every process
        run = Path(shared)
        ckpt = run / "ckpts" / "last.ckpt"
        return run, (ckpt if resume and ckpt.is_file() else None)
    if resume == "auto":
        run = find_latest_run(cfg)
        if run is None:
            if need_ckpt:
                raise ConfigError(f"--resume auto found no run of {cfg.name!r} with a checkpoint under {cfg.output_dir}/{cfg.name}/")
            return new_run_dir(cfg), None
        ckpt = run / "ckpts" / "last.ckpt"
        check_checkpoint(ckpt)
        return run, ckpt
    if resume:
        ckpt = Path(resume)
        if ckpt.is_dir():  # a run folder: its last checkpoint
            ckpt = ckpt / "ckpts" / "last.ckpt"
        check_checkpoint(ckpt)
        run = ckpt.parent.parent if ckpt.parent.name == "ckpts" else ckpt.parent
        return run, ckpt
    if need_ckpt:
        raise ConfigError("--test/--export need a trained run: add --resume auto or --resume PATH/TO/last.ckpt")
    _writable_root(Path(cfg.output_dir))
    return new_run_dir(cfg), None


def build_system(stage_cfg: RunConfig):
    from ..utils.process_gc import startup_done

    startup_done()  # the program's imports are done (a no-op in-process, threedgen/utils/process_gc.py)
    from .generation import GenerationSystem, seed_everything

    seed_everything(stage_cfg.seed, stage_cfg.deterministic, stage_cfg.threads)
    if stage_cfg.system.name != "generation":
        return stage_cfg.system.build(stage_cfg.data, stage_cfg.seed)
    return GenerationSystem(stage_cfg.system.cfg, stage_cfg.data, stage_cfg.seed)


def plan_devices(cfg: RunConfig, gpu: Optional[str] = None) -> tuple[str, object, int]:
    """(accelerator, Lightning's ``devices``, world size) for ``--gpu`` and ``trainer.devices``/``num_nodes``;
    ConfigError (one line) when the run asks for more GPUs than this machine has."""
    t = cfg.trainer
    cuda = torch.cuda.is_available()
    if gpu and cuda:
        ids = [int(i) for i in gpu.split(",") if i.strip()]
        if t.devices > 1 and t.devices != len(ids):
            raise ConfigError(f"trainer.devices={t.devices} but --gpu {gpu} names {len(ids)} GPU(s); give one of the two")
        return "gpu", ids, len(ids) * t.num_nodes
    if cuda:
        n = torch.cuda.device_count()
        if t.devices > n:
            raise ConfigError(f"trainer.devices={t.devices} asks for {t.devices} GPUs, but this machine has {n}; "
                              f"set trainer.devices to at most {n}")
        return "gpu", t.devices, t.devices * t.num_nodes
    return "cpu", t.devices, t.devices * t.num_nodes


def _stage_state(ckpt_path: Optional[Path]) -> tuple[Optional[str], int]:
    if ckpt_path is None or not ckpt_path.is_file():
        return None, 0
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    return ck.get("threedgen_stage"), int(ck.get("global_step", 0))


def train(cfg: RunConfig, raw: dict, run_dir: Path, resume_ckpt: Optional[Path], gpu: Optional[str] = None):
    """Run every stage in order; returns the final system. Resumes the interrupted stage."""
    import lightning.pytorch as pl

    _quiet_lightning()
    from .callbacks import AtomicCheckpoint, OnRankZero, ProgressBar, ProgressFile, ValidationGrid
    from .loggers import LogMetrics, build_loggers

    stages = plan_stages(cfg, raw, run_dir)
    resume_stage, _ = _stage_state(resume_ckpt)
    accelerator, devices, world = plan_devices(cfg, gpu)
    system = prev = None
    prev_system = None  # the previous stage's system when it was trained in this process
    for i, stage in enumerate(stages):
        if stage.final.is_file() and resume_ckpt is not None and stage.name != resume_stage:
            log.info("stage %s already complete; skipping", stage.name)
            prev, prev_system = stage, None
            continue
        system = build_system(stage.cfg)  # loads priors: a bad model path fails before anything is written
        if not (run_dir / "config.yaml").is_file() and process_rank() == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(to_plain(cfg), sort_keys=False))
            log.info("run folder: %s", run_dir)
        ckpt_path = None
        if resume_ckpt is not None and stage.name == resume_stage:
            ckpt_path = str(resume_ckpt)
        elif prev is not None:
            _init_from_previous(system, prev, prev_system)
        prev_system = None  # release the previous stage (GPU memory) once this one is initialised
        callbacks = [
            AtomicCheckpoint(stage.ckpt, stage.cfg.trainer.ckpt_every, stage.name),
            LogMetrics(stage.cfg.trainer.log_every, stage.name),
            OnRankZero(ValidationGrid(run_dir / "renders" / "val" / stage.name, stage.cfg.trainer.val_every)),
            OnRankZero(ProgressBar(stage.cfg.trainer.max_steps, f"{cfg.name}:{stage.name}", stage.cfg.trainer.progress_bar)),
            OnRankZero(ProgressFile(run_dir / "progress.json", stage.name, i, [(s.name, s.cfg.trainer.max_steps) for s in stages])),
        ]
        trainer = pl.Trainer(
            max_steps=stage.cfg.trainer.max_steps,
            accelerator=accelerator,
            devices=devices,
            num_nodes=stage.cfg.trainer.num_nodes,
            strategy=build_strategy(world, accelerator),
            logger=build_loggers(stage.cfg.trainer.loggers, run_dir, f"{cfg.name}:{run_dir.name}") or False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            gradient_clip_val=stage.cfg.trainer.grad_clip,
            deterministic=stage.cfg.deterministic,
            default_root_dir=str(run_dir),
            callbacks=callbacks,
        )
        try:
            trainer.fit(system, train_dataloaders=_step_loader(), ckpt_path=ckpt_path)
        except SystemExit as e:  # Lightning turns Ctrl-C into SystemExit after our on_exception save
            raise KeyboardInterrupt(f"interrupted; resume with --resume {stage.ckpt}") from e
        except NonFiniteError as e:
            good = f"{stage.ckpt} (step {_stage_state(stage.ckpt)[1]})" if stage.ckpt.is_file() else "none was written yet"
            raise NonFiniteError(f"{e}; the last good checkpoint is {good}: lower that module's learning rate "
                                 "(or the guidance's grad_clip) and resume from it") from None
        from .callbacks import atomic_save_checkpoint

        if stage.final != stage.ckpt:
            atomic_save_checkpoint(trainer, stage.final)
        prev, prev_system = stage, system
    if system is None:  # every stage was already complete
        system = load_system(stages[-1].cfg, stages[-1].final)
    return system


def _quiet_lightning() -> None:
    """Lightning's banner lines (GPU/TPU available, tips) are noise in a one-scene run."""
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings("ignore", message=".*weights_only.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def _init_from_previous(system, prev: Stage, prev_system=None) -> None:
    """Start a stage from the previous stage's result (converted if the representation differs):
    the in-memory system when the previous stage ran in this process, else its final checkpoint."""
    if prev_system is None:
        prev_system = load_system(prev.cfg, prev.final)
    rep, src = system.representation, prev_system.representation
    convert = getattr(rep, "convert_from", None)
    if convert is not None:
        convert(src, render=scene_render(prev_system))  # a converter may read the previous scene's renders
    elif type(rep) is type(src):
        rep.load_state_dict(src.state_dict())
    else:
        raise ConfigError(
            f"stage {prev.name!r} produced a {type(src).__name__} that {type(rep).__name__} cannot be initialised from"
        )
    if type(system.background) is type(prev_system.background):
        system.background.load_state_dict(prev_system.background.state_dict())


def load_system(stage_cfg: RunConfig, ckpt_path: Path):
    system = build_system(stage_cfg)
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    system.load_state_dict(ck["state_dict"], strict=False)
    return system


def _step_loader():
    """Text-to-3D has no dataset: cameras are sampled from the step. Lightning still wants a loader."""
    from torch.utils.data import DataLoader, IterableDataset

    class _Steps(IterableDataset):
        def __iter__(self):
            while True:
                yield 0

    return DataLoader(_Steps(), batch_size=None)


def test_renders(system, cfg: RunConfig, run_dir: Path) -> Path:
    """Orbit frames (PNG), an orbit video (MP4) and a contact sheet of the frames."""
    from ..data.cameras import orbit_cameras
    from ..utils.images import make_grid, save_png, save_video, to_uint8

    system = system.to("cuda" if torch.cuda.is_available() else "cpu")
    cams = orbit_cameras(cfg.data, cfg.trainer.test_views, cfg.trainer.test_resolution)
    outs = system.render_views(cams)
    rgb = torch.cat([o.rgb for o in outs]).cpu()
    folder = run_dir / "renders" / "test"
    frames = [to_uint8(im) for im in rgb]
    for i, f in enumerate(frames):
        save_png(folder / f"frame{i:03d}.png", f)
    save_video(folder / "orbit.mp4", frames)
    save_png(folder / "orbit.png", make_grid([list(rgb[: len(rgb) // 2]), list(rgb[len(rgb) // 2 :])]))
    if hasattr(system.representation, "at_time"):  # a moving scene: an orbit through time, time from the front
        from .time_renders import time_renders

        time_renders(system, cfg, folder)
    if hasattr(system, "before_after"):  # a scene edit: the scene before and after, side by side
        before, after = system.before_after(cams)
        save_video(folder / "before_after.mp4", [to_uint8(torch.cat([b, a], -1)) for b, a in zip(before, after)])
        anchor = system.anchor_view(cfg.trainer.test_resolution)
        if anchor is not None:  # the proposed anchor view: box tinted | before | after
            save_png(folder / "anchor.png", to_uint8(anchor))
    return folder


def export(system, cfg: RunConfig, run_dir: Path) -> list[Path]:
    """Write ``cfg.export.formats`` into ``run_dir/export``: all files or none (see export/files.py).

    A representation with ``splat_data()`` (Gaussians) gets the splat formats; every representation gets
    a textured mesh, taken from its own renders (``export.mesher=solid``, the renderer is the run's) or
    from its density (``density``: the Gaussians' splatted density field, NeRF's, DMTet's own), plus the
    report and preview when a renderer is available. A scene edit (``system: edit``) writes the edited
    scene's splats and, under ``export/object/``, the inserted object alone: splats, mesh, placement.
    ``viewer.html`` (export/viewer.py) shows the top-level mesh and splats in a browser.
    """
    from ..export.files import check_writable, write_files
    from ..export.viewer import with_viewer

    folder = run_dir / "export"
    check_writable(folder)  # before minutes of meshing
    rep = system.representation
    if hasattr(rep, "frozen_at"):  # a moving scene: frame 0's files, an animated GLB and the frame sequence
        from ..export.animation import animation_files

        files, frames = animation_files(rep, cfg.export, lambda t: scene_render(system, rep.frozen_at(t)))
        return write_files(folder, with_viewer(files, cfg.export)) + write_files(folder / "frames", frames)
    if hasattr(system, "object_alone"):  # a scene edit: no mesh of a whole captured scene
        files = encode_representation(rep, cfg, None, mesh=False)
        obj = system.object_alone()
        obj_files = encode_representation(obj, cfg, scene_render(system, obj))
        obj_files["placement.json"] = system.placement()
        return write_files(folder, with_viewer(files, cfg.export)) + write_files(folder / "object", obj_files)
    return write_files(folder, with_viewer(encode_representation(rep, cfg, scene_render(system)), cfg.export))


def encode_representation(rep, cfg: RunConfig, render, mesh: bool = True) -> dict[str, bytes]:
    """``{file name: bytes}`` of ``rep`` in ``cfg.export.formats`` (splats for Gaussians, then a mesh)."""
    from .. import registry

    files: dict = {}
    surface = rep
    if hasattr(rep, "splat_data"):
        files.update(registry.get("exporter", "gaussians")().encode(rep, cfg.export))
        if cfg.export.mesher == "density":
            from ..export.splat_field import SplatField

            surface = SplatField(rep.splat_data())
    else:
        skipped = [f for f in cfg.export.formats if f not in ("glb", "obj", "viewer")]
        if skipped:
            log.info("export: %s skipped: %s has no Gaussians", ", ".join(skipped), type(rep).__name__)
    if mesh:
        files.update(registry.get("exporter", "mesh")().encode(surface, cfg.export, render=render))
    if not files:
        raise ValueError(f"export.formats {cfg.export.formats} produce no file for a {type(rep).__name__}; add glb or obj")
    return files


def scene_render(system, representation=None):
    """cameras -> RenderOutput of particle 0 (or ``representation`` with the system's renderer), unlit
    (albedo) over black, in eval mode: what the export reads."""
    from ..export.refine import black

    if getattr(system, "renderer", None) is None:
        return None

    def render(cameras):
        was_training = system.training
        system.eval()
        try:
            with torch.no_grad():
                rep = system.representation if representation is None else representation
                return system.renderer(rep, cameras.to(system.device), black, shading="albedo")
        finally:
            system.train(was_training)

    return render
