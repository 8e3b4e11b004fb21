"""Latency and memory of one model at one batch size, on CPU or CUDA.

How a measurement runs (timm's `benchmark.py` and pycls's timing, made stricter):

1. Prepare: move the model to the device (in place), `channels_last` if asked, `eval()` for
   inference or `train()` for a training step, wrap in `torch.compile(mode=...)` if asked.
2. Warm up until the timings settle: at least `warmup_min_iters` iterations, then more until the
   median of the last 3 is within `settle_tol` of the median of the 3 before. The limits are in
   iterations as well as seconds, so that "did not settle" describes the machine, not the
   settings: `warmup_max_s` ends an unsettled warm-up only after `warmup_settle_iters` (8: settling
   can first happen at the 6th), so a 1 s forward gets its chances as a 1 ms one does;
   `warmup_max_iters` and `warmup_cap_s` (a guard for forwards of minutes) end it regardless, and
   the row records why it stopped (`warmup_stop`) and how long it took (`warmup_s`). The first
   call is timed on its own (`first_iter_ms`): it holds compilation, cuDNN autotuning and
   allocator growth, and never enters the statistics.
3. Time at least `min_iters` samples whatever the seconds, and at least `min_time_s` seconds
   (`timed_s` records what it took). On CUDA, a pair of CUDA events around each iteration and a synchronisation after it (so
   each sample is the latency of one step, launch overhead included); with `cuda_graphs` the
   forward is captured once on a side stream after the warm-up and each sample is a replay.
   With `flush_l2` (CUDA only) a 256 MB buffer is zeroed before every iteration, warm-up and
   timed, outside the timed events (as `triton.testing.do_bench` does): each sample then starts
   from a cold L2, as a layer does when the layers before it have filled the cache with their own
   data, instead of reading weights the previous iteration left there. It holds for replays of a
   CUDA graph too (the flush runs before the replay, outside the graph and the events). A CPU
   measurement refuses it: its blocks of iterations leave no gap to flush in.
   On CPU, `torch.utils.benchmark.Timer.blocked_autorange` with a fixed thread count (restored
   afterwards); each sample is the mean of one block of iterations (one iteration per block for
   anything slower than about 10 ms, see `Timer._estimate_block_size`).
4. Report the median with p20/p80 (the spread), mean, min, the number of iterations, throughput
   (images/s = batch / median), and peak memory:
   - CUDA: `torch.cuda.max_memory_allocated` since just before the measurement
     (`peak_mem_kind = "cuda_max_allocated"`): tensors the caching allocator handed out, weights
     included; not the CUDA context.
   - CPU (`peak_mem_kind = "rss_added"`): `peak_mem_mb` is what the measurement ADDED to the
     process's resident set: its peak RSS during the measurement minus its RSS just before
     (`mem_before_mb`, read from /proc/self/statm after a garbage collection and glibc's
     `malloc_trim`, so pages an earlier measurement freed are not silently reused);
     `process_peak_rss_mb` is the whole process's peak beside it (interpreter, libraries, every
     model the process holds). The peak is the kernel's high-water mark VmHWM, reset to the
     current RSS just before by writing 5 to /proc/self/clear_refs (`peak_mem_method =
     "vmhwm_reset"`, exact); where that is not allowed, a thread samples the RSS every
     `RSS_SAMPLE_INTERVAL_S` (`"rss_sampled"`, a lower bound: a shorter spike can fall between
     samples). Limits: RSS counts pages, not tensors, so memory the allocator already held
     resident (a free list malloc_trim could not return, oneDNN's caches from an earlier call) is
     not "added" again, the first measurement in a process also carries one-time costs (thread
     pools, kernel caches), and memory another thread of the process touches at the same time is
     counted; compare "added" between models measured the same way.
5. Judge the row (`judge_latency`): `latency_verdict` is "noisy", with `latency_noise_reasons`,
   when the warm-up did not settle, the spread p80/p20 exceeds `NOISE_SPREAD_MAX` (1.25), the
   1-min load average before or after (`loadavg_before`, `loadavg_after`) exceeds the threads in
   use + `NOISE_LOAD_MARGIN` (1.0), or the steal time over the measurement (`steal_pct`, from
   /proc/stat on VMs) exceeds `NOISE_STEAL_MAX_PCT` (2 %); else "ok". The thresholds and why are
   given where they are defined (bench/core/noise.py, torch-free). The options the row was timed
   with travel in it (`latency_protocol`), defaults filled in.

Inference runs under `model.eval()` and `torch.inference_mode()`; a training step is forward,
cross-entropy against fixed random labels, backward and an SGD step (`lr=0`, so the weights keep
their values while every kernel still runs; BatchNorm running statistics do change). Lower
precision is autocast (`bf16`, `fp16`) over fp32 weights, as in mixed-precision training and
inference; fp16 training steps use a `GradScaler`.

An out-of-memory error (`torch.OutOfMemoryError`, or a CPU allocator failure) is retried at half
the batch when `oom_retry` is on (the batch actually used is recorded); if it still fails, or
retrying is off, `OutOfMemory` is raised, which the runner turns into an error record.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import gc
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.benchmark import Timer

from bench.core.contracts import DEFAULT_TIMING, TIMING_KEYS
from bench.core.errors import UsageError
from bench.core.noise import (MEMORY_KIND_TEXT, NOISE_LOAD_MARGIN, NOISE_SPREAD_MAX,  # noqa: F401 - re-exported
                               NOISE_STEAL_MAX_PCT, SETTLE_WINDOW, judge_latency, latency_notes, percentile,
                               spread_p80_p20)
from bench.core.records import capture_env
from bench.core.util import image_hw

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
L2_FLUSH_BYTES = 256 * 2 ** 20  # larger than any card's L2 (H100: 50 MB, B200: 126 MB); do_bench's size
# torch.compile modes that already capture CUDA graphs themselves.
_GRAPHING_COMPILE_MODES = ("reduce-overhead", "max-autotune")
_MB = 2.0 ** 20


class OutOfMemory(RuntimeError):
    """The device ran out of memory at every batch size tried.

    Attributes:
        batch_size_requested: the batch the caller asked for.
        batch_size_tried: the last (smallest) batch tried.
        device: the device, as a string.
    """

    def __init__(self, message: str, *, batch_size_requested: int, batch_size_tried: int, device: str):
        super().__init__(message)
        self.batch_size_requested = batch_size_requested
        self.batch_size_tried = batch_size_tried
        self.device = device


# --------------------------------------------------------------------------------------------
# Validation of options: every bad option is a UsageError with one clear line.
# --------------------------------------------------------------------------------------------

def resolve_device(device: str | torch.device) -> torch.device:
    """Parse `cpu`, `cuda` or `cuda:N`; raise UsageError if CUDA is asked for but absent."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from exc
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device {device!r}; use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r} asked for, but CUDA is not available on this machine")
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise UsageError(f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
        dev = torch.device("cuda", index)
    return dev


def check_dtype(device: torch.device, dtype: str) -> torch.dtype:
    """Map `fp32`/`bf16`/`fp16` to a torch dtype; raise UsageError if the device cannot run it."""
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype]
    if torch_dtype is torch.float32:
        return torch_dtype
    if device.type == "cuda" and torch_dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise UsageError(f"dtype bf16 is not supported by {torch.cuda.get_device_name(device)}")
    if device.type == "cpu" and not _cpu_autocast_works(torch_dtype):
        raise UsageError(f"dtype {dtype} autocast does not run on this CPU build of torch {torch.__version__}")
    return torch_dtype


