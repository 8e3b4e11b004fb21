"""Per-stage timing of a model: the median time of each top-level child (stage) over forward passes.

Every model's stages are its top-level children (docs/architecture.md, "Stages are top-level
children"), timed one of two ways (`measure_stages` says which in `StageTimes.method`):

- `forward_hooks_eager` (`stage_times`): forward hooks on the stages time them as the eager model
  runs: on a CPU the host clock at each stage's entry and exit, on a GPU a CUDA event at each, read
  after one synchronisation per pass. A compiled cell's stages are timed this way too.
- `cuda_graphs_per_stage` (`graph_stage_times`): under CUDA graphs the whole forward is one replay
  and no hook fires inside it, so each stage is captured as its own graph instead. One eager pass
  records what each stage is called with; stage k's graph reads the static output of the earlier
  stage's graph where the model passes that output on (a chain, as in the forward; FPN's module
  reads four of them), a static copy otherwise (e.g. a size tuple, a tensor computed between
  stages). Each graph's replay is timed between CUDA events, the stages in forward order, pass
  after pass. A stage that cannot be captured (a host synchronisation, a stage called twice per
  forward) makes the whole breakdown fall back to the hooks, with the reason in `StageTimes.note`.

`stage_bound_metrics` gives each stage's roofline lower bound (bench.measure.roofline.stage_bounds)
at measured ceilings, so that a stage's time can be read as a distance to its bound.
Used by `vtbench interleave --stages` (bench/pipeline/interleave.py).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

from bench.core.errors import UsageError
from bench.core.util import image_hw

log = logging.getLogger(__name__)

INPUT_SIZE = 224
HOOKS = "forward_hooks_eager"
GRAPHS = "cuda_graphs_per_stage"

# (step) -> (replay, static output): a stage's step captured; `capture_stage_graph` on a GPU.
Capture = Callable[[Callable[[], Any], torch.device], tuple[Callable[[], Any], Any]]
# (replay, device) -> a callable that runs it once and gives the seconds it took.
Timer = Callable[[Callable[[], Any], torch.device], Callable[[], float]]


@dataclass(frozen=True)
class StageTimes:
    """Median ms per stage, how they were timed (`HOOKS` or `GRAPHS`) and why not as asked (or None)."""

    times: dict[str, float]
    method: str
    note: str | None = None


class StageCaptureError(RuntimeError):
    """A stage could not be timed as a CUDA graph of its own (the message names the stage and why)."""


def measure_stages(model: nn.Module, batch: int, iters: int, threads: int | None, size: Any = INPUT_SIZE, *,
                   device: str = "cpu", dtype: str = "fp32", channels_last: bool = False,
                   cuda_graphs: bool = False) -> StageTimes:
    """Each stage's median time (ms) over `iters` passes: per-stage CUDA graphs when `cuda_graphs`
    (falling back to the eager hooks, with a note, where a stage cannot be captured), else the hooks."""
    eager = dict(size=size, device=device, dtype=dtype, channels_last=channels_last)
    if not cuda_graphs:
        return StageTimes(stage_times(model, batch, iters, threads, **eager), HOOKS)
    if not device.startswith("cuda"):
        raise UsageError("CUDA graphs need a CUDA device; time the stages with cuda_graphs=False")
    from bench.measure.latency import DTYPES

    dev = torch.device(device)

    def graphs() -> dict[str, float]:
        x = _make_input(batch, size, device, channels_last)
        with torch.cuda.device(dev):
            return graph_stage_times(model, x, iters, device=dev, torch_dtype=DTYPES[dtype])

    return graphs_or_hooks(graphs, lambda: stage_times(model, batch, iters, threads, **eager))


def graphs_or_hooks(graphs: Callable[[], dict[str, float]], hooks: Callable[[], dict[str, float]]) -> StageTimes:
    """The per-stage graph times, or, where a stage cannot be captured, the hooks' times with the reason."""
    try:
        return StageTimes(graphs(), GRAPHS)
    except StageCaptureError as exc:
        log.warning("%s; timing the stages eager with forward hooks", exc)
        return StageTimes(hooks(), HOOKS, note=f"{exc}; stages timed eager with forward hooks")


