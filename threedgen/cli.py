"""Command line: ``launch.py --config C [--train | --test | --export] [--resume auto|PATH] [--gpu IDS] key=value ...``;
``threedgen app`` (or ``launch.py --app``) starts the web app (threedgen/app/).

Heavy imports happen after argument parsing, so ``--help`` is instant and imports no
diffusers, transformers or CUDA library. Bad input (config, resume path, output folder)
prints one line and exits with status 2 before anything is written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="launch.py",
        description="threedgen: text-to-3D by score distillation. Runs a recipe (YAML) with key=value overrides.",
        epilog="example: python launch.py --config configs/toy/sds-nerf.yaml --train system.prompt=\"a red cube\"; the web app: threedgen app (or launch.py --app)",
    )
    p.add_argument("--config", help="recipe YAML, e.g. configs/toy/sds-nerf.yaml (optional with --test/--export --resume PATH: the run's config.yaml)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--train", action="store_true", help="optimise the scene (default), then test and export")
    mode.add_argument("--test", action="store_true", help="render the orbit video of a trained run (needs --resume)")
    mode.add_argument("--export", action="store_true", help="re-export a trained run into its export/ with the given export.* settings (needs --resume)")
    p.add_argument("--resume", metavar="auto|PATH", help="continue from a checkpoint (or a run folder: its ckpts/last.ckpt); 'auto' picks the latest run of this recipe and prompt")
    p.add_argument("--prompts", metavar="FILE", help="train one run per line of FILE (blank and # lines skipped; a rerun skips finished prompts), then print a summary")
    p.add_argument("--gpu", metavar="IDS", help="comma-separated CUDA device ids (default: first GPU if any, else CPU)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, dotted paths and list indices: system.guidance.0.guidance_scale=7.5")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: this program's own, ``sys.argv``: then this process is
    the run, and it tunes the garbage collector for that, threedgen/utils/process_gc.py)."""
    program = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["app"] or argv[:1] == ["--app"]:  # ``threedgen app`` / ``launch.py --app``: the web app
        from .app import main as app_main

        return app_main(argv[1:])
    from .utils import process_gc

    if not program:
        return _main(argv)
    process_gc.pause_for_startup()
    try:
        return _main(argv)
    finally:
        process_gc.freeze_for_exit()


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[threedgen] %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from .config import ConfigError, load_config
    from .systems.health import NonFiniteError
    from .utils.allocator import keep_freed_memory
    from .utils.atomic import DiskError

    keep_freed_memory()

    try:
        check_gpus(args.gpu)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.prompts:
        return _batch(args)

    try:
        overrides = list(args.overrides) + (["trainer.progress_bar=false"] if args.quiet else [])
        cfg, raw = load_config(_config_path(args), overrides)
        from .systems import runner

        need_ckpt = args.test or args.export
        runner.plan_stages(cfg, raw, Path(cfg.output_dir))  # stage hand-overs checked before anything is written
        run_dir, ckpt = runner.resolve_run(cfg, args.resume, need_ckpt)
        world = 1 if need_ckpt else runner.plan_devices(cfg, args.gpu)[2]
        _check_external_launch(world, argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, FileNotFoundError) as e:  # e.g. a prior folder or prompt rejected while validating
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT

    log = logging.getLogger("threedgen")
    try:
        if need_ckpt:
            stages = runner.plan_stages(cfg, raw, run_dir)
            last = stages[-1]
            src = last.final if last.final.is_file() else ckpt
            system = runner.load_system(last.cfg, src)
        else:
            system = _train(runner, cfg, raw, run_dir, ckpt, args.gpu, world)
            if world > 1 and runner.process_rank() != 0:
                return 0  # rank 0 renders the orbit and exports
        if args.test or (args.train or not need_ckpt):
            folder = runner.test_renders(system, cfg, run_dir)
            log.info("orbit video: %s", folder / "orbit.mp4")
        if args.export or (not need_ckpt and cfg.trainer.export_at_end):
            for path in runner.export(system, cfg, run_dir):
                log.info("exported: %s", path)
    except KeyboardInterrupt as e:
        print(f"\n{e or 'interrupted'}", file=sys.stderr)
        return 130
    except (DiskError, NonFiniteError) as e:  # a full disk, NaN parameters: every file written before is intact
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _train(runner, cfg, raw, run_dir: Path, ckpt, gpu, world: int):
    """Train; in a distributed run the processes Lightning starts (they rerun this command) are told
    the run folder first, so that all of them write into one (threedgen/systems/distributed.py)."""
    import os

    from .systems.distributed import RUN_DIR_ENV

    if world <= 1 or RUN_DIR_ENV in os.environ:
        return runner.train(cfg, raw, run_dir, ckpt, gpu=gpu)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        return runner.train(cfg, raw, run_dir, ckpt, gpu=gpu)
    finally:
        os.environ.pop(RUN_DIR_ENV, None)


