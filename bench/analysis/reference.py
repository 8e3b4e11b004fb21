"""The paper's numbers, shipped with the package, mapped onto vtbench model names and options.

`bench/analysis/reference/paper_numbers.csv` is a verbatim copy of the figures in Wu et al. (2020): one number
per row, each naming its table (T1..T10). This module turns each row into zero or more *reference rows*
that say which vtbench cell they describe (model, model options, input size, data set) and which
vtbench metric they are comparable to:

- T8 and T2 `flops`/`params`/`top1` -> `gmacs`, `params_m`, `top1` of the default variant;
- T1 stage-5 ratios -> `stage_gmacs_reduction_x` / `stage_params_reduction_x` (ResNet stage 5 over
  the VT stage, a derived column of the report);
- T3 tokenizer rows -> `tokenizer=<name>`; T4 `recurrent=false`; T5 `token_op=none` ->
  `transformer=none` (`graphconv` has no vtbench equivalent and never matches); T6 `num_tokens=N`;
  T7 `projector=false`; their "flops ...M params ...M" notes become `gmacs`/`params_m` rows too;
- T9/T10 `miou` of the FPN rows, and the total and FPN-module GFLOPs parsed from the note column ->
  `gmacs` and `gmacs_fpn`.

FLOPs in the paper are multiply-accumulates (PAPER.md, "Conventions"), so they compare directly with
`gmacs`.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from bench.analysis.facts import facts_of

CSV_PATH = Path(__file__).resolve().parent / "reference" / "paper_numbers.csv"

# Options that name a model variant in the paper's tables; their paper defaults are the registry's
# defaults of the model (section 5.1: L=16 tokens, filter tokenizer then recurrent ones, the paper's
# transformer, with projector; VT-FPN: 8 tokens per level). Options not listed here (token_channels,
# head_hidden, ...) are readings of details the paper leaves open and do not restrict a match; the
# paper-vs-measured table shows each matched cell's options.
VARIANT_KEYS = ("tokenizer", "num_tokens", "projector", "transformer", "recurrent")
# A fact about the paper, not the models: values that are all "the paper's default" of an option. The
# token-space transformer may be read from the ICCV equations (`paper`) or the appendix (`mhsa`); both
# are "the transformer" of Tables 1-8, and only Table 5 ablates it (`none`).
PAPER_READINGS: dict[str, tuple[Any, ...]] = {"transformer": ("paper", "mhsa")}
ACCURACY_METRICS = ("top1", "top5", "miou", "pixel_acc")
# Data sets a paper row's accuracy was measured on, as vtbench's `train.dataset` names them.
TASK_DATASET = {"cls": "imagenet"}
SEG_DATASET = {"COCO-stuff": "coco_stuff", "LIP": "lip"}
CLS_NUM_CLASSES = 1000

_PAPER_METRIC = {"flops": "gmacs", "params": "params_m", "top1": "top1", "miou": "miou",
                 "stage5_flops_ratio": "stage_gmacs_reduction_x",
                 "stage5_params_ratio": "stage_params_reduction_x"}
_UNIT = {"gmacs": "GMAC", "params_m": "M", "top1": "%", "miou": "%", "gmacs_fpn": "GMAC",
         "stage_gmacs_reduction_x": "x", "stage_params_reduction_x": "x"}
_VARIANT_RE = re.compile(r"^(tokenizer|recurrent|token_op|num_tokens|projector)=(\w+)$")
_NOTE_CLS_RE = re.compile(r"flops\s+([\d.]+)M\s+params\s+([\d.]+)M")
_NOTE_TOTAL_RE = re.compile(r"total\s+([\d.]+)\s*GFLOPs")
_NOTE_FPN_RE = re.compile(r"FPN module\s+([\d.]+)\s*GFLOPs")

COLUMNS = ["table", "task", "model", "variant", "metric", "value", "unit", "input_size", "dataset",
           "match", "paper_metric", "note"]


def paper_defaults(model: Any) -> dict[str, Any]:
    """The paper's default variant of `model`: its registry default of each of VARIANT_KEYS it takes, a
    tuple of accepted values where the paper has several readings of that default ({} for a baseline
    or a model the registry does not know)."""
    defaults = facts_of(model).defaults or {}  # unknown where neither record nor registry says
    out: dict[str, Any] = {}
    for key in VARIANT_KEYS:
        if key in defaults:
            readings = PAPER_READINGS.get(key, ())
            out[key] = readings if defaults[key] in readings else defaults[key]
    return out


def load_paper_csv(path: str | Path = CSV_PATH) -> pd.DataFrame:
    """The paper's numbers exactly as shipped (one number per row)."""
    return pd.read_csv(path, dtype={"note": "string"}, keep_default_na=False)