def stage_times(model: nn.Module, batch: int, iters: int, threads: int | None, size: Any = INPUT_SIZE, *,
                device: str = "cpu", dtype: str = "fp32", channels_last: bool = False) -> dict[str, float]:
    """Median time (ms) of each top-level stage over `iters` forward passes, from forward hooks.

    `size`: the input side, or [H, W]. Pass 0 warms up and is not recorded.

    CPU: perf_counter at each stage's entry and exit. CUDA: an event at each entry and exit, read
    after one synchronisation per pass, so the stages are timed as they run on the device (the
    pass itself is not serialised more than a plain forward is).
    """
    from bench.measure.latency import DTYPES, fixed_threads

    cuda = device.startswith("cuda")
    marks: dict[str, list] = {name: [] for name, _ in model.named_children()}
    clock = (lambda: _recorded_event()) if cuda else time.perf_counter

    def mark(name: str, at: int) -> Callable:
        def hook(*_):
            if at == 0:
                marks[name].append([clock(), None])
            else:
                marks[name][-1][1] = clock()
        return hook

    handles = []
    for name, child in model.named_children():
        handles += [child.register_forward_pre_hook(mark(name, 0)), child.register_forward_hook(mark(name, 1))]
    x = _make_input(batch, size, device, channels_last)
    times: dict[str, list[float]] = {name: [] for name in marks}
    try:
        with fixed_threads(threads or torch.get_num_threads()), torch.inference_mode(), \
                _autocast(device, DTYPES[dtype]):
            for i in range(iters + 1):  # pass 0 warms up and is not recorded
                for values in marks.values():
                    values.clear()
                model(x)
                if cuda:
                    torch.cuda.synchronize()
                if i == 0:
                    continue
                for name, pairs in marks.items():
                    times[name] += [_elapsed_ms(start, end) for start, end in pairs if end is not None]
    finally:
        for handle in handles:
            handle.remove()
    return {name: statistics.median(values) for name, values in times.items() if values}


# ------------------------------------------------------------------ one CUDA graph per stage ----

def stage_calls(model: nn.Module, x: torch.Tensor, autocast: Any = None) -> list[tuple[str, tuple, dict, Any]]:
    """(stage, args, kwargs, output) of every stage one eager forward calls, in the order it calls them.

    Raises StageCaptureError for a stage called more than once per forward (its graph would be
    captured at one call's shapes and replayed once, which times neither call).
    """
    calls: list[tuple[str, tuple, dict, Any]] = []

    def record(name: str) -> Callable:
        def hook(module, args, kwargs, output):
            calls.append((name, args, kwargs, output))
        return hook

    handles = [child.register_forward_hook(record(name), with_kwargs=True) for name, child in model.named_children()]
    try:
        with torch.inference_mode(), autocast or contextlib.nullcontext():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    names = [name for name, *_ in calls]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise StageCaptureError(f"stage(s) {', '.join(twice)} run more than once per forward; "
                                f"a graph per stage cannot time them")
    return calls


