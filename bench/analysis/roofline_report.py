"""The roofline study's report: measured per-stage times beside the bounds, as markdown, CSV, JSON and a figure.

The bounds themselves come from the cost model in bench/measure/roofline.py (`bound_rows`); the driver
that counts them and calls this module is bench/studies/roofline.py. This module reads the measured
side (a legacy speed.json, or a run folder re-measured by `vtbench interleave --stages --peak`), joins
it to the bound rows, and renders; it imports no torch.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.records import iter_records, latest_remeasurements, with_remeasurement, write_json_atomic
from bench.core.tables import markdown_table
from bench.core.util import write_text_atomic

KEY_STAGES = ("stage5", "vt", "fpn")
"""The stages VT replaces or adds: ResNet's stage 5 against the VT stage, and the FPN module."""


def stage_key(name: str, batch: int) -> str:
    """The key of a speed study's per-stage times (speed.json's `stages_ms`): 'model, bN'."""
    return f"{name}, b{batch}"


def stage_key_parts(key: str) -> tuple[str, int]:
    """The inverse of `stage_key` (the key is ours, not a model name being parsed)."""
    name, batch = key.rsplit(", b", 1)
    return name, int(batch)


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


def read_study(path: Path) -> dict[str, Any] | None:
    """A speed study's ceilings and stage times: a legacy speed.json, or a run folder (`study_of_run`)."""
    return study_of_run(path) if path.is_dir() else json.loads(path.read_text())


def attach_measured(rows: list[dict[str, Any]], measured: dict[str, dict[str, float]],
                    measured_device: str | None) -> list[dict[str, Any]]:
    """The bound rows with, for `measured_device`, each stage's measured time ('model, bN' keys),
    its ratio to the eager bound and the TFLOP/s it reached."""
    out = []
    for row in rows:
        times = measured.get(stage_key(row["model"], row["batch"]), {})
        if row["device"] == measured_device and row["stage"] in times:
            ms = times[row["stage"]]
            row = {**row, "measured_ms": ms,
                   "measured_over_unfused": ms / row["unfused_ms"] if row["unfused_ms"] else None,
                   "achieved_tflops": row["gflop"] * 1e9 / (ms / 1e3) / 1e12}
        out.append(row)
    return out


def violations(rows: list[dict[str, Any]], tolerance: float = 0.9) -> list[str]:
    """Stages measured faster than `tolerance` x their fused bound: a bound that is no bound (a count
    too high, a timer too short, or a datasheet figure too low)."""
    return [f"{r['model']} b{r['batch']} {r['stage']}: measured {r['measured_ms']:.4f} ms < bound {r['fused_ms']:.4f} ms"
            for r in rows if r.get("measured_ms") is not None and r["measured_ms"] < tolerance * r["fused_ms"]]


def markdown(rows: list[dict[str, Any]], devices: dict[str, tuple[float, float, str]], measured_device: str | None,
             measured_source: str | None, *, dtype: str, float_bytes: int, launch_us: float) -> str:
    """roofline.md: devices, then per model and batch the replaced stages and the totals."""
    names = list(devices)
    lines = ["# Roofline bounds per stage: where a MAC saved can be a millisecond saved", "",
             "**A model, not a measurement** (bench.measure.roofline): each operator of a seed-0 forward (views "
             "excluded) with its FLOPs (FlopCounterMode, the executed count) and the bytes of its tensor "
             f"inputs and outputs at {float_bytes} bytes per float ({dtype}). Per stage, three lower bounds on its time: "
             "`fused` = max(FLOPs / peak, (weights + input + output) / bandwidth), one perfect kernel; "
             "`eager` = sum over operators of max(FLOPs / peak, bytes / bandwidth), each operator one kernel "
             f"at its roofline; `launch` = kernels x {launch_us:g} µs, the floor of eager launches. "
             "Times below are in µs.", ""]
    lines.append(markdown_table(pd.DataFrame([
        {"device": name, f"{dtype} TFLOP/s": f"{tflops:.4g}", "TB/s": f"{tb_s:.4g}", "ridge FLOP/B": f"{tflops / tb_s:.0f}",
         "source": source} for name, (tflops, tb_s, source) in devices.items()])).rstrip("\n"))
    if measured_device:
        lines += ["", f"Measured beside the bounds: `{measured_device}` rows carry the eager per-stage times of "
                  f"`{measured_source}` (stage hooks: CUDA events on a GPU, the host clock on a CPU), and the "
                  f"'measured / eager bound' column."]
    lines += ["", markdown_table(pd.DataFrame(key_stage_rows(rows, names, measured_device))).rstrip("\n")]
    return "\n".join(lines) + "\n"


def key_stage_rows(rows: list[dict[str, Any]], names: list[str], measured_device: str | None) -> list[dict[str, str]]:
    """The replaced stages (KEY_STAGES) per model and batch, every device's bounds side by side, as shown."""
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
    return table


def roofline_plot(rows: list[dict[str, Any]], tflops: float, tb_s: float, device: str, path: Path,
                  dtype: str = "bf16") -> None:
    """Log-log roofline of `device`'s measured stages: achieved TFLOP/s against FLOP per byte (eager
    bytes), with the compute roof and the bandwidth slope; the replaced stages stand out."""
    import matplotlib

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
        for r in (r for r in points if replaced(r) == key_stage):
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


def write_outputs(out: Path, rows: list[dict[str, Any]], md: str, meta: dict[str, Any]) -> None:
    """roofline.md, roofline.csv (one row per device, model, batch and stage) and roofline.json (`meta` and the rows)."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "roofline.md", md)
    with open(out / "roofline.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    write_json_atomic(out / "roofline.json", {**meta, "rows": rows})