@functools.lru_cache(maxsize=None)
def _cpu_autocast_works(torch_dtype: torch.dtype) -> bool:
    """Probe CPU autocast with a tiny convolution and linear layer (cached per dtype)."""
    probe = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 2 * 2, 2))
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch_dtype):
            probe(torch.randn(1, 3, 4, 4))
    except RuntimeError as exc:
        log.debug("CPU autocast probe for %s failed: %s", torch_dtype, exc)
        return False
    return True


def check_options(*, device: torch.device, batch_size: int, compile_mode: str | None,
                  cuda_graphs: bool, train_step: bool, threads: int | None, flush_l2: bool = False) -> None:
    """Reject option combinations that cannot be measured, with one clear line each."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be a positive integer, got {threads!r}")
    if compile_mode is not None and compile_mode not in COMPILE_MODES:
        raise UsageError(f"unknown torch.compile mode {compile_mode!r}; choose from {', '.join(COMPILE_MODES)}")
    if cuda_graphs:
        if device.type != "cuda":
            raise UsageError("CUDA graphs need a CUDA device")
        if train_step:
            raise UsageError("CUDA graphs are measured for inference only; drop --cuda-graphs or --train-step")
        if compile_mode in _GRAPHING_COMPILE_MODES:
            raise UsageError(f"torch.compile mode {compile_mode!r} already uses CUDA graphs; drop --cuda-graphs")
    if flush_l2 and device.type != "cuda":
        raise UsageError("flush_l2 flushes a GPU's L2 cache between timed iterations; it needs a CUDA device")


# --------------------------------------------------------------------------------------------
# Small context managers that restore global state.
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def fixed_threads(threads: int):
    """Set torch's intra-op thread count for the block, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _cudnn_benchmark(enabled: bool | None):
    """Set `torch.backends.cudnn.benchmark` for the block (None: leave it), then restore it."""
    previous = torch.backends.cudnn.benchmark
    if enabled is not None:
        torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


