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

import argparse
import csv
import json
import logging
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from bench.measure.complexity import _executed_handles, mha_fastpath_disabled
from bench.measure.latency import DTYPES, _cuda_timer, _wall_timer, fixed_threads
from bench.core.records import iter_records, latest_remeasurements, with_remeasurement, write_json_atomic
from bench.core.tables import markdown_table
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


def stage_key(name: str, batch: int) -> str:
    """The key of a speed study's per-stage times (speed.json's `stages_ms`): 'model, bN'."""
    return f"{name}, b{batch}"


def stage_key_parts(key: str) -> tuple[str, int]:
    """The inverse of `stage_key` (the key is ours, not a model name being parsed)."""
    name, batch = key.rsplit(", b", 1)
    return name, int(batch)


def measured_models(stages_ms: dict[str, dict[str, float]]) -> dict[str, tuple[int, tuple[int, ...]]]:
    """The models and batch sizes a speed study measured (its 'model, bN' keys), at STUDY_MODELS' sides."""
    batches: dict[str, set[int]] = {}
    for key in stages_ms:
        name, batch = stage_key_parts(key)
        batches.setdefault(name, set()).add(batch)
    return {name: (STUDY_MODELS[name][0], tuple(sorted(found))) for name, found in batches.items() if name in STUDY_MODELS}


def bound_rows(costs: dict, devices: dict[str, tuple[float, float, str]],
               measured: dict[str, dict[str, float]] | None = None,
               measured_device: str | None = None) -> list[dict[str, Any]]:
    """One row per model, batch, stage and device: the stage's counts, its three bounds, and, for
    `measured_device`, the measured time (`measured`: speed.json's stages_ms, 'model, bN' keys)."""
    rows = []
    for (name, batch), (ops, fused) in costs.items():
        for device, (tflops, tb_s, _source) in devices.items():
            for stage, b in stage_bounds(ops, fused, tflops, tb_s).items():
                row = {"device": device, "model": name, "batch": batch, "stage": stage, "gflop": b["flops"] / 1e9,
                       "mb": b["bytes"] / 1e6, "fused_mb": b["fused_bytes"] / 1e6, "kernels": b["kernels"],
                       "intensity": b["intensity"], "fused_ms": b["fused_ms"], "unfused_ms": b["unfused_ms"],
                       "launch_ms": b["launch_ms"],
                       "bound": "compute" if b["flops"] / (tflops * 1e12) >= b["fused_bytes"] / (tb_s * 1e12)
                       else "memory"}
                key = stage_key(name, batch)
                if device == measured_device and measured and stage in measured.get(key, {}):
                    row["measured_ms"] = measured[key][stage]
                    row["measured_over_unfused"] = row["measured_ms"] / row["unfused_ms"] if row["unfused_ms"] else None
                    row["achieved_tflops"] = b["flops"] / (row["measured_ms"] / 1e3) / 1e12
                rows.append(row)
    return rows


def violations(rows: list[dict[str, Any]], tolerance: float = 0.9) -> list[str]:
    """Stages measured faster than `tolerance` x their fused bound: a bound that is no bound (a count
    too high, a timer too short, or a datasheet figure too low)."""
    return [f"{r['model']} b{r['batch']} {r['stage']}: measured {r['measured_ms']:.4f} ms < bound {r['fused_ms']:.4f} ms"
            for r in rows if r.get("measured_ms") is not None and r["measured_ms"] < tolerance * r["fused_ms"]]


# --------------------------------------------------------------------------- outputs ------------

KEY_STAGES = ("stage5", "vt", "fpn")
"""The stages VT replaces or adds: ResNet's stage 5 against the VT stage, and the FPN module."""