def _check_external_launch(world: int, argv: list[str]) -> None:
    """torchrun / SLURM start every process of a multi-process run themselves: they must be told the
    one run folder, or each would make its own. Otherwise Lightning starts the other processes by
    rerunning this program's command line, so ``main(argv)`` called inside another program (whose
    ``sys.argv`` is not this run) cannot start them."""
    import os

    from .config import ConfigError
    from .systems.distributed import RUN_DIR_ENV

    started_outside = any(k in os.environ for k in ("TORCHELASTIC_RUN_ID", "SLURM_PROCID", "LOCAL_RANK"))
    if world > 1 and started_outside and RUN_DIR_ENV not in os.environ:
        raise ConfigError(f"this process was started by torchrun or SLURM for a {world}-process run: set {RUN_DIR_ENV}="
                          "<a folder on a filesystem every machine shares> so that all processes write one run folder")
    if world > 1 and not started_outside and RUN_DIR_ENV not in os.environ and list(argv) != sys.argv[1:]:
        raise ConfigError(f"a {world}-process run starts its other processes by rerunning this program's command line, "
                          "which is not this run's: start it from launch.py (or torchrun), or set trainer.devices=1")


def check_gpus(gpu: str | None) -> None:
    """``--gpu IDS`` names CUDA devices this machine has; ConfigError (one line) otherwise."""
    if gpu is None:
        return
    from .config import ConfigError

    try:
        ids = [int(i) for i in gpu.split(",") if i.strip()]
    except ValueError:
        raise ConfigError(f"--gpu {gpu!r}: expected comma-separated device numbers such as 0 or 0,1") from None
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
        raise ConfigError(f"--gpu {gpu!r}: expected distinct device numbers >= 0 such as 0 or 0,1")
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        raise ConfigError(f"--gpu {gpu}: this machine has no CUDA GPU that torch can use; leave --gpu out to train on the CPU")
    missing = [i for i in ids if i >= n]
    if missing:
        raise ConfigError(f"--gpu {gpu}: no GPU {', '.join(map(str, missing))} here; this machine has {n} (0..{n - 1})")


def _batch(args) -> int:
    """``--prompts FILE``: every prompt checked first (exit 2 on bad input), then one run each (threedgen/batch.py)."""
    from .batch import plan, read_prompts, run_batch
    from .config import ConfigError
    from .utils.process_gc import startup_done

    startup_done()  # this process only waits for the runs it starts

    try:
        if not args.config or args.test or args.export or args.resume:
            raise ConfigError("--prompts trains a list of prompts: give --config RECIPE and no --test/--export/--resume "
                              "(a rerun skips the prompts already finished)")
        plan(args.config, read_prompts(Path(args.prompts)), list(args.overrides))
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return run_batch(args.config, args.prompts, list(args.overrides), args.gpu, args.quiet)
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to continue the batch", file=sys.stderr)
        return 130


def _config_path(args) -> str:
    """--config, or for --test/--export --resume PATH the config.yaml saved in that run's folder."""
    from pathlib import Path

    from .config import ConfigError

    if args.config:
        return args.config
    if (args.test or args.export) and args.resume and args.resume != "auto":
        ckpt = Path(args.resume)
        run = ckpt if ckpt.is_dir() else ckpt.parent.parent if ckpt.parent.name == "ckpts" else ckpt.parent
        if (run / "config.yaml").is_file():
            return str(run / "config.yaml")
        raise ConfigError(f"--resume {args.resume!r}: no config.yaml in its run folder {str(run)!r}; pass --config")
    raise ConfigError("--config is required (or --test/--export with --resume RUN_FOLDER or PATH/TO/ckpts/last.ckpt, which reads the run's config.yaml)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