@contextlib.contextmanager
def _training_flag(model: nn.Module, train: bool):
    """Put the model in train or eval mode for the block, then restore its previous mode."""
    previous = model.training
    model.train(train)
    try:
        yield
    finally:
        model.train(previous)


# --------------------------------------------------------------------------------------------
# Memory.
# --------------------------------------------------------------------------------------------

RSS_SAMPLE_INTERVAL_S = 0.002  # fallback sampler's period: shorter peaks than this can be missed


def _proc_status_mb(field: str) -> float | None:
    """A `kB` field of /proc/self/status (VmHWM, VmRSS) in MiB, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def _current_rss_mb() -> float | None:
    """The process's resident set size now, in MiB, from /proc/self/statm (None off Linux)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / _MB
    except (OSError, ValueError, IndexError):
        return None


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux clear_refs); False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc `malloc_trim`), where the C library has it.

    Without it, pages an earlier measurement freed stay resident in malloc's free lists, this
    measurement reuses them, and its "added" RSS comes out too small.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


class _RssSampler:
    """A thread that polls the current RSS every `RSS_SAMPLE_INTERVAL_S` and keeps the largest.

    The fallback where VmHWM cannot be reset: a lower bound of the true peak (a spike shorter
    than the period can fall between two samples), and the polling thread takes the GIL briefly.
    """

    def __init__(self) -> None:
        self.peak_mb = _current_rss_mb() or 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vtbench-rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_INTERVAL_S):
            self.peak_mb = max(self.peak_mb, _current_rss_mb() or 0.0)

    def start(self) -> "_RssSampler":
        self._thread.start()
        return self

    def stop(self) -> float:
        """Stop polling; the peak seen, in MiB."""
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _current_rss_mb() or 0.0)
        return self.peak_mb


