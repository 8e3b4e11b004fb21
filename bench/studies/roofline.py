"""The roofline study: per-stage lower bounds on time, with a speed study's measured stage times beside them.

    python -m bench.studies.roofline --out DIR [--measured STUDY ...]

Counts every stage's FLOPs and bytes on the meta device (bench.measure.roofline: shapes only, no
timing), turns them into bounds for the datasheet GPUs (`DEVICES`) and, when a measured study is
given, for that machine at its measured ceilings, with the study's eager per-stage times beside
them; then writes roofline.md, roofline.csv, roofline.json and roofline.png into --out (default
runs/roofline: never the committed results/ unless asked) and prints roofline.md. A STUDY is a
legacy speed.json or a run folder re-measured by `vtbench interleave --stages --peak` (what
`vtbench speed` writes). Exit 0; 1 when a measured stage beats its bound (a count, timer or ceiling
is wrong); 2 on bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from bench.analysis import roofline_report as report
from bench.core.errors import UsageError
from bench.measure import roofline

log = logging.getLogger(__name__)

DEFAULT_OUT = "runs/roofline"


def measured_models(stages_ms: dict[str, dict[str, float]]) -> dict[str, tuple[int, tuple[int, ...]]]:
    """The models and batch sizes a speed study measured (its 'model, bN' keys), at STUDY_MODELS' sides."""
    batches: dict[str, set[int]] = {}
    for key in stages_ms:
        name, batch = report.stage_key_parts(key)
        batches.setdefault(name, set()).add(batch)
    return {name: (roofline.STUDY_MODELS[name][0], tuple(sorted(found)))
            for name, found in batches.items() if name in roofline.STUDY_MODELS}


def read_studies(paths: list[str]) -> list[dict[str, Any]]:
    """The measured studies named by --measured; UsageError for one that is not there or holds nothing."""
    studies = []
    for path in paths:
        if not Path(path).exists():
            raise UsageError(f"--measured {path}: no such file or folder")
        study = report.read_study(Path(path))
        if not study:
            raise UsageError(f"--measured {path}: no re-measurement with stage times and ceilings there")
        studies.append(study)
    return studies


def build(measured_paths: list[str]) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    """The study's rows, roofline.md's text and roofline.json's header, from the measured studies."""
    devices: dict[str, tuple[float, float, str]] = dict(roofline.DEVICES)
    measured_device, measured, dtype, models = None, {}, "bf16", None
    studies = read_studies(measured_paths)
    if studies:
        peak = studies[0]["peak"]
        measured_device = f"{peak['device_name']}, measured ceilings"
        for study in studies:
            measured.update(study["stages_ms"])
        if peak["device"] == "cpu":  # the datasheets are bf16 GPU peaks: nothing to set beside a CPU
            devices, dtype, models = {}, peak["dtype"], measured_models(measured)
        devices[measured_device] = (peak["gemm_tflops"], peak["copy_gb_s"] / 1000,
                                    f"bench.measure.roofline.measure_peak in {measured_paths[0]}")
    costs = roofline.study_costs(roofline.FLOAT_BYTES[dtype], models)
    rows = report.attach_measured(roofline.bound_rows(costs, devices), measured, measured_device)
    md = report.markdown(rows, devices, measured_device, ", ".join(measured_paths), dtype=dtype,
                         float_bytes=roofline.FLOAT_BYTES[dtype], launch_us=roofline.LAUNCH_US)
    meta = {"devices": devices, "launch_us": roofline.LAUNCH_US, "models": models or roofline.STUDY_MODELS,
            "measured": measured_paths, "measured_device": measured_device, "dtype": dtype}
    return rows, md, meta


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.studies.roofline [--out DIR] [--measured STUDY ...]`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m bench.studies.roofline", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--measured", nargs="*", default=[], metavar="STUDY",
                   help="speed studies of one device (a legacy speed.json, or a run folder re-measured by "
                        "`vtbench interleave --stages --peak`, e.g. `vtbench speed`'s --out) whose per-stage times "
                        "are set beside the bounds; the first one's measured ceilings are that device's roof. A CPU "
                        "study gives a CPU roofline: only its device, bytes at its dtype (fp32: 4), the batch "
                        "sizes it measured. None (the default): the datasheet GPUs' bounds alone")
    args = p.parse_args(argv)
    try:
        rows, md, meta = build(args.measured)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    report.write_outputs(out, rows, md, meta)
    if meta["measured_device"]:
        tflops, tb_s, _ = meta["devices"][meta["measured_device"]]
        report.roofline_plot(rows, tflops, tb_s, meta["measured_device"], out / "roofline.png", meta["dtype"])
    for line in report.violations(rows):
        log.warning("BOUND VIOLATED: %s", line)
    sys.stdout.write(md)
    return 1 if report.violations(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
