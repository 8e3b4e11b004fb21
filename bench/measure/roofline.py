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

It also holds the cost model of the roofline study: every executed operator's FLOPs and bytes
(`operator_costs`) and each stage's lower bounds on a device of given peaks (`stage_bounds`,
`bound_rows`). The study's driver is bench/studies/roofline.py (`python -m bench.studies.roofline`);
its tables and figure are bench/analysis/roofline_report.py's.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from bench.measure.complexity import _executed_handles, mha_fastpath_disabled
from bench.measure.latency import DTYPES, _cuda_timer, _wall_timer, fixed_threads
from models import build_model


def _median_time(run_once: Callable[[], float], reps: int, warmups: int) -> float:
    """Median seconds of `run_once` (a bench.measure.latency timer) over `reps` runs, after `warmups`."""
    for _ in range(warmups):
        run_once()
    return statistics.median(run_once() for _ in range(reps))


def measure_peak(device: str | torch.device = "cpu", dtype: str = "fp32", *, threads: int | None = None,
                 gemm_n: int | None = None, copy_mb: int | None = None, reps: int = 10) -> dict[str, Any]:
    """GEMM FLOP/s and copy bandwidth of this device, in `dtype`, on `threads` CPU threads.

    Defaults: n = 8192 and a 2 GiB copy on CUDA; n = 2048 and a 256 MiB copy on the CPU (each
    larger than the caches of the machines this project runs on).
    """
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
        def timed(fn: Callable[[], Any]) -> float:  # the same timers as every latency measurement
            return _median_time(_cuda_timer(fn, dev) if cuda else _wall_timer(fn), reps, warmups=3 if cuda else 1)

        gemm_s = timed(lambda: torch.mm(a, b))
        copy_s = timed(lambda: dst.copy_(src))
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


# ------------------------------------------------------------------ operator costs and bounds -----
# A model, not a measurement: what each stage must at least cost on a device of given peaks.

DEVICES = {
    # name: (dense bf16 matrix TFLOP/s, memory TB/s, source). Datasheet peaks, no sparsity.
    "H100 SXM": (989.4, 3.35, "NVIDIA H100 datasheet, SXM5, dense bf16"),
    "H200 SXM": (989.4, 4.8, "NVIDIA H200 datasheet, SXM, dense bf16"),
    "A100 SXM 80GB": (312.0, 2.039, "NVIDIA A100 datasheet, SXM4 80GB, dense bf16"),
    "L4": (121.0, 0.300, "NVIDIA L4 datasheet, dense bf16 (242 with sparsity)"),
}
LAUNCH_US = 4.0
"""Order of magnitude of one eager PyTorch kernel launch on a GPU (host dispatch + launch), in µs:
the floor of a chain of small kernels when nothing (CUDA graphs, compile) removes the gaps."""
_NO_TRAFFIC = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh",
               "detach", "alias", "_unsafe_view"}


@dataclass
class OpCost:
    """One executed operator: its stage, name, FLOPs, and the bytes of its tensor inputs and outputs."""

    stage: str
    op: str
    flops: float
    bytes: float