class _MemoryProbe:
    """Peak memory of one measurement: a context manager around it (see the module docstring).

    CUDA: the caching allocator's peak since the start (`cuda_max_allocated`). CPU: the RSS
    before, the process's peak RSS during (VmHWM after a reset, or a sampling thread), and the
    difference, what the measurement added.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "rss_added"
        self.method: str | None = None
        self.before_mb: float | None = None
        self._sampler: _RssSampler | None = None
        self._process_peak_mb: float | None = None

    def __enter__(self) -> "_MemoryProbe":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before_mb = torch.cuda.memory_allocated(self.device) / _MB
            return self
        gc.collect()
        _trim_heap()
        self.before_mb = _current_rss_mb()
        if _reset_peak_rss() and _proc_status_mb("VmHWM") is not None:
            self.method = "vmhwm_reset"
        else:
            self.method = "rss_sampled"
            self._sampler = _RssSampler().start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.device.type == "cuda":
            return
        if self._sampler is not None:
            self._process_peak_mb = self._sampler.stop()
        else:
            self._process_peak_mb = _proc_status_mb("VmHWM")

    def metrics(self) -> dict[str, Any]:
        """`peak_mem_mb` (and, on CPU, `process_peak_rss_mb`, `peak_mem_method`) after the block."""
        if self.device.type == "cuda":
            return {"peak_mem_mb": torch.cuda.max_memory_allocated(self.device) / _MB,
                    "peak_mem_kind": self.kind, "mem_before_mb": self.before_mb}
        peak, before = self._process_peak_mb, self.before_mb
        added = max(0.0, peak - before) if peak is not None and before is not None else None
        return {"peak_mem_mb": added, "peak_mem_kind": self.kind, "peak_mem_method": self.method,
                "process_peak_rss_mb": peak, "mem_before_mb": before}


def _free_memory(device: torch.device) -> None:
    """Collect garbage and return cached blocks, so a retry starts from a clean allocator."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def is_oom(exc: BaseException) -> bool:
    """True for out-of-memory errors on either device (CUDA OOM, CPU allocator failure)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


# --------------------------------------------------------------------------------------------
# The machine around a measurement (its verdict, `judge_latency`: bench.core.noise).
# --------------------------------------------------------------------------------------------

def _loadavg_1min() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


def _cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) clock ticks of all CPUs from /proc/stat's `cpu` line; None without a steal field.

    total sums user, nice, system, idle, iowait, irq, softirq and steal; guest time is already
    counted in user and nice, so it is not added again.
    """
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        if fields[0] != "cpu" or len(fields) < 9:
            return None
        ticks = [int(v) for v in fields[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    return ticks[7], sum(ticks)


class _MachineProbe:
    """Load average before/after and steal time over a measurement (a context manager)."""

    def __enter__(self) -> "_MachineProbe":
        self.load_before, self.load_after = _loadavg_1min(), None
        self._ticks, self.steal_pct = _cpu_ticks(), None
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.load_after = _loadavg_1min()
        end = _cpu_ticks()
        if self._ticks is not None and end is not None and end[1] > self._ticks[1]:
            self.steal_pct = 100.0 * (end[0] - self._ticks[0]) / (end[1] - self._ticks[1])

    def metrics(self) -> dict[str, Any]:
        """`loadavg_before`, `loadavg_after`, `steal_pct` (None where the platform lacks them)."""
        return {"loadavg_before": self.load_before, "loadavg_after": self.load_after, "steal_pct": self.steal_pct}


# --------------------------------------------------------------------------------------------
# The step to time.
# --------------------------------------------------------------------------------------------

def _autocast(device: torch.device, torch_dtype: torch.dtype, *, cache: bool = True):
    """Autocast context for bf16/fp16, a no-op for fp32 (cache off under CUDA graph capture)."""
    if torch_dtype is torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch_dtype, cache_enabled=cache)


def _first_tensor(output: Any) -> torch.Tensor:
    """The tensor a loss is taken on: the output itself, or the first tensor in a tuple/dict."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"model output of type {type(output).__name__} holds no tensor to take a loss on")


def _make_loss() -> Callable[[Any], torch.Tensor]:
    """Cross-entropy against random labels fixed at the first call (per output shape).

    (B, C) logits and (B, C, H, W) segmentation logits get class labels; any other output gets
    a mean, so that a user's model with an unusual output still runs a backward pass.
    """
    targets: dict[tuple, torch.Tensor] = {}

    def loss_fn(output: Any) -> torch.Tensor:
        logits = _first_tensor(output)
        if logits.dim() not in (2, 4) or not logits.is_floating_point():
            return logits.float().mean()
        shape = tuple(logits.shape)
        if shape not in targets:
            label_shape = (shape[0],) + shape[2:]
            targets[shape] = torch.randint(0, shape[1], label_shape, device=logits.device)
        return nn.functional.cross_entropy(logits.float(), targets[shape])

    return loss_fn


def _inference_step(model: nn.Module, x: torch.Tensor, device: torch.device,
                    torch_dtype: torch.dtype, *, autocast_cache: bool = True) -> Callable[[], Any]:
    """One forward pass under inference_mode (and autocast)."""

    def step():
        with torch.inference_mode(), _autocast(device, torch_dtype, cache=autocast_cache):
            return model(x)

    return step


def _train_step(model: nn.Module, x: torch.Tensor, device: torch.device,
                torch_dtype: torch.dtype) -> Callable[[], Any]:
    """One training step: forward, cross-entropy, backward, SGD step (lr=0; see module doc)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UsageError("a training step needs a model with trainable parameters")
    optimizer = torch.optim.SGD(params, lr=0.0, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=torch_dtype is torch.float16 and device.type == "cuda")
    loss_fn = _make_loss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, torch_dtype):
            loss = loss_fn(model(x))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss

    return step


