"""Each main recipe's training step against its physical floor: steps/s, where the time goes, peak
memory, and the overhead ratio.

    python benchmarks/bench_floor.py                 # CPU: the toy recipes (toy prior), one thread
    python benchmarks/bench_floor.py --full-size     # GPU: the SD recipes on an SD-2.1-size UNet + VAE, random weights
    python benchmarks/bench_floor.py --compile       # each recipe also with prior.compile=true: speed-up and compile time
    python benchmarks/bench_floor.py --cuda-graph    # each recipe also with prior.cuda_graph=true (a GPU; no effect on a CPU)

Per recipe, one training step (render, objective, backward, optimiser) is timed over ``--steps``
steps after warm-up, split by hooks into: render (the renderer's forward), prior (every denoiser
forward call: the frozen prior's, VSD's LoRA model's), VAE encode (its forward), backward (all of ``loss.backward()``: render, VAE and
representation), optimiser, and the rest (bookkeeping: prompts, schedules, noise, CFG arithmetic,
logging). The **floor** is the same batch's bare calls of the frozen prior's denoiser (the
calls the step made, replayed without a graph) plus the VAE encoder's forward and backward at the prior's resolution; the
**overhead ratio** = step time / floor: 1.0 would mean the recipe costs only what its prior must.

The split waits for the device around every timed call, so it also shows what the step would cost
if nothing overlapped. **loop steps/s** is the real training loop instead: ``launch.py``'s code
(Lightning, the callbacks, the NaN check) on the recipe's first stage, with no timers, measured
between two logged steps (metrics.csv's ``time_s``; only those two log writes wait for the device).
It is the figure the speed targets are about (not measured again for ``--compile``'s compiled run).
``--profile N`` then profiles N more unsynchronised steps (``benchmarks/step_profile.py``): host time per
part, kernel launches, how busy the device was, and the kernels that took its time.

``--full-size`` builds a Stable-Diffusion-2.1-size folder (the UNet's real configuration: 865 M
parameters; SD's VAE; a one-layer text encoder, since prompts are encoded once) with random weights,
so nothing is downloaded and the compute is the real one. Absolute times mean something only on a GPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from threedgen.utils.allocator import keep_freed_memory

TOY = ["configs/toy/sds-nerf.yaml", "configs/toy/sds-gaussian.yaml", "configs/toy/vsd-nerf.yaml", "configs/toy/cds-nerf.yaml"]
FULL = ["configs/dreamfusion-sd.yaml", "configs/gaussian-sds.yaml", "configs/prolificdreamer.yaml", "configs/consistent3d.yaml"]


def sd21_size_folder(folder: Path, prediction_type: str = "epsilon") -> Path:
    """A diffusers folder with Stable Diffusion 2.1's UNet and VAE configuration and random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    UNet2DConditionModel(sample_size=64, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
                         block_out_channels=(320, 640, 1280, 1280)).save_pretrained(folder / "unet")
    AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4).save_pretrained(folder / "vae")
    chars = [chr(c) for c in range(33, 127)]
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77).save_pretrained(folder / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=1024, intermediate_size=1024, num_hidden_layers=1,
                                 num_attention_heads=8)).save_pretrained(folder / "text_encoder")
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type=prediction_type).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"]}))
    return folder


def model_overrides(raw, folder: str, path: str = "") -> list[str]:
    """``key=folder`` for every ``model`` key of a recipe (guidance priors, LoRA bases), stages included."""
    out = []
    if isinstance(raw, dict):
        for k, v in raw.items():
            p = f"{path}.{k}" if path else str(k)
            out += [f"{p}={folder}"] if k == "model" and isinstance(v, str) else model_overrides(v, folder, p)
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            out += model_overrides(v, folder, f"{path}.{i}")
    return out


def prior_overrides(raw, setting: str) -> list[str]:
    """``prior.<setting>=true`` for every prior of a recipe (the ``model`` keys' parents), stages included."""
    return [o.split("=")[0].rsplit(".", 1)[0] + f".{setting}=true" for o in model_overrides(raw, "x") if o.split("=")[0].endswith("prior.model")]


class Timer:
    """Sums the seconds between a module's forward pre-hook and forward hook (synchronising on CUDA)."""

    def __init__(self, modules, sync):
        self.total, self._start, self.sync, self.calls = 0.0, [], sync, []
        self.handles = [h for m in modules if m is not None for h in (m.register_forward_pre_hook(self._pre, with_kwargs=True),
                                                                       m.register_forward_hook(self._post, with_kwargs=True))]

    def _pre(self, module, args, kwargs):
        self.sync()
        self._start.append(time.perf_counter())
        keep = lambda v: v.detach().clone() if torch.is_tensor(v) else v  # noqa: E731
        self.calls.append((module, [keep(a) for a in args], {k: keep(v) for k, v in kwargs.items()}))

    def _post(self, module, args, kwargs, out):
        self.sync()
        self.total += time.perf_counter() - self._start.pop()

    def close(self):
        for h in self.handles:
            h.remove()