def markdown(rows: list[dict[str, Any]], devices: dict[str, tuple[float, float, str]], measured_device: str | None,
             measured_source: str | None, dtype: str = "bf16") -> str:
    """The committed report: devices, then per model and batch the replaced stages and the totals."""
    names = list(devices)
    lines = ["# Roofline bounds per stage: where a MAC saved can be a millisecond saved", "",
             "**A model, not a measurement** (bench.measure.roofline): each operator of a seed-0 forward (views "
             "excluded) with its FLOPs (FlopCounterMode, the executed count) and the bytes of its tensor "
             f"inputs and outputs at {FLOAT_BYTES[dtype]} bytes per float ({dtype}). Per stage, three lower bounds on its time: "
             "`fused` = max(FLOPs / peak, (weights + input + output) / bandwidth), one perfect kernel; "
             "`eager` = sum over operators of max(FLOPs / peak, bytes / bandwidth), each operator one kernel "
             f"at its roofline; `launch` = kernels x {LAUNCH_US:g} µs, the floor of eager launches. "
             "Times below are in µs.", ""]
    lines.append(markdown_table(pd.DataFrame([
        {"device": name, f"{dtype} TFLOP/s": f"{tflops:.4g}", "TB/s": f"{tb_s:.4g}", "ridge FLOP/B": f"{tflops / tb_s:.0f}",
         "source": source} for name, (tflops, tb_s, source) in devices.items()])).rstrip("\n"))
    if measured_device:
        lines += ["", f"Measured beside the bounds: `{measured_device}` rows carry the eager per-stage times of "
                  f"`{measured_source}` (stage hooks: CUDA events on a GPU, the host clock on a CPU), and the "
                  f"'measured / eager bound' column."]
    by_key: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_key.setdefault((r["model"], r["batch"], r["stage"]), {})[r["device"]] = r
    table = []
    for (model, batch, stage), per_device in by_key.items():
        if stage not in KEY_STAGES:
            continue
        first = next(iter(per_device.values()))
        measured = per_device.get(measured_device, {}) if measured_device else {}
        table.append({
            "model": model, "batch": str(batch), "stage": stage, "GFLOP": f"{first['gflop']:.3g}",
            "MB eager (fused)": f"{first['mb']:.3g} ({first['fused_mb']:.3g})", "kernels": str(first["kernels"]),
            "FLOP/B": f"{first['intensity']:.3g}",
            **{f"{d} eager (fused)": f"{1e3 * per_device[d]['unfused_ms']:.3g} ({1e3 * per_device[d]['fused_ms']:.3g})"
               for d in names if d in per_device},
            "launch": f"{1e3 * first['launch_ms']:.3g}",
            "measured": f"{1e3 * measured['measured_ms']:.3g}" if measured.get("measured_ms") is not None else "-",
            "measured / eager bound": f"{measured['measured_over_unfused']:.1f}x"
            if measured.get("measured_ms") is not None else "-"})
    lines += ["", markdown_table(pd.DataFrame(table)).rstrip("\n")]
    return "\n".join(lines) + "\n"