def _capture_cuda_graph(step: Callable[[], Any], device: torch.device, warmup: int = 3) -> Callable[[], None]:
    """Capture `step` into a CUDA graph and return its replay.

    As the CUDA-graphs notes of PyTorch require: a few eager iterations on a side stream first
    (so lazy initialisation and cuDNN autotuning happen outside the capture), then the capture
    (on the graph's own stream), then replays read the same static input tensor.
    """
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step._static_output = step()  # type: ignore[attr-defined]  # keep outputs alive
    return graph.replay


# --------------------------------------------------------------------------------------------
# Timing loops.
# --------------------------------------------------------------------------------------------

def l2_flusher(device: torch.device, nbytes: int = L2_FLUSH_BYTES) -> Callable[[], None]:
    """A callable that zeroes an `nbytes` buffer on the device, evicting what the L2 held."""
    buffer = torch.empty(nbytes // 4, dtype=torch.int32, device=device)
    return buffer.zero_


def _cuda_timer(step: Callable[[], Any], device: torch.device,
                flush: Callable[[], Any] | None = None) -> Callable[[], float]:
    """Time one iteration with CUDA events, synchronising after it; returns seconds. `flush`, if
    given, runs before the start event: queued ahead of the iteration, never inside its time."""

    def run_once() -> float:
        if flush is not None:
            flush()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0

    return run_once


def _wall_timer(step: Callable[[], Any]) -> Callable[[], float]:
    """Time one CPU iteration with perf_counter; returns seconds."""

    def run_once() -> float:
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    return run_once


def _settled(times: list[float], window: int, tol: float) -> bool:
    """True when the median of the last `window` times is within `tol` of the window before."""
    if len(times) < 2 * window:
        return False
    recent = sorted(times[-window:])[window // 2]
    before = sorted(times[-2 * window:-window])[window // 2]
    return abs(recent - before) <= tol * before


@dataclasses.dataclass(frozen=True)
class WarmUp:
    """What a warm-up did: its iteration times, whether they settled, why it stopped, how long it took.

    `stop` is "settled", "max_s" (unsettled after `warmup_max_s` and `warmup_settle_iters`),
    "max_iters" (`warmup_max_iters`) or "cap_s" (`warmup_cap_s`, whatever the iterations).
    """

    times: list[float]
    settled: bool
    stop: str
    seconds: float


def warm_up(run_once: Callable[[], float], *, min_iters: int, max_iters: int, max_s: float, tol: float,
            settle_iters: int = 2 * SETTLE_WINDOW + 2, cap_s: float = math.inf, window: int = SETTLE_WINDOW,
            clock: Callable[[], float] = time.perf_counter) -> WarmUp:
    """Run until the timings settle, at least `min_iters` times.

    Seconds alone never end a warm-up before settling had its chances: `max_s` stops an unsettled
    warm-up only once `settle_iters` iterations ran, so a forward of a second gets the 6 iterations
    two windows of 3 need as surely as one of a millisecond. `max_iters` and `cap_s` stop it
    regardless (a forward so slow that the cap cuts it before the 6th iteration is recorded as such).
    """
    times: list[float] = []
    start = clock()
    while True:
        times.append(run_once())
        elapsed = clock() - start
        if len(times) >= min_iters and _settled(times, window, tol):
            return WarmUp(times, True, "settled", elapsed)
        if len(times) >= max(max_iters, 1):
            return WarmUp(times, False, "max_iters", elapsed)
        if elapsed >= cap_s:
            return WarmUp(times, False, "cap_s", elapsed)
        if len(times) >= max(min_iters, settle_iters) and elapsed >= max_s:
            return WarmUp(times, False, "max_s", elapsed)


def _collect_cuda(run_once: Callable[[], float], *, min_iters: int, max_iters: int,
                  min_time_s: float) -> list[float]:
    """Per-iteration CUDA-event times until both `min_iters` and `min_time_s` are reached."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - start < min_time_s):
        times.append(run_once())
    return times


def _collect_cpu(step: Callable[[], Any], *, threads: int, estimate_s: float, min_iters: int,
                 min_time_s: float, max_time_s: float) -> tuple[list[float], int]:
    """`Timer.blocked_autorange` samples (seconds per iteration) and the iterations per sample.

    `blocked_autorange` runs for `min_time_s`, or for the time `min_iters` iterations take by the
    warm-up's estimate, whichever is longer, up to `max_time_s`. It picks a block size that makes
    its timer overhead negligible (fast steps are timed in blocks of 10 or 100), so it may return
    fewer samples than `min_iters`; more blocks of the same size are then added with
    `Timer.timeit` until `min_iters` samples exist, whatever the seconds: `max_time_s` caps the
    time asked for, never the samples a spread needs.
    """
    timer = Timer(stmt="step()", globals={"step": step}, num_threads=threads)
    measurement = timer.blocked_autorange(min_run_time=min(max(min_time_s, min_iters * estimate_s), max_time_s))
    samples, per_sample = list(measurement.times), int(measurement.number_per_run)
    while len(samples) < min_iters:
        samples.extend(timer.timeit(per_sample).times)
    return samples, per_sample


def summarize(times_s: Sequence[float], batch_size: int, iters_per_sample: int = 1) -> dict[str, Any]:
    """Median, p20/p80, mean and min in ms, iteration count and throughput of per-iteration times."""
    ordered = sorted(times_s)
    if not ordered:
        raise ValueError("no timings to summarize")

    def pct(q: float) -> float:
        return 1000.0 * percentile(ordered, q)

    p50 = pct(0.5)
    return {
        "latency_ms_p50": p50,
        "latency_ms_p20": pct(0.2),
        "latency_ms_p80": pct(0.8),
        "latency_ms_mean": 1000.0 * sum(ordered) / len(ordered),
        "latency_ms_min": 1000.0 * ordered[0],
        "latency_iters": len(ordered) * iters_per_sample,
        "latency_samples": len(ordered),
        "throughput_img_s": batch_size / (p50 / 1000.0) if p50 > 0 else float("inf"),
    }


# --------------------------------------------------------------------------------------------
# The measurement.
# --------------------------------------------------------------------------------------------

def _prepare_model(model: nn.Module, device: torch.device, channels_last: bool,
                   compile_mode: str | None) -> nn.Module:
    """Move to the device (in place), set the memory format, and compile if asked."""
    model.to(device=device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if compile_mode is None:
        return model
    return torch.compile(model, mode=None if compile_mode == "default" else compile_mode)


def _make_input(batch_size: int, hw: tuple[int, int], in_channels: int, device: torch.device,
                channels_last: bool) -> torch.Tensor:
    """A random fp32 image batch on the device (autocast casts it where it should)."""
    x = torch.randn(batch_size, in_channels, *hw, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _measure_once(runnable: nn.Module, *, batch_size: int, hw: tuple[int, int], in_channels: int,
                  device: torch.device, torch_dtype: torch.dtype, channels_last: bool, cuda_graphs: bool,
                  train_step: bool, threads: int, opts: dict[str, Any], flush_l2: bool = False) -> dict[str, Any]:
    """One measurement at one batch size (no OOM handling; see `measure_latency`).

    Memory, load average and steal are observed around everything the measurement does: the
    input, the first call, the warm-up and the timed samples.
    """
    with _MemoryProbe(device) as memory, _MachineProbe() as machine:
        stats = _time_step(runnable, batch_size=batch_size, hw=hw, in_channels=in_channels, device=device,
                           torch_dtype=torch_dtype, channels_last=channels_last, cuda_graphs=cuda_graphs,
                           train_step=train_step, threads=threads, opts=opts, flush_l2=flush_l2)
    stats.update(memory.metrics())
    stats.update(machine.metrics())
    return stats


def _time_step(runnable: nn.Module, *, batch_size: int, hw: tuple[int, int], in_channels: int,
               device: torch.device, torch_dtype: torch.dtype, channels_last: bool, cuda_graphs: bool,
               train_step: bool, threads: int, opts: dict[str, Any], flush_l2: bool = False) -> dict[str, Any]:
    """Build the step, time its first call, warm it up, collect the samples, summarise them."""
    x = _make_input(batch_size, hw, in_channels, device, channels_last)
    if train_step:
        step = _train_step(runnable, x, device, torch_dtype)
    else:
        step = _inference_step(runnable, x, device, torch_dtype, autocast_cache=not cuda_graphs)
    cuda = device.type == "cuda"
    first_s = (_cuda_timer(step, device) if cuda else _wall_timer(step))()
    if cuda_graphs:
        step = _capture_cuda_graph(step, device)
    # The flush buffer is allocated after the first call, so `first_iter_ms` is the same with or without it.
    flush = l2_flusher(device) if flush_l2 else None
    run_once = _cuda_timer(step, device, flush) if cuda else _wall_timer(step)
    warmed = warm_up(run_once, min_iters=opts["warmup_min_iters"], max_iters=opts["warmup_max_iters"],
                     max_s=opts["warmup_max_s"], tol=opts["settle_tol"], settle_iters=opts["warmup_settle_iters"],
                     cap_s=opts["warmup_cap_s"])
    warm = warmed.times
    if not warmed.settled:
        log.info("warm-up did not settle within %d iterations (%.1f s, stopped by %s); timing anyway",
                 len(warm), warmed.seconds, warmed.stop)
    timed_start = time.perf_counter()
    if cuda:
        samples = _collect_cuda(run_once, min_iters=opts["min_iters"], max_iters=opts["max_iters"],
                                min_time_s=opts["min_time_s"])
        per_sample, timer_name = 1, "cuda_events"
    else:
        estimate = sorted(warm[-3:])[len(warm[-3:]) // 2]
        samples, per_sample = _collect_cpu(step, threads=threads, estimate_s=estimate, min_iters=opts["min_iters"],
                                           min_time_s=opts["min_time_s"], max_time_s=opts["max_time_s"])
        timer_name = "torch.utils.benchmark.Timer.blocked_autorange"
    stats = summarize(samples, batch_size, per_sample)
    stats.update(first_iter_ms=1000.0 * first_s, warmup_iters=len(warm), warmup_settled=warmed.settled,
                 warmup_stop=warmed.stop, warmup_s=warmed.seconds, timed_s=time.perf_counter() - timed_start,
                 iters_per_sample=per_sample, timer=timer_name)
    return stats


def measure_latency(model: nn.Module, *, input_size: int | Sequence[int], batch_size: int,
                    device: str | torch.device = "cpu", dtype: str = "fp32", channels_last: bool = False,
                    compile_mode: str | None = None, cuda_graphs: bool = False, train_step: bool = False,
                    threads: int | None = None, oom_retry: bool = True, min_batch_size: int = 1,
                    cudnn_benchmark: bool | None = True, in_channels: int = 3, flush_l2: bool = False,
                    **timing: Any) -> dict[str, Any]:
    """Median/p20/p80 latency, throughput and peak memory of `model` at `batch_size`.

    Args:
        model: the network; moved to `device` in place (and left there).
        input_size: square side or (H, W) of the random input images.
        batch_size: images per iteration; halved on out-of-memory while `oom_retry` is on.
        device: `cpu`, `cuda` or `cuda:N`.
        dtype: `fp32`, or `bf16`/`fp16` autocast.
        channels_last: NHWC memory format for the model and the input.
        compile_mode: a `torch.compile` mode (`default`, `reduce-overhead`, ...), or None for eager.
        cuda_graphs: capture the forward in a CUDA graph after the warm-up and time its replay.
        train_step: time forward + backward + SGD step instead of inference.
        threads: torch intra-op threads for the measurement (None: the current count).
        oom_retry: on out-of-memory, retry at half the batch down to `min_batch_size`.
        min_batch_size: the smallest batch a retry may use.
        cudnn_benchmark: `torch.backends.cudnn.benchmark` during the measurement (None: leave it).
        in_channels: channels of the input images.
        flush_l2: (CUDA) zero a 256 MB buffer before every iteration, outside the timed events, so
            that each starts from a cold L2 (`triton.testing.do_bench`); refused on a CPU.
        **timing: overrides of `DEFAULT_TIMING` (warm-up and iteration limits; bench.core.contracts
            documents each).

    Returns:
        Flat metrics: `latency_ms_p50/p20/p80/mean/min`, `latency_iters`, `throughput_img_s`,
        `peak_mem_mb` (CPU: RSS added; `process_peak_rss_mb` beside it), `batch_size_used`,
        `mode`, the verdict (`latency_verdict`, `latency_noise_reasons`,
        `latency_spread_p80_p20`, `loadavg_before`, `loadavg_after`, `steal_pct`), the warm-up
        (`warmup_iters`, `warmup_settled`, `warmup_stop`, `warmup_s`), `timed_s`, the protocol
        (`latency_protocol`) and what was measured (device, dtype, ...).

    Raises:
        UsageError: an option the device cannot run (see `check_options`).
        OutOfMemory: out of memory at every batch size tried.
    """
    unknown = sorted(set(timing) - set(DEFAULT_TIMING))
    if unknown:
        raise UsageError(f"unknown timing option(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_TIMING)}")
    opts = {**DEFAULT_TIMING, **timing}
    dev = resolve_device(device)
    hw = image_hw(input_size)
    check_options(device=dev, batch_size=batch_size, compile_mode=compile_mode, cuda_graphs=cuda_graphs,
                  train_step=train_step, threads=threads, flush_l2=flush_l2)
    torch_dtype = check_dtype(dev, dtype)
    n_threads = threads or torch.get_num_threads()
    runnable = _prepare_model(model, dev, channels_last, compile_mode)
    # The CUDA device context makes events, streams and graphs use `dev`, not the default device.
    device_ctx = torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()
    with device_ctx, fixed_threads(n_threads), _cudnn_benchmark(cudnn_benchmark if dev.type == "cuda" else None), \
            _training_flag(model, train_step):
        stats, used, retries = _measure_with_backoff(
            runnable, batch_size=batch_size, min_batch_size=min_batch_size, oom_retry=oom_retry,
            kwargs=dict(hw=hw, in_channels=in_channels, device=dev, torch_dtype=torch_dtype,
                        channels_last=channels_last, cuda_graphs=cuda_graphs, train_step=train_step,
                        threads=n_threads, opts=opts, flush_l2=flush_l2))
        cudnn_flag = bool(torch.backends.cudnn.benchmark)
    stats.update(batch_size_used=used, batch_size_requested=batch_size, oom_retries=retries,
                 mode="train_step" if train_step else "inference", device=str(dev), dtype=dtype,
                 input_size=list(hw), channels_last=channels_last, compile=compile_mode,
                 cuda_graphs=cuda_graphs, threads=n_threads, cudnn_benchmark=cudnn_flag, flush_l2=flush_l2)
    stats["latency_protocol"] = {**{k: opts[k] for k in TIMING_KEYS}, "flush_l2": flush_l2}
    stats.update(judge_latency(stats))
    if stats["latency_verdict"] != "ok":
        log.info("latency at batch %d is noisy: %s", used, "; ".join(stats["latency_noise_reasons"]))
    return stats


def _measure_with_backoff(runnable: nn.Module, *, batch_size: int, min_batch_size: int, oom_retry: bool,
                          kwargs: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    """Measure at `batch_size`, halving it on out-of-memory; returns (stats, batch used, retries)."""
    device = kwargs["device"]
    current, retries = batch_size, 0
    while True:
        try:
            return _measure_once(runnable, batch_size=current, **kwargs), current, retries
        except Exception as exc:  # noqa: BLE001 - only OOM is handled; everything else re-raises
            if not is_oom(exc):
                raise
            smaller = max(min_batch_size, current // 2)
            if not oom_retry or smaller >= current:
                raise OutOfMemory(
                    f"out of memory on {device} at batch {current} (requested {batch_size}): "
                    f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
                    batch_size_requested=batch_size, batch_size_tried=current, device=str(device)) from exc
            log.warning("out of memory on %s at batch %d; retrying at batch %d", device, current, smaller)
        # Outside the except block, so the traceback (and the tensors its frames hold) is gone.
        _free_memory(device)
        current, retries = smaller, retries + 1


def latency_env(*, device: str | torch.device = "cpu", dtype: str = "fp32",
                batch_size: int | Sequence[int] | None = None,
                input_size: int | Sequence[int] | None = None, threads: int | None = None,
                cudnn_benchmark: bool | None = None) -> dict[str, Any]:
    """The environment of a latency measurement: `capture_env` plus dtype, batch, size, threads, cuDNN."""
    env = capture_env(str(device))
    env.update(
        dtype=dtype,
        batch_size=batch_size,
        input_size=list(image_hw(input_size)) if input_size is not None else None,
        threads=threads or torch.get_num_threads(),
        interop_threads=torch.get_num_interop_threads(),
        cudnn_benchmark=bool(torch.backends.cudnn.benchmark if cudnn_benchmark is None else cudnn_benchmark),
    )
    return env