def floor_seconds(prior, calls, sync, resolution: int, batch: int, device) -> float:
    """The bare denoiser calls a step made (replayed with the same inputs, no graph) + VAE encode fwd+bwd."""
    total = 0.0
    with torch.no_grad():
        for module, args, kwargs in calls:
            sync()
            t0 = time.perf_counter()
            module(*args, **kwargs)
            sync()
            total += time.perf_counter() - t0
    if getattr(prior, "vae", None) is not None:
        x = torch.rand(batch, 3, resolution, resolution, device=device, requires_grad=True)
        sync()
        t0 = time.perf_counter()
        prior.encode(x).sum().backward()
        sync()
        total += time.perf_counter() - t0
    return total


def loop_seconds(recipe: str, overrides: list[str], steps: int) -> float:
    """Seconds per step of ``steps`` steps of the real training loop, after as many warm-up steps."""
    import csv

    from threedgen import cli

    out = tempfile.mkdtemp()
    warm = max(2, steps)  # logged at step ``warm`` and at the last step only: the window has no other sync of ours
    code = cli.main(["--config", recipe, "--train", "-q", f"output_dir={out}", *overrides, "stages=[]",
                     f"trainer.max_steps={warm + steps}", f"trainer.log_every={warm}", "trainer.val_every=0",
                     "trainer.ckpt_every=1000000", "trainer.export_at_end=false", "trainer.test_views=1",
                     "trainer.test_resolution=16"])
    if code != 0:
        raise RuntimeError(f"{recipe}: the training loop exited with status {code}")
    (metrics,) = Path(out).rglob("metrics.csv")
    at = {int(r["step"]): float(r["time_s"]) for r in csv.DictReader(metrics.open()) if r.get("time_s")}
    return (at[warm + steps] - at[warm]) / steps


def denoisers(system) -> list:
    """Every diffusion network the objectives run (the frozen prior's UNet/transformer, VSD's LoRA model, a
    ControlNet): diffusers models held by the guidances or their priors (priors live outside the module
    tree, so checkpoints do not carry them), VAEs left to their own timer."""
    from diffusers import AutoencoderKL, ModelMixin

    holders = list(system.guidances.modules()) + [g.prior for g in system.guidances if getattr(g, "prior", None) is not None]
    found = []
    for h in holders:
        for m in vars(h).values():
            m = getattr(m, "module", m)  # unregistered holders (the LoRA's UNet) keep the model in .module
            if isinstance(m, ModelMixin) and not isinstance(m, AutoencoderKL) and not any(m is f or m in f.modules() for f in found):
                found.append(m)
    return found


