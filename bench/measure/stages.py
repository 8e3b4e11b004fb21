"""Per-stage timing of a model: the median time of each top-level child (stage) over forward passes.

Every model's stages are its top-level children (docs/architecture.md, "Stages are top-level
children"), so forward hooks on them time the stages as the model runs: on a CPU the host clock at
each stage's entry and exit, on a GPU a CUDA event at each, read after one synchronisation per pass.
Used by `vtbench interleave --stages` (bench/pipeline/interleave.py) and the legacy speed study.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

from bench.core.util import image_hw

INPUT_SIZE = 224


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
    height, width = image_hw(size)
    x = torch.randn(batch, 3, height, width, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch_dtype = DTYPES[dtype]
    autocast = torch.autocast(device.split(":")[0], dtype=torch_dtype) if torch_dtype is not torch.float32 \
        else contextlib.nullcontext()
    times: dict[str, list[float]] = {name: [] for name in marks}
    try:
        with fixed_threads(threads or torch.get_num_threads()), torch.inference_mode(), autocast:
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


def _recorded_event() -> "torch.cuda.Event":
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def _elapsed_ms(start: Any, end: Any) -> float:
    """Milliseconds between two marks: CUDA events or perf_counter readings."""
    if isinstance(start, float):
        return 1000 * (end - start)
    return start.elapsed_time(end)