def _variant_match(variant: str) -> dict[str, Any] | None:
    """Model options a paper variant label stands for; None when vtbench has no equivalent."""
    found = _VARIANT_RE.match(variant.strip())
    if not found:
        return {}
    key, raw = found.groups()
    if key == "token_op":
        # Table 5: "none" drops the token-space transformer; graph convolution is not offered.
        return {"transformer": "none"} if raw == "none" else None
    if key in ("recurrent", "projector"):
        return {key: raw.lower() == "true"}
    if key == "num_tokens":
        return {key: int(raw)}
    return {key: raw}


def _note_metrics(note: str) -> dict[str, float]:
    """GMACs and params that the note column states beside an accuracy (T3-T7, T9, T10)."""
    out: dict[str, float] = {}
    if found := _NOTE_CLS_RE.search(note):
        out["gmacs"] = float(found.group(1)) / 1000.0  # the note says MFLOPs (MACs)
        out["params_m"] = float(found.group(2))
    if found := _NOTE_TOTAL_RE.search(note):
        out["gmacs"] = float(found.group(1))
    if found := _NOTE_FPN_RE.search(note):
        out["gmacs_fpn"] = float(found.group(1))
    return out


def _dataset_of(row: pd.Series) -> str:
    """The data set a row's accuracy refers to, as a normalised vtbench name."""
    if row["task"] == "seg":
        return SEG_DATASET.get(row["variant"], str(row["variant"]).lower())
    return TASK_DATASET["cls"]


def _expand_row(row: pd.Series) -> list[dict[str, Any]]:
    """Reference rows (vtbench metric names) for one row of the paper's CSV."""
    match = _variant_match(str(row["variant"]))
    base = {"table": row["table"], "task": row["task"], "model": row["model"],
            "variant": row["variant"], "input_size": row["input"], "dataset": _dataset_of(row),
            "match": match, "note": row["note"]}
    metrics = {}
    if row["metric"] in _PAPER_METRIC:
        metrics[_PAPER_METRIC[row["metric"]]] = (float(row["value"]), row["metric"])
    if match is not None or row["task"] == "seg":
        for metric, value in _note_metrics(str(row["note"])).items():
            metrics.setdefault(metric, (value, f"note: {metric}"))
    return [dict(base, metric=metric, value=value, unit=_UNIT[metric], paper_metric=source)
            for metric, (value, source) in metrics.items()]


@functools.lru_cache(maxsize=1)
def _reference_cached() -> pd.DataFrame:
    rows = [ref for _, row in load_paper_csv().iterrows() for ref in _expand_row(row)]
    return pd.DataFrame(rows, columns=COLUMNS)


def load_reference() -> pd.DataFrame:
    """Reference rows: table, model, variant, vtbench metric, value, unit, input size, data set, match.

    `match` holds the model options the row stands for (a dict; {} is the paper's default variant,
    None means vtbench has no equivalent, e.g. Table 5's graph convolution).
    """
    return _reference_cached().copy()


