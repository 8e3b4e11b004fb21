"""The machine's own ceilings, measured: a large GEMM's rate and a large copy's bandwidth.

A latency says little until it is set against what the hardware can do. `measure_peak` times, on
the device and threads a benchmark uses:

- a square GEMM (`torch.mm`, n x n x n, 2 n^3 FLOPs) in the benchmark's dtype: the arithmetic
  ceiling (on CUDA, random bf16 data; zeros run faster on some cards and are never used);
- a tensor copy (`dst.copy_(src)`), counting the bytes read plus the bytes written: the memory
  ceiling.

`achieved` turns a model's MACs and a latency into FLOP/s and a fraction of that ceiling. The
ceilings are measurements of this run, not datasheet figures: a datasheet peak is a lead, and a
shared or throttled machine reaches less of it.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _time_cuda(fn: Callable[[], Any], device: torch.device, reps: int) -> float:
    """Median seconds of `fn` over `reps` runs, CUDA events around each, after 3 warm-ups."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize(device)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    return statistics.median(times)


def _time_cpu(fn: Callable[[], Any], reps: int) -> float:
    """Median seconds of `fn` over `reps` runs (perf_counter), after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_peak(device: str | torch.device = "cpu", dtype: str = "fp32", *, threads: int | None = None,
                 gemm_n: int | None = None, copy_mb: int | None = None, reps: int = 10) -> dict[str, Any]:
    """GEMM FLOP/s and copy bandwidth of this device, in `dtype`, on `threads` CPU threads.

    Defaults: n = 8192 and a 2 GiB copy on CUDA; n = 2048 and a 256 MiB copy on the CPU (each
    larger than the caches of the machines this project runs on).
    """
    from bench.latency import fixed_threads

    dev = torch.device(device)
    torch_dtype = DTYPES[dtype]
    cuda = dev.type == "cuda"
    n = gemm_n or (8192 if cuda else 2048)
    copy_bytes = (copy_mb or (2048 if cuda else 256)) * 2**20
    generator = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, generator=generator).to(torch_dtype)
    b = torch.randn(n, n, device=dev, generator=generator).to(torch_dtype)
    src = torch.randn(copy_bytes // 4, device=dev, generator=generator)
    dst = torch.empty_like(src)
    with fixed_threads(threads or torch.get_num_threads()):
        timer = (lambda fn: _time_cuda(fn, dev, reps)) if cuda else (lambda fn: _time_cpu(fn, reps))
        gemm_s = timer(lambda: torch.mm(a, b))
        copy_s = timer(lambda: dst.copy_(src))
    return {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "dtype": dtype,
        "threads": None if cuda else (threads or torch.get_num_threads()),
        "gemm_n": n,
        "gemm_tflops": 2 * n**3 / gemm_s / 1e12,
        "copy_mib": copy_bytes // 2**20,
        "copy_gb_s": 2 * copy_bytes / copy_s / 1e9,  # bytes read + bytes written
        "ridge_flop_per_byte": (2 * n**3 / gemm_s) / (2 * copy_bytes / copy_s),
        "timer": "cuda_events" if cuda else "perf_counter",
        "reps": reps,
    }


def achieved(gmacs_per_image: float, batch_size: int, latency_ms: float,
             peak: dict[str, Any] | None = None) -> dict[str, Any]:
    """FLOP/s a forward pass reached (2 FLOPs per MAC), and its fraction of the measured GEMM peak."""
    tflops = 2 * gmacs_per_image * 1e9 * batch_size / (latency_ms / 1000.0) / 1e12
    out = {"achieved_tflops": tflops}
    if peak:
        out["fraction_of_peak"] = tflops / peak["gemm_tflops"]
    return out
