"""How often does a MAC counter hit torchvision's published figures? vtbench's counter against plain fvcore.

    python -m bench.measure.counting_check [--out runs/counting] [--models vit_b_16,resnet50] [--threads 1]

The committed result is regenerated with `--out results/counting`; a bare run writes runs/counting, so
it never overwrites it.

Every torchvision classification model (`torchvision.models.list_models(module=torchvision.models)`)
whose default weights publish `_ops` (GFLOPS in torchvision's docs, which are multiply-accumulates:
resnet50's 4.089 is Table 8's) is built without weights (no download) and counted at its weights'
crop size (`weights.transforms().crop_size`), batch 1. A count *hits* when it is within
TOLERANCE_PCT of the published figure. Four counts per model:

- `gmacs`: vtbench's headline (`bench.measure.complexity`, executed, fused attention unfused);
- `gmacs_traced`: vtbench's fvcore trace in the paper's convention (same run);
- `fvcore_total`: plain `FlopCountAnalysis(model, x).total()`, as a user gets it out of the box
  (eval + no_grad, PyTorch's fast paths as they are);
- `fvcore_paper`: the same plain analysis, `by_operator()` summed over conv, linear, matmul, einsum,
  bmm, addmm, mm (the paper's convention with fvcore's own handles only).

Writes `counting.csv` (one row per model, with seconds taken) and `counting.md` (hit rates, misses,
machine and date). tests/test_counting_torchvision.py holds the headline to the same tolerance.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torchvision
from fvcore.nn import FlopCountAnalysis
from torch import nn

from bench.measure.complexity import measure_complexity
from bench.core.records import git_commit

log = logging.getLogger(__name__)

TOLERANCE_PCT = 1.5
# The plain-fvcore sum in the paper's convention: fvcore's own matrix-product handles, nothing added.
FVCORE_PAPER_OPS = ("conv", "linear", "matmul", "einsum", "bmm", "addmm", "mm")


@dataclass(frozen=True)
class Published:
    """One torchvision model with the figure its default weights publish."""

    name: str
    weights: str
    crop: int
    gmacs: float


def published_models() -> list[Published]:
    """Every torchvision classification model whose default weights publish `_ops`, in list order."""
    out = []
    for name in torchvision.models.list_models(module=torchvision.models):
        weights = torchvision.models.get_model_weights(name).DEFAULT
        if "_ops" in weights.meta:
            out.append(Published(name, weights.name, _crop(weights), float(weights.meta["_ops"])))
    return out


def _crop(weights) -> int:
    crop = weights.transforms().crop_size
    return int(crop[0] if isinstance(crop, (list, tuple)) else crop)


def build_for_weights(p: Published) -> nn.Module:
    """The model the published weights belong to, built with random weights (nothing downloaded)."""
    weights = torchvision.models.get_model_weights(p.name)[p.weights]
    builder = torchvision.models.get_model_builder(p.name)
    kwargs = {"num_classes": len(weights.meta["categories"])}
    # torchvision's ViT builders set image_size from the weights (`_vision_transformer`:
    # `_ovewrite_named_param(kwargs, "image_size", weights.meta["min_size"][0])`); the SWAG weights of
    # vit_h_14 are at 518, so without this the model rejects its own crop size.
    if builder.__module__ == "torchvision.models.vision_transformer":
        kwargs["image_size"] = weights.meta["min_size"][0]
    return builder(weights=None, **kwargs).eval()


def plain_fvcore(model: nn.Module, size: int) -> tuple[float, float]:
    """(total, paper-convention sum) in G MACs from fvcore with its defaults, as a user runs it."""
    with torch.no_grad():
        analysis = FlopCountAnalysis(model, torch.randn(1, 3, size, size))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        by_op = analysis.by_operator()
        return analysis.total() / 1e9, sum(v for k, v in by_op.items() if k in FVCORE_PAPER_OPS) / 1e9


def check(p: Published, with_plain: bool = True) -> dict:
    """Count one model every way; the row of counting.csv."""
    started = time.perf_counter()
    model = build_for_weights(p)
    built = time.perf_counter()
    result = measure_complexity(model, p.crop)
    counted = time.perf_counter()
    row = {"model": p.name, "weights": p.weights, "crop": p.crop, "published_gmacs": p.gmacs,
           "gmacs": result.gmacs, "gmacs_traced": result.gmacs_traced, "gmacs_fvcore": result.gmacs_fvcore,
           "counter_gap_pct": result.counter_gap_pct}
    if with_plain:
        row["fvcore_total"], row["fvcore_paper"] = plain_fvcore(model, p.crop)
    for key in ("gmacs", "gmacs_traced", "fvcore_total", "fvcore_paper"):
        if key in row:
            row[f"delta_pct_{key}"] = 100 * (row[key] - p.gmacs) / p.gmacs
            row[f"hit_{key}"] = abs(row[f"delta_pct_{key}"]) <= TOLERANCE_PCT
    row.update(build_s=built - started, count_s=counted - built, total_s=time.perf_counter() - started)
    del model
    gc.collect()
    return row


def hit_rates(df: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """{count: (hits, models)} over the rows of counting.csv."""
    return {key: (int(df[f"hit_{key}"].sum()), len(df)) for key in ("gmacs", "gmacs_traced", "fvcore_total", "fvcore_paper")
            if f"hit_{key}" in df}


def environment() -> str:
    """Date, machine, threads, versions and git commit, for the report's first line."""
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    commit = git_commit(Path(__file__).resolve().parent)  # the code that counted, "-dirty" when modified
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{now}; host {platform.node()} ({cpu}, {torch.get_num_threads()} threads); torch {torch.__version__}, "
            f"torchvision {torchvision.__version__}; git {commit or 'unknown'}")