def _norm(value: Any) -> str:
    """Compare option values loosely: True/'true', 16/'16'/16.0 are equal."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip().lower()


def _same(want: Any, have: Any) -> bool:
    """`have` equals `want`, or is one of `want`'s values when `want` is a tuple of accepted values."""
    accepted = want if isinstance(want, tuple) else (want,)
    if isinstance(have, tuple):
        return any(_norm(h) in {_norm(a) for a in accepted} for h in have)
    return _norm(have) in {_norm(a) for a in accepted}


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _dataset_norm(name: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def cell_matches(ref: dict[str, Any] | pd.Series, cell: dict[str, Any] | pd.Series) -> bool:
    """Whether a (flattened) measured cell is the configuration a reference row describes.

    The cell must be the same model at the same input size with the paper's number of classes and
    ImageNet stem (classification), use the options the row names and the paper's defaults for the
    rest; accuracy rows also need the same data set.
    """
    if ref["match"] is None or cell.get("model") != ref["model"]:
        return False
    if str(cell.get("input_size")) != str(ref["input_size"]):
        return False
    if ref["task"] == "cls":
        classes, stem = cell.get("num_classes"), cell.get("stem")
        if not _is_missing(classes) and int(classes) != CLS_NUM_CLASSES:
            return False
        if not _is_missing(stem) and stem != "imagenet":
            return False
    defaults = paper_defaults(ref["model"])
    for key in VARIANT_KEYS:
        want = ref["match"].get(key, defaults.get(key))
        have = cell.get(key)
        have = defaults.get(key) if _is_missing(have) else have
        if want is not None and have is not None and not _same(want, have):
            return False
    if ref["metric"] in ACCURACY_METRICS:
        return _dataset_norm(cell.get("train.dataset")) == _dataset_norm(ref["dataset"])
    return True


def compare(cells: pd.DataFrame, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Paper vs measured: one row per (reference row, matching aggregated cell) with a measured value.

    `cells` is the report's aggregated table (the metric's mean in the metric's column, its sample
    standard deviation in `<metric>_std` and count in `<metric>_n`). `delta` = measured - paper and
    `delta_pct` = 100 * delta / paper.
    """
    reference = load_reference() if reference is None else reference
    rows = []
    for _, ref in reference.iterrows():
        if ref["metric"] not in cells.columns:
            continue
        for _, cell in cells[cells["model"] == ref["model"]].iterrows():
            measured = cell.get(ref["metric"])
            if _is_missing(measured) or not cell_matches(ref, cell):
                continue
            rows.append(_comparison_row(ref, cell, float(measured)))
    columns = ["table", "model", "variant", "metric", "unit", "input_size", "paper", "measured",
               "measured_std", "n", "delta", "delta_pct", "group_id", "note"]
    return pd.DataFrame(rows, columns=columns)


def _comparison_row(ref: pd.Series, cell: pd.Series, measured: float) -> dict[str, Any]:
    metric = ref["metric"]
    delta = measured - float(ref["value"])
    count = cell.get(f"{metric}_n")
    return {"table": ref["table"], "model": ref["model"], "variant": ref["variant"], "metric": metric,
            "unit": ref["unit"], "input_size": ref["input_size"], "paper": float(ref["value"]),
            "measured": measured, "measured_std": cell.get(f"{metric}_std"),
            "n": None if _is_missing(count) else int(count), "delta": delta,
            "delta_pct": 100.0 * delta / float(ref["value"]) if ref["value"] else math.nan,
            "group_id": cell.get("group_id"), "note": ref["note"]}


def paper_value(model: str, metric: str, table: str, input_size: tuple[int, int], variant: str = "") -> float | None:
    """The paper's number for a model/metric/table at an input size (and ablation variant), or None."""
    ref = _reference_cached()
    size = f"{input_size[0]}x{input_size[1]}"
    rows = ref[(ref.model == model) & (ref.metric == metric) & (ref.table == table) & (ref.input_size == size)]
    if variant:
        rows = rows[rows.variant == variant]
    return float(rows.value.iloc[0]) if len(rows) else None