def roofline_plot(rows: list[dict[str, Any]], tflops: float, tb_s: float, device: str, path,
                  dtype: str = "bf16") -> None:
    """Log-log roofline of `device`'s measured stages: achieved TFLOP/s against FLOP per byte (eager
    bytes), with the compute roof and the bandwidth slope; the replaced stages stand out."""
    import matplotlib  # here: 0.3 s to import, and the speed study imports this module for measure_peak

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in rows if r["device"] == device and r.get("achieved_tflops") and r["gflop"] > 0]
    with_fpn = {r["model"] for r in rows if r["stage"] == "fpn"}

    def replaced(r: dict[str, Any]) -> bool:  # the FPN module, or stage 5 / the VT stage of a classifier
        return r["stage"] == "fpn" or (r["stage"] in KEY_STAGES and r["model"] not in with_fpn)

    fig, ax = plt.subplots(figsize=(8, 5.5))
    ridge = tflops / tb_s
    ax.plot([0.01, ridge, 1e4], [0.01 * tb_s, tflops, tflops], color="black", lw=1.5,
            label=f"roof: {tflops:.3g} TFLOP/s, {tb_s:.3g} TB/s")
    styles = {True: dict(color="tab:red", marker="o"), False: dict(color="tab:blue", marker="s")}
    for key_stage in (False, True):
        group = [r for r in points if replaced(r) == key_stage]
        for r in group:
            ax.scatter(r["intensity"], r["achieved_tflops"], s=12 + 3 * r["batch"] ** 0.5, alpha=0.8,
                       **styles[key_stage])
            if key_stage:
                ax.annotate(f"{r['model']} {r['stage']} b{r['batch']}", (r["intensity"], r["achieved_tflops"]),
                            fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.scatter([], [], label="stage 5 / VT stage / FPN module" if key_stage else "other stages",
                   **styles[key_stage])
    ax.set(xscale="log", yscale="log", xlabel=f"FLOP per byte (eager, {dtype})", ylabel="achieved TFLOP/s",
           title=f"{device}: stages against the roofline\n(eager, {dtype}; marker size: batch)")
    ax.set_xlim(0.3, 3e3)
    lowest = min((r["achieved_tflops"] for r in points), default=tflops / 20)
    ax.set_ylim(min(0.05, lowest / 2), tflops * 2)
    ax.grid(True, which="both", lw=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def study_of_run(run_dir: str | Path) -> dict[str, Any] | None:
    """A run folder re-measured by `vtbench interleave --stages --peak`, in a speed.json's shape: `peak`
    (the ceilings of its first cell that has them) and `stages_ms` ('model, bN' -> stage -> ms, from
    each cell's newest re-measurement; eager cells first, as the stage times are eager). None
    when no re-measurement holds both."""
    run_dir = Path(run_dir)
    latest, _ = latest_remeasurements(run_dir / "records")
    peak, stages = None, {}
    records = [r for _, r in iter_records(run_dir / "records") if isinstance(r, dict) and r["cell_id"] in latest]
    records.sort(key=lambda r: bool((r["config"].get("latency") or {}).get("compile")
                                    or (r["config"].get("latency") or {}).get("cuda_graphs")))
    for record in records:
        seen = with_remeasurement(record, latest[record["cell_id"]][1])
        metrics, latency = seen["metrics"], seen["config"].get("latency") or {}
        times = {k[len("stage_ms_"):]: v for k, v in metrics.items() if k.startswith("stage_ms_")}
        if not times or metrics.get("peak_gemm_tflops") is None:
            continue
        stages.setdefault(stage_key(seen["config"]["model"], int(latency.get("batch_size", 1))), times)
        peak = peak or {"device": str(latency.get("device", "cpu")).split(":")[0],
                        "device_name": (seen.get("env") or {}).get("device_name") or "unknown device",
                        "dtype": metrics.get("peak_dtype") or latency.get("dtype", "fp32"),
                        "gemm_tflops": metrics["peak_gemm_tflops"], "copy_gb_s": metrics["peak_copy_gb_s"]}
    return {"peak": peak, "stages_ms": stages} if peak else None


def _read_study(path: Path) -> dict[str, Any] | None:
    """A speed study: a legacy speed.json, or a run folder (`study_of_run`)."""
    return study_of_run(path) if path.is_dir() else json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.measure.roofline [--out DIR] [--measured SPEED_JSON ...]`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m bench.measure.roofline", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="results/roofline", help="output folder (default results/roofline)")
    p.add_argument("--measured", nargs="*", default=["results/speed_gpu/eager_cuda_graphs/speed.json",
                                                      "results/speed_gpu/fpn_473/speed.json"],
                   help="speed studies of one device (a legacy speed.json, or a run folder re-measured by "
                        "`vtbench interleave --stages --peak`, e.g. `vtbench speed`'s --out) whose per-stage times are set "
                        "beside the bounds; the first one's measured ceilings are that device's roof (none: no "
                        "argument). A CPU study gives a CPU roofline: only its device, bytes at its dtype "
                        "(fp32: 4), the batch sizes it measured")
    args = p.parse_args(argv)
    devices = dict(DEVICES)
    measured_device, measured, dtype, models = None, {}, "bf16", None
    studies = [_read_study(Path(path)) for path in args.measured or [] if Path(path).exists()]
    studies = [study for study in studies if study]
    if studies:
        peak = studies[0]["peak"]
        measured_device = f"{peak['device_name']}, measured ceilings"
        for study in studies:
            measured.update(study["stages_ms"])
        if peak["device"] == "cpu":  # the datasheets are bf16 GPU peaks: nothing to set beside a CPU
            devices, dtype, models = {}, peak["dtype"], measured_models(measured)
        devices[measured_device] = (peak["gemm_tflops"], peak["copy_gb_s"] / 1000,
                                    f"bench.measure.roofline.measure_peak in {args.measured[0]}")
    costs = study_costs(FLOAT_BYTES[dtype], models)
    rows = bound_rows(costs, devices, measured, measured_device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "roofline.md").write_text(markdown(rows, devices, measured_device, ", ".join(args.measured or []), dtype))
    with open(out / "roofline.csv", "w", newline="") as handle:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    write_json_atomic(out / "roofline.json", {"devices": devices, "launch_us": LAUNCH_US,
                                              "models": STUDY_MODELS, "measured": args.measured, "rows": rows})
    if measured_device:
        tflops, tb_s, _ = devices[measured_device]
        roofline_plot(rows, tflops, tb_s, measured_device, out / "roofline.png", dtype)
    bad = violations(rows)
    for line in bad:
        logging.getLogger("bench.measure.roofline").warning("BOUND VIOLATED: %s", line)
    print((out / "roofline.md").read_text())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