def operator_costs(model: nn.Module, input_size: int, batch_size: int = 1,
                   float_bytes: int = 2) -> tuple[list[OpCost], dict[str, float]]:
    """Every non-view operator of one forward, attributed to its top-level stage, and each stage's
    fused minimum bytes (its weights, its input and its output, each moved once).

    The model may live on the meta device (shapes only). Float tensors are counted at `float_bytes`
    per element (2: bf16 as on the GPU studies), other tensors at their own size. FLOPs are FlopCounterMode's formulas with vtbench's extra handles
    (bench.measure.complexity): matrix products and convolutions; other operators count 0 FLOPs and their
    bytes. Views move nothing and are skipped; each remaining operator is one kernel in eager mode.
    """
    registry = FlopCounterMode(display=False, custom_mapping=_executed_handles()).flop_registry

    def size(t: torch.Tensor) -> float:
        return t.numel() * (float_bytes if t.is_floating_point() else t.element_size())

    ops: list[OpCost] = []
    current = ["(input)"]
    read: dict[str, set[int]] = {}  # per stage: ids of the base tensors its operators read

    def base(t: torch.Tensor) -> torch.Tensor:
        return t._base if t._base is not None else t

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func._overloadpacket not in registry:
                # A composite (conv2d, linear, ...) runs as the operators it is made of, as in
                # FlopCounterMode: those are the kernels, and they carry the FLOP formulas.
                with self:
                    decomposed = func.decompose(*args, **kwargs)
                if decomposed is not NotImplemented:
                    return decomposed
            out = func(*args, **kwargs)
            name = func._overloadpacket.__name__
            if func.is_view or name in _NO_TRAFFIC:
                return out
            inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            read.setdefault(current[0], set()).update(id(base(t)) for t in inputs)
            tensors = inputs + [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            flops = registry[func._overloadpacket](*args, **kwargs, out_val=out) \
                if func._overloadpacket in registry else 0
            ops.append(OpCost(current[0], name, float(flops), float(sum(size(t) for t in tensors))))
            return out

    fused: dict[str, float] = {}

    def enter(name: str):
        def hook(module, inputs):
            current[0] = name
            read[name] = set()
        return hook

    def leave(name: str):
        def hook(module, inputs, output):
            # An input the stage never reads (a map passed along beside the tokens) costs nothing.
            used = [t for t in tree_leaves(inputs) if isinstance(t, torch.Tensor) and id(base(t)) in read[name]]
            fused[name] = fused.get(name, 0.0) + sum(size(t) for t in used) \
                + sum(size(p) for p in module.parameters()) \
                + sum(size(t) for t in tree_leaves(output) if isinstance(t, torch.Tensor))
        return hook

    handles = [h for name, child in model.named_children()
               for h in (child.register_forward_pre_hook(enter(name)), child.register_forward_hook(leave(name)))]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.randn(batch_size, 3, input_size, input_size, device=device)
    try:
        with torch.inference_mode(), mha_fastpath_disabled(), Recorder():
            model.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    return ops, fused


def stage_bounds(ops: list[OpCost], fused: dict[str, float], tflops: float, tb_s: float,
                 launch_us: float = LAUNCH_US) -> dict[str, dict[str, float]]:
    """Per stage: FLOPs, bytes, kernels, and three lower bounds on its time (ms) on a device of
    `tflops` and `tb_s`:

    - `fused_ms`: max(FLOPs / peak, fused minimum bytes / bandwidth): one perfect kernel;
    - `unfused_ms`: the sum over operators of max(FLOPs / peak, bytes / bandwidth): each operator
      its own kernel, each at its roofline (what eager execution can reach at best);
    - `launch_ms`: kernels x `launch_us`: the floor of eager launches when each kernel is tiny.
    """
    out: dict[str, dict[str, float]] = {}
    for op in ops:
        row = out.setdefault(op.stage, {"flops": 0.0, "bytes": 0.0, "kernels": 0, "unfused_ms": 0.0})
        row["flops"] += op.flops
        row["bytes"] += op.bytes
        row["kernels"] += 1
        row["unfused_ms"] += 1e3 * max(op.flops / (tflops * 1e12), op.bytes / (tb_s * 1e12))
    for stage, row in out.items():
        row["fused_bytes"] = fused.get(stage, row["bytes"])
        row["fused_ms"] = 1e3 * max(row["flops"] / (tflops * 1e12), row["fused_bytes"] / (tb_s * 1e12))
        row["launch_ms"] = row["kernels"] * launch_us / 1e3
        row["intensity"] = row["flops"] / row["bytes"] if row["bytes"] else 0.0
    return out


# --------------------------------------------------------------------------- the study ----------

STUDY_MODELS = {"resnet18": (224, (1, 64, 256)), "vt_resnet18": (224, (1, 64, 256)),
                "resnet50": (224, (1, 64, 256)), "vt_resnet50": (224, (1, 64, 256)),
                "fpn_r50": (473, (1, 8)), "vt_fpn_r50": (473, (1, 8))}
"""The models of the roofline study, their input sides (the FPN pair at the paper's 473x473) and
batch sizes: those of the GPU studies in results/speed_gpu, so that measurements stand beside bounds."""

FLOAT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def study_costs(float_bytes: int = 2, models: dict[str, tuple[int, tuple[int, ...]]] | None = None,
                ) -> dict[tuple[str, int], tuple[list[OpCost], dict]]:
    """Operator costs of every study model (`models`, default STUDY_MODELS: name -> (input side,
    batch sizes)) at every batch size: a forward on the meta device (shapes only, instant; the FLOPs
    and bytes depend on shapes alone)."""
    costs = {}
    for name, (size, batches) in (models or STUDY_MODELS).items():
        model = build_model(name).eval().to("meta")
        for batch in batches:
            costs[(name, batch)] = operator_costs(model, size, batch, float_bytes)
    return costs


def bound_rows(costs: dict, devices: dict[str, tuple[float, float, str]]) -> list[dict[str, Any]]:
    """One row per model, batch, stage and device: the stage's counts and its three bounds
    (`stage_bounds`), and whether its fused bound is set by compute or by memory."""
    rows = []
    for (name, batch), (ops, fused) in costs.items():
        for device, (tflops, tb_s, _source) in devices.items():
            for stage, b in stage_bounds(ops, fused, tflops, tb_s).items():
                rows.append({"device": device, "model": name, "batch": batch, "stage": stage,
                             "gflop": b["flops"] / 1e9, "mb": b["bytes"] / 1e6, "fused_mb": b["fused_bytes"] / 1e6,
                             "kernels": b["kernels"], "intensity": b["intensity"], "fused_ms": b["fused_ms"],
                             "unfused_ms": b["unfused_ms"], "launch_ms": b["launch_ms"],
                             "bound": "compute" if b["flops"] / (tflops * 1e12) >= b["fused_bytes"] / (tb_s * 1e12)
                             else "memory"})
    return rows