def bench(recipe: str, overrides: list[str], steps: int, device, profile: int = 0, trace: Path | None = None) -> dict:
    from threedgen.config import load_config
    from threedgen.systems.runner import build_system, plan_stages

    from threedgen.guidance.priors import clear_prior_cache

    clear_prior_cache()  # a fresh prior per bench: an eager run after a compiled one must not reuse its compiled denoiser
    torch._dynamo.reset()  # nor a compiled run the code cache of another recipe's prior (its compile time is then its own)
    cfg, raw = load_config(recipe, overrides)
    cfg = plan_stages(cfg, raw, Path(tempfile.mkdtemp()))[0].cfg  # the first stage of staged recipes
    system = build_system(cfg).to(device)
    system.prepare_prompts()
    opt = system.configure_optimizers()
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    priors = [g.prior for g in system.guidances if getattr(g, "prior", None) is not None]
    prior = priors[0]
    main = getattr(prior, "unet", None) or getattr(prior, "transformer", None)
    hooked = {"render": [system.renderer], "prior": denoisers(system),
              "vae": [getattr(getattr(p, "vae", None), "encoder", None) for p in priors]}
    parts = {k: Timer(v, sync) for k, v in hooked.items()}
    rows, first = [], 0.0
    for i in range(steps + 2):
        for t in parts.values():
            t.total, t.calls = 0.0, []
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = system.training_step(None, i)
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        sync()
        t3 = time.perf_counter()
        if i == 0:
            first = t3 - t0  # with --compile: the compilation
        if i >= 2:  # two warm-up steps (occupancy grid, caches, cudnn autotuning)
            rows.append({"step": t3 - t0, "backward": t2 - t1, "optimiser": t3 - t2,
                         **{k: t.total for k, t in parts.items()}, "calls": [c for c in parts["prior"].calls if c[0] is main]})
    for t in parts.values():
        t.close()
    profiled = None
    if profile:
        from step_profile import profile_steps
        from torch.profiler import record_function

        counter = itertools.count(steps + 2)

        def one_step():
            opt.zero_grad(set_to_none=True)
            loss = system.training_step(None, next(counter))
            with record_function("phase:backward"):
                loss.backward()
            with record_function("phase:optimiser"):
                opt.step()

        profiled = profile_steps(one_step, hooked, profile, device, trace)
    med = {k: statistics.median(r[k] for r in rows) for k in ("step", "backward", "optimiser", "render", "prior", "vae")}
    med["rest"] = max(med["step"] - sum(med[k] for k in ("backward", "optimiser", "render", "prior", "vae")), 0.0)
    res = int(getattr(prior, "resolution", 64))
    med["floor"] = statistics.median(floor_seconds(prior, rows[j]["calls"], sync, res, int(cfg.data.batch_size(0)), device)
                                     for j in range(min(3, len(rows))))
    med["first"] = first
    med["profile"] = profiled
    med["peak_mb"] = (torch.cuda.max_memory_allocated() / 2**20) if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", nargs="+", default=None)
    ap.add_argument("--full-size", action="store_true", help="SD-2.1-size random models (a GPU); default: the toy recipes")
    ap.add_argument("--model", help="a local diffusers folder every model key of the recipes is pointed at (default: the recipes' own)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="each recipe also with prior.compile=true (torch.compile)")
    ap.add_argument("--cuda-graph", action="store_true", help="each recipe also with prior.cuda_graph=true (CUDA graphs of the denoiser)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also profile N unsynchronised steps per recipe: host ms per part, launches, device busy, top kernels")
    ap.add_argument("--trace", type=Path, metavar="DIR", help="with --profile: write each recipe's Chrome trace (gzipped) here")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every recipe")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as launch.py does
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    recipes = args.recipes or (FULL if args.full_size else TOY)
    folder = str(sd21_size_folder(Path(tempfile.mkdtemp()) / "sd21-size")) if args.full_size else args.model
    print(f"device={device} threads={torch.get_num_threads()} steps={args.steps} {'SD-2.1-size random models' if args.full_size else folder or 'recipes as written'}")
    print("| recipe | steps/s | step ms | render | prior fwd | VAE enc fwd | backward | optimiser | rest | floor ms | overhead | peak MB | loop steps/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    from threedgen.recipe_files import load_raw

    compiled, profiles = [], []
    for recipe in recipes:
        raw = load_raw(recipe)
        extra = model_overrides(raw, folder) if folder else []
        eager = None
        variants = [("", None)] + [(" (compiled)", "compile")] * args.compile + [(" (CUDA graphs)", "cuda_graph")] * args.cuda_graph
        for suffix, setting in variants:
            overrides = [f"threads={args.threads}", *extra, *(prior_overrides(raw, setting) if setting else []), *args.overrides]
            name = Path(recipe).stem + suffix
            tag = {"compile": "-compiled", "cuda_graph": "-cuda-graphs"}.get(setting, "")
            trace = args.trace / f"{Path(recipe).stem}{tag}.json.gz" if args.trace and args.profile else None
            m = bench(recipe, overrides, args.steps, device, args.profile, trace)
            if m["profile"] is not None:
                profiles.append((name, m["profile"]))
            loop = None if setting == "compile" else loop_seconds(recipe, overrides, args.steps)  # compiling again would cost minutes
            if setting == "compile":
                compiled.append((Path(recipe).stem, eager, m))
            elif setting is None:
                eager = m
            pct = lambda k: f"{100 * m[k] / m['step']:.0f}%"  # noqa: E731
            print(f"| {name} | {1 / m['step']:.2f} | {1000 * m['step']:.0f} | {pct('render')} | {pct('prior')} | {pct('vae')} | "
                  f"{pct('backward')} | {pct('optimiser')} | {pct('rest')} | {1000 * m['floor']:.0f} | {m['step'] / m['floor']:.2f} | {m['peak_mb']:.0f} | "
                  f"{'-' if loop is None else f'{1 / loop:.2f}'} |",
                  flush=True)
    if profiles:
        from step_profile import format_profile

        print(f"\nProfiled, {args.profile} steps each with nothing synchronised inside a step:")
        for name, p in profiles:
            print(format_profile(name, p), flush=True)
    if compiled:
        print("\n| recipe | step speed-up with prior.compile | first step eager s | first step compiled s (the compilation) | steps to pay it back |")
        print("|---|---|---|---|---|")
        for name, e, c in compiled:
            saved = e["step"] - c["step"]
            payback = f"{(c['first'] - e['first']) / saved:.0f}" if saved > 0 else "never"
            print(f"| {name} | {e['step'] / c['step']:.2f}x | {e['first']:.1f} | {c['first']:.1f} | {payback} |", flush=True)


if __name__ == "__main__":
    main()