def chained_inputs(args: tuple, kwargs: dict, earlier: dict[int, Any]) -> tuple[tuple, dict]:
    """A stage's static inputs: where the forward passed an earlier stage's output tensor (by
    identity, `earlier`: id of the eager tensor -> the static tensor that stands for it), that;
    any other tensor a static copy of its own; anything else as it was."""
    def static(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        return earlier[id(value)] if id(value) in earlier else value.clone()

    with torch.inference_mode():
        return tree_map(static, (args, kwargs))


def graph_stage_times(model: nn.Module, x: torch.Tensor, iters: int, *, device: torch.device,
                      torch_dtype: torch.dtype = torch.float32, capture: Capture | None = None,
                      timer: Timer | None = None) -> dict[str, float]:
    """Median time (ms) of each stage over `iters` replays of its own graph (see the module doc).

    `capture` and `timer` default to a CUDA graph capture and CUDA events (`capture_stage_graph`,
    bench.measure.latency's event timer); they are parameters so that the chaining and the timing
    loop can be checked without a GPU. Pass 0 warms up and is not recorded.
    Raises StageCaptureError naming the stage whose capture failed.
    """
    from bench.measure.latency import _cuda_timer

    capture = capture or capture_stage_graph
    timer = timer or _cuda_timer
    children = dict(model.named_children())
    calls = stage_calls(model, x, _autocast(device, torch_dtype, cache=True))
    earlier: dict[int, Any] = {}
    replays: dict[str, Callable[[], float]] = {}
    keep: list[Any] = []  # the eager outputs stay alive, so that no id in `earlier` is reused
    for name, args, kwargs, output in calls:
        static_args, static_kwargs = chained_inputs(args, kwargs, earlier)
        step = _stage_step(children[name], static_args, static_kwargs, device, torch_dtype)
        try:
            replay, static_output = capture(step, device)
        except Exception as exc:  # noqa: BLE001 - any capture failure falls back, with its reason recorded
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StageCaptureError(f"CUDA graph capture of stage {name} failed: {first}") from exc
        eager_leaves = [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]
        static_leaves = [t for t in tree_leaves(static_output) if isinstance(t, torch.Tensor)]
        earlier.update((id(e), s) for e, s in zip(eager_leaves, static_leaves))
        keep.append(output)
        replays[name] = timer(replay, device)
    times: dict[str, list[float]] = {name: [] for name in replays}
    for i in range(iters + 1):
        for name, run_once in replays.items():
            seconds = run_once()
            if i:
                times[name].append(1000.0 * seconds)
    return {name: statistics.median(values) for name, values in times.items() if values}


def capture_stage_graph(step: Callable[[], Any], device: torch.device) -> tuple[Callable[[], Any], Any]:
    """`step` captured in a CUDA graph (bench.measure.latency's capture): (its replay, its static output)."""
    from bench.measure.latency import _capture_cuda_graph

    replay = _capture_cuda_graph(step, device)
    return replay, step._static_output  # type: ignore[attr-defined]  # set by the capture


def _stage_step(child: nn.Module, args: tuple, kwargs: dict, device: torch.device,
                torch_dtype: torch.dtype) -> Callable[[], Any]:
    """One call of a stage on its static inputs, as the model's forward makes it (inference, autocast)."""
    def step():
        # The autocast cache is off: a capture must not keep casts made outside the graph.
        with torch.inference_mode(), _autocast(device, torch_dtype, cache=False):
            return child(*args, **kwargs)

    return step


# ------------------------------------------------------------------ roofline bounds ----

def stage_bound_metrics(model: nn.Module, size: Any, batch: int, dtype: str, gemm_tflops: float,
                        copy_gb_s: float) -> dict[str, float]:
    """Each stage's roofline lower bounds (ms) at the given ceilings (bench.measure.roofline.stage_bounds):
    `stage_bound_ms_<stage>`, one fused kernel (max of FLOPs / GEMM peak and its minimum bytes /
    copy bandwidth), and `stage_bound_unfused_ms_<stage>`, each operator its own kernel at its
    roofline. The costs come from a shape-only copy of the model (the meta device); a non-square
    input gives no bounds ({}), as the cost model takes one side."""
    from bench.measure.roofline import FLOAT_BYTES, operator_costs, stage_bounds

    height, width = image_hw(size)
    if height != width or gemm_tflops <= 0 or copy_gb_s <= 0:
        return {}
    shapes_only = copy.deepcopy(model).to("meta")
    ops, fused = operator_costs(shapes_only, height, batch, FLOAT_BYTES[dtype])
    out: dict[str, float] = {}
    for stage, bound in stage_bounds(ops, fused, gemm_tflops, copy_gb_s / 1000.0).items():
        if stage in dict(model.named_children()):
            out[f"stage_bound_ms_{stage}"] = bound["fused_ms"]
            out[f"stage_bound_unfused_ms_{stage}"] = bound["unfused_ms"]
    return out


# ------------------------------------------------------------------ helpers ----

def _make_input(batch: int, size: Any, device: str, channels_last: bool) -> torch.Tensor:
    """A random fp32 image batch on the device, as a latency measurement makes it."""
    from bench.measure.latency import _make_input as latency_input

    return latency_input(batch, image_hw(size), 3, torch.device(device), channels_last)


def _autocast(device: str | torch.device, torch_dtype: torch.dtype, *, cache: bool = True) -> Any:
    """Autocast to bf16/fp16 on the device, a no-op for fp32 (bench.measure.latency's)."""
    from bench.measure.latency import _autocast as latency_autocast

    return latency_autocast(torch.device(device), torch_dtype, cache=cache)


def _recorded_event() -> "torch.cuda.Event":
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def _elapsed_ms(start: Any, end: Any) -> float:
    """Milliseconds between two marks: CUDA events or perf_counter readings."""
    if isinstance(start, float):
        return 1000 * (end - start)
    return start.elapsed_time(end)