LABELS = {"gmacs": "vtbench `gmacs` (executed, fast path off)", "gmacs_traced": "vtbench `gmacs_traced` (fvcore trace)",
          "fvcore_total": "plain fvcore `total()`", "fvcore_paper": "plain fvcore `by_operator()`, matrix products"}


def render(df: pd.DataFrame, env: str) -> str:
    """counting.md: hit rates, then every model outside the tolerance for any counter."""
    lines = ["# Counting check: published torchvision `_ops` against each counter", "",
             f"Measured {env}. Regenerate with `python -m bench.measure.counting_check --out results/counting`.",
             f"A hit is within {TOLERANCE_PCT} % of the figure the model's default weights publish, counted at "
             "the weights' crop size, batch 1.", "", "| counter | hits |", "|---|---|"]
    lines += [f"| {LABELS[k]} | {h} / {n} ({100 * h / n:.0f} %) |" for k, (h, n) in hit_rates(df).items()]
    cols = [c for c in ("gmacs", "gmacs_traced", "fvcore_total", "fvcore_paper") if c in df]
    missed = df[~df[[f"hit_{c}" for c in cols]].all(axis=1)]
    lines += ["", f"## Models some counter misses ({len(missed)})", "",
              "| model | crop | published | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for _, r in missed.iterrows():
        cells = [f"{r[c]:.3f} ({r[f'delta_pct_{c}']:+.1f} %)" for c in cols]
        lines.append(f"| {r.model} | {r.crop} | {r.published_gmacs:.3f} | " + " | ".join(cells) + " |")
    lines += ["", f"Total time {df.total_s.sum():.0f} s; slowest: " + ", ".join(
        f"{r.model} {r.total_s:.0f} s" for _, r in df.nlargest(5, "total_s").iterrows()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: count the models, write counting.csv and counting.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/counting"),
                        help="folder for counting.csv and counting.md (default runs/counting; the committed "
                             "result is results/counting)")
    parser.add_argument("--models", default=None, help="comma-separated subset (default: every published model)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    models = published_models()
    if args.models:
        wanted = set(args.models.split(","))
        unknown = wanted - {p.name for p in models}
        if unknown:
            parser.error(f"not a torchvision model with published _ops: {', '.join(sorted(unknown))}")
        models = [p for p in models if p.name in wanted]
    env = environment()  # before writing: rewritten outputs would make the tree read as modified
    rows = []
    for p in models:
        rows.append(check(p))
        log.info("%s at %d: published %.3f, vtbench %.3f (%+.2f %%), plain fvcore %.3f, %.0f s", p.name, p.crop,
                 p.gmacs, rows[-1]["gmacs"], rows[-1]["delta_pct_gmacs"], rows[-1]["fvcore_total"], rows[-1]["total_s"])
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "counting.csv", index=False)
    (args.out / "counting.md").write_text(render(df, env))
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
