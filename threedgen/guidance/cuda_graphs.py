"""``prior.cuda_graph``: the frozen denoiser's no-grad calls replayed as CUDA graphs.

A full-size Stable Diffusion UNet forward is about 1,200 operators (``benchmarks/bench_floor.py
--profile`` counts them per part of a step), each one a kernel the host must launch through Python and
the dispatcher. At the batch sizes of score distillation (2 to 8 images at 64x64 latents) many of
those kernels are short, so the device can wait on the host. A CUDA graph records the launches once
and replays them with one call, and needs no compilation (``prior.compile`` cuts the launches another
way, fusing operators through ``torch.compile``, after minutes of compilation).

``GraphedForward`` replaces the module's ``forward`` on the instance (hooks, which ``nn.Module.__call__``
runs, stay eager). Each call is matched on its arguments' structure, tensor shapes, dtypes, strides and
devices, every non-tensor value, the autocast state and inference mode (Lightning validates in it): the
first call of a signature warms up and captures a graph with its own input buffers; later calls copy
their tensors into those buffers, replay, and return a copy of the outputs. It runs the plain forward
instead when gradients are on (VSD's LoRA training), when an argument is not on a CUDA device, inside
another capture, when a non-tensor argument cannot be matched, past ``max_graphs`` signatures, and after
a capture failed (with a warning naming why). Parameters that move (``.to()``, a reload) are noticed by
their address, and the graphs are then captured again.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch
import torch.utils._pytree as pytree
from torch import nn

log = logging.getLogger(__name__)


class GraphedForward:
    """A drop-in ``forward`` for a frozen module that replays its no-grad calls as CUDA graphs."""

    def __init__(self, module: nn.Module, max_graphs: int = 4, warmup: int = 2):
        self.forward: Callable = module.forward
        self._first_param = next(iter(module.parameters()), None)
        self.max_graphs, self.warmup = int(max_graphs), int(warmup)
        self.graphs: dict = {}  # signature -> (graph, input buffers, output tensors, output spec)
        self._address: Optional[int] = None
        self.replays = 0
        """Calls answered by a graph (the tests count them)."""
        self.failed: Optional[str] = None
        """Why a capture failed (then every call runs the plain forward), or None."""

    def __call__(self, *args, **kwargs):
        if torch.is_grad_enabled():
            return self.forward(*args, **kwargs)
        leaves, spec = pytree.tree_flatten((args, kwargs))
        tensors = [x for x in leaves if torch.is_tensor(x)]
        if not tensors or not all(t.is_cuda for t in tensors) or torch.cuda.is_current_stream_capturing():
            return self.forward(*args, **kwargs)
        key = _signature(leaves, spec)
        if key is None:
            return self.forward(*args, **kwargs)
        address = None if self._first_param is None else self._first_param.data_ptr()
        if address != self._address:  # first use, or the weights moved: graphs hold the old addresses
            self.graphs.clear()
            self._address = address
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_graphs or self.failed:
                return self.forward(*args, **kwargs)
            try:
                entry = self.graphs[key] = self._capture(leaves, spec)
            except RuntimeError as err:  # an operator that cannot be captured: the run goes on, eagerly
                self.failed = (str(err).splitlines() or [type(err).__name__])[0]
                log.warning("denoiser: no CUDA graph (%s); it runs eagerly", self.failed)
                return self.forward(*args, **kwargs)
        graph, buffers, outputs, out_spec = entry
        for buf, x in zip(buffers, tensors):
            buf.copy_(x)
        graph.replay()
        self.replays += 1
        return pytree.tree_unflatten([o.clone() if torch.is_tensor(o) else o for o in outputs], out_spec)

    def __deepcopy__(self, memo):
        # a deep copy of the module (VSD's LoRA copy, threedgen/guidance/lora.py) must not replay this module's
        # graphs; the copy drops its inherited ``forward``, so this object is shared rather than copied
        return self

    def _capture(self, leaves: list, spec):
        static = [x.clone() if torch.is_tensor(x) else x for x in leaves]
        args, kwargs = pytree.tree_unflatten(static, spec)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as a capture needs (cuDNN/cuBLAS set-up)
            for _ in range(self.warmup):
                self.forward(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads may use the device meanwhile
            out = self.forward(*args, **kwargs)
        outputs, out_spec = pytree.tree_flatten(out)
        shapes = [tuple(x.shape) for x in static if torch.is_tensor(x)]
        log.info("denoiser: CUDA graph %d captured for inputs %s", len(self.graphs) + 1, shapes)
        return graph, [x for x in static if torch.is_tensor(x)], outputs, out_spec


def _signature(leaves: list, spec) -> Optional[tuple]:
    """What a graph is valid for: the structure, each tensor's layout, each other value; None if unmatchable."""
    key = [spec, torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda"),  # a capture records the casts
           torch.is_inference_mode_enabled()]  # buffers made in inference mode cannot be written outside it
    for x in leaves:
        if torch.is_tensor(x):
            key.append((tuple(x.shape), x.dtype, x.device, x.stride()))
        elif x is None or isinstance(x, (bool, int, float, str)):
            key.append((type(x), x))
        else:
            return None
    return tuple(key)


def graph_forward(module: nn.Module, max_graphs: int = 4) -> GraphedForward:
    """Installs ``GraphedForward`` as ``module.forward`` (idempotent) and returns it."""
    current = vars(module).get("forward")
    if isinstance(current, GraphedForward):
        return current
    wrapped = GraphedForward(module, max_graphs=max_graphs)
    module.forward = wrapped
    return wrapped
