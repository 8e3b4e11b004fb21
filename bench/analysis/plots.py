"""Report plots (seaborn on matplotlib's Agg backend), drawn from the report's aggregated table.

Every plot is titled, has axes labelled with units and a legend, and uses ONE colour per model
family (`FAMILY_COLORS`) across all plots. A plot whose data do not exist raises `PlotSkipped` with
the reason, which the report lists.
"""

from __future__ import annotations

import logging
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on clusters and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402

from bench.analysis.facts import facts_of  # noqa: E402
from bench.analysis.reference import paper_defaults  # noqa: E402
from bench.analysis.compare import mean_ci_halfwidth  # noqa: E402

log = logging.getLogger(__name__)

# seaborn "deep" colours, one per family, fixed so that a family looks the same in every plot.
FAMILY_COLORS = {"resnet": "#4C72B0", "vt_resnet": "#DD8452", "fpn": "#55A868", "vt_fpn": "#C44E52",
                 "other": "#8C8C8C"}
FAMILY_LABELS = {"resnet": "ResNet", "vt_resnet": "VT-ResNet", "fpn": "FPN", "vt_fpn": "VT-FPN",
                 "other": "other"}
# A model's short label is this prefix and its registered depth (vt_resnet18 -> VT-R18).
FAMILY_SHORT = {"resnet": "R", "vt_resnet": "VT-R", "fpn": "FPN-R", "vt_fpn": "VT-FPN-R"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")


class PlotSkipped(Exception):
    """A plot that cannot be drawn from the data at hand; the message says why."""


@dataclass
class PlotResult:
    """One drawn plot: its name, title and files."""

    name: str
    title: str
    png: Path
    svg: Path
    caption: str = ""  # what the plot leaves out or reshapes, and why


def _theme() -> None:
    sns.set_theme(style="whitegrid", context="notebook")


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df.columns else pd.Series(np.nan, index=df.index)


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _same_value(a: Any, b: Any) -> bool:
    """Cell values equal, treating every kind of missing (None, NaN, <NA>) as the same."""
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b)
    return str(a) == str(b)


def _text_key(df: pd.DataFrame, cols: list[str], sep: str) -> pd.Series:
    """Row-wise 'a · b' of the columns' values as text (missing -> 'nan'); '' without columns."""
    if not cols:
        return pd.Series("", index=df.index)
    return df[cols].apply(lambda r: sep.join(f"{c.split('.')[-1]}={v}" for c, v in zip(cols, r.values)), axis=1)


def short_name(model: Any) -> str:
    """'VT-R18', 'FPN-R50': the family's short prefix and the registered depth; a model the registry
    does not know (or one without a depth) keeps its name."""
    facts = facts_of(model)
    if facts.family not in FAMILY_SHORT or facts.depth is None:
        return str(model)
    return f"{FAMILY_SHORT[facts.family]}{facts.depth}"


def _short_label(row: pd.Series, label_cols: list[str]) -> str:
    parts = [short_name(row["model"])]
    parts += [f"{c.split('.')[-1]}={row[c]}" for c in label_cols if not pd.isna(row.get(c))]
    return " ".join(parts)


# --------------------------------------------------------------------------- accuracy vs GMACs

def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows not dominated by another (lower or equal x with strictly higher y), sorted by x."""
    ordered = points.sort_values([x, y], ascending=[True, False])
    front, best = [], -math.inf
    for idx, row in ordered.iterrows():
        if row[y] > best:
            front.append(idx)
            best = row[y]
    return points.loc[front].sort_values(x)


def plot_accuracy_vs_gmacs(agg: pd.DataFrame, label_cols: list[str]) -> plt.Figure:
    """Accuracy (top-1 or mIoU, mean ± std) against GMACs, Pareto front marked, one panel per data set."""
    # A run may hold only one task: a segmentation-only run has no top1 column at all.
    metric = next((m for m in ("top1", "miou") if m in agg.columns and agg[m].notna().any()), None)
    if metric is None:
        raise PlotSkipped("no accuracy (top1 or miou) in the records")
    rows = agg[agg[metric].notna() & _col(agg, "gmacs").notna()]
    if rows.empty:
        raise PlotSkipped(f"no cell has both {metric} and gmacs (train without complexity?)")
    datasets = list(dict.fromkeys(_col(rows, "train.dataset").fillna("?").astype(str)))
    fig, axes = plt.subplots(1, len(datasets), figsize=(7.5 * len(datasets), 5.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        sub = rows[_col(rows, "train.dataset").fillna("?").astype(str) == dataset]
        _accuracy_panel(ax, sub, metric, label_cols, dataset)
    name = "top-1 accuracy" if metric == "top1" else "mIoU"
    fig.suptitle(wrap_to_width(f"{name} vs GMACs\n(mean over seeds; bars: 95 % t confidence interval of the mean, "
                               f"none for one seed; Pareto front dashed)", fig.get_figwidth(), fontsize=11), fontsize=11)
    fig.tight_layout()
    return fig


def _accuracy_panel(ax: plt.Axes, sub: pd.DataFrame, metric: str, label_cols: list[str], dataset: str) -> None:
    families = [f for f in FAMILY_COLORS if (sub["family"] == f).any()]
    for fam in families:
        part = sub[sub["family"] == fam]
        ax.errorbar(part["gmacs"], part[metric], yerr=ci_halfwidths(part, metric), fmt="o",
                    color=FAMILY_COLORS[fam], ecolor=FAMILY_COLORS[fam], capsize=3, markersize=7,
                    label=f"{FAMILY_LABELS[fam]} (bars: 95 % CI over seeds)")
    front = pareto_front(sub, "gmacs", metric)
    ax.step(front["gmacs"], front[metric], where="post", color="black", linestyle="--", linewidth=1.2,
            label="Pareto front")
    ax.scatter(front["gmacs"], front[metric], s=160, facecolors="none", edgecolors="black", linewidths=1.2)
    varying = [c for c in label_cols if sub[c].astype(str).nunique() > 1]
    for _, row in (sub if len(sub) <= 16 else front).iterrows():  # many points: label the front only
        ax.annotate(_short_label(row, varying), (row["gmacs"], row[metric]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("GMACs per image (10⁹ multiply-accumulates)")
    ax.set_ylabel("top-1 accuracy (%)" if metric == "top1" else "mIoU (%)")
    ax.set_title(f"data set: {dataset}")
    # Below the axes: inside, "best" still covered error bars of a full sweep.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.19), ncol=3, fontsize=8, frameon=False)


def ci_halfwidths(rows: pd.DataFrame, metric: str) -> np.ndarray:
    """95 % t half-widths of each row's mean over seeds (`METRIC_ci95` from the report; 0 for one seed)."""
    if f"{metric}_ci95" in rows.columns:
        return rows[f"{metric}_ci95"].astype(float).fillna(0).to_numpy()
    return np.array([mean_ci_halfwidth(s, n) for s, n in zip(_col(rows, f"{metric}_std"), _col(rows, f"{metric}_n"))],
                    dtype=float).clip(min=0) if len(rows) else np.zeros(0)


# --------------------------------------------------------------------------- latency vs tokens

def plot_latency_vs_tokens(agg: pd.DataFrame, settings: list[str]) -> plt.Figure:
    """Latency p50 (p20-p80 bars) against the token count, one line per tokenizer, a panel per VT model."""
    need = ["latency_ms_p50", "num_tokens"]
    if any(c not in agg.columns for c in need):
        raise PlotSkipped("needs latency_ms_p50 and VT cells with num_tokens")
    rows = _latency_token_rows(agg)
    rows["tokenizer"] = [tokenization_label(row) for _, row in rows.iterrows()]
    if rows.empty or rows["num_tokens"].nunique() < 2:
        raise PlotSkipped("no VT model was timed at two or more token counts")
    from bench.analysis.tables import latency_title  # the latency tables' heading for the same setting

    setting_key = pd.Series([latency_title({c: row[c] for c in settings}) for _, row in rows.iterrows()],
                            index=rows.index, dtype=object)
    models = sorted(rows["model"].unique(), key=lambda m: (facts_of(m).task != "cls", facts_of(m).depth or 0))
    setting_values = list(dict.fromkeys(setting_key))
    fig, axes = plt.subplots(len(setting_values), len(models), figsize=(5.5 * len(models), 4.2 * len(setting_values)),
                             squeeze=False)
    for i, setting in enumerate(setting_values):
        for j, model in enumerate(models):
            sub = rows[(setting_key == setting) & (rows["model"] == model)]
            _latency_panel(axes[i][j], sub, agg, model, setting)
    fig.suptitle("Latency vs number of tokens L\n(p50, bars p20–p80; dashed: baseline)", fontsize=11)
    fig.tight_layout()
    return fig


TOKENIZATION_OPTIONS = ("tokenizer", "recurrent")


def _with_token_count(agg: pd.DataFrame) -> pd.DataFrame:
    """VT rows with `num_tokens` filled in where the cell kept the model's default (where it is known)."""
    from bench.analysis.facts import defaults_of

    rows = agg[agg["family"].isin(["vt_resnet", "vt_fpn"])].copy()
    if "num_tokens" not in rows.columns:
        rows["num_tokens"] = np.nan
    rows["num_tokens"] = [t if not _missing(t) else (defaults_of(m) or {}).get("num_tokens", np.nan)
                          for m, t in zip(rows["model"], rows["num_tokens"])]
    return rows


def _latency_token_rows(agg: pd.DataFrame) -> pd.DataFrame:
    rows = _with_token_count(agg)
    return rows[rows["latency_ms_p50"].notna() & rows["num_tokens"].notna()].copy()


def latency_caption(agg: pd.DataFrame) -> str:
    """What the latency-vs-tokens plot leaves out: VT rows timed whose token count is unknown here."""
    if "latency_ms_p50" not in agg.columns or "family" not in agg.columns:
        return ""
    timed = agg[agg["family"].isin(["vt_resnet", "vt_fpn"]) & agg["latency_ms_p50"].notna()]
    left = len(timed) - len(_latency_token_rows(agg))
    return (f"Left out: {left} timed VT configuration(s) whose token count is not known here (the model's default "
            f"could not be read); they are in the latency tables." if left > 0 else "")


def accuracy_caption(agg: pd.DataFrame) -> str:
    """What the accuracy plot leaves out: trained configurations without a GMACs figure."""
    metric = next((m for m in ("top1", "miou") if m in agg.columns and agg[m].notna().any()), None)
    if metric is None:
        return ""
    left = int((agg[metric].notna() & _col(agg, "gmacs").isna()).sum())
    return (f"Left out: {left} trained configuration(s) without GMACs (their cells did not measure complexity); "
            f"they are in the Accuracy table." if left else "")


def tokenization_label(row: pd.Series) -> str:
    """How a VT cell tokenizes, in the tables' words (`bench.analysis.tables.option_text`): its
    `tokenizer` and `recurrent` options, each as set or as 'default (V)', those that apply to the model.

    VT-ResNet's default (ICCV section 3) is a filter-based first module and recurrent ones after it
    (`recurrent=True`); `recurrent=False` repeats the first tokenizer in every module (Tables 3-4).
    VT-FPN has one tokenizer per level and no recurrence.
    """
    from bench.analysis.tables import option_text

    parts = []
    for option in TOKENIZATION_OPTIONS:
        text = option_text(row.get("model"), option, row.get(option))
        if text:
            parts.append(f"{option}={text}")
    return ", ".join(parts) or "tokenizer=default"


def _tokenizer_colors(family: str, tokenizers: list[str]) -> dict[str, Any]:
    """Shades of the family's colour, one per tokenizer (the family keeps its colour)."""
    base = np.array(to_rgb(FAMILY_COLORS[family]))
    shades = np.linspace(0.55, 1.25, max(len(tokenizers), 1))
    return {t: tuple(np.clip(base * s, 0, 1)) for t, s in zip(tokenizers, shades)}


def _latency_panel(ax: plt.Axes, sub: pd.DataFrame, agg: pd.DataFrame, model: str, setting: str) -> None:
    family = facts_of(model).family
    tokenizers = sorted(sub["tokenizer"].astype(str).unique())
    colors = _tokenizer_colors(family, tokenizers)
    for k, tok in enumerate(tokenizers):
        part = sub[sub["tokenizer"].astype(str) == tok].sort_values("num_tokens")
        lo = part["latency_ms_p50"] - _col(part, "latency_ms_p20").fillna(part["latency_ms_p50"])
        hi = _col(part, "latency_ms_p80").fillna(part["latency_ms_p50"]) - part["latency_ms_p50"]
        ax.errorbar(part["num_tokens"].astype(float), part["latency_ms_p50"], yerr=[lo.clip(lower=0), hi.clip(lower=0)],
                    color=colors[tok], marker=MARKERS[k % len(MARKERS)], linestyle=LINESTYLES[k % len(LINESTYLES)],
                    capsize=3, label=f"{FAMILY_LABELS[family]} {tok}")
    _baseline_line(ax, sub, agg, model)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(sub["num_tokens"].astype(float).unique()))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("tokens per VT module, L")
    batch = sub["latency.batch_size"].iloc[0] if "latency.batch_size" in sub.columns else "?"
    ax.set_ylabel(f"latency p50 (ms per batch of {batch})")
    ax.set_title(f"{model}\n{setting}", fontsize=9)
    ax.legend(fontsize=7)


def _baseline_line(ax: plt.Axes, sub: pd.DataFrame, agg: pd.DataFrame, model: str) -> None:
    """The baseline's latency as a horizontal line in its family colour: the baseline configuration
    `bench.analysis.compare` paired the panel's cells with (`baseline_latency_ms_p50`)."""
    base = facts_of(model).baseline
    values = _col(sub, "baseline_latency_ms_p50").dropna().unique()
    if base and len(values):
        fam = facts_of(base).family
        ax.axhline(float(values[0]), color=FAMILY_COLORS.get(fam, FAMILY_COLORS["other"]), linestyle="--",
                   label=f"{FAMILY_LABELS.get(fam, fam)} baseline ({base})")


# --------------------------------------------------------------------------- stage 5

def _default_variant(rows: pd.DataFrame) -> pd.DataFrame:
    """Prefer rows whose model options are the paper's defaults (L=16, filter tokenizer, ...)."""
    keep = []
    for idx, row in rows.iterrows():
        defaults = paper_defaults(row["model"])
        ok = all(pd.isna(row.get(k)) or str(row.get(k)).lower() in
                 {str(a).lower() for a in (v if isinstance(v, tuple) else (v,))}
                 for k, v in defaults.items() if k in rows.columns)
        keep.append(ok)
    chosen = rows[keep]
    return chosen if not chosen.empty else rows


def _common_setting(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows at the most common input size/number of classes/stem, so bars are comparable."""
    keys = [c for c in ("input_size", "num_classes", "stem") if c in rows.columns]
    if not keys:
        return rows
    key = _text_key(rows, keys, "|")
    models_per_key = rows.groupby(key)["model"].nunique()
    return rows[key == models_per_key.idxmax()]  # the setting that covers the most models


def _stage5_candidates(agg: pd.DataFrame) -> pd.DataFrame:
    if "stage_gmacs" not in agg.columns or "family" not in agg.columns:
        return agg.iloc[0:0]
    return agg[agg["family"].isin(["resnet", "vt_resnet"]) & agg["stage_gmacs"].notna()]


def _stage5_rows(agg: pd.DataFrame) -> pd.DataFrame:
    """The bars: each model at the paper's default options, at the setting that covers the most models."""
    return _common_setting(_default_variant(_stage5_candidates(agg))).drop_duplicates("model")


def stage5_caption(agg: pd.DataFrame) -> str:
    """What the stage-5 plot leaves out, how many and why ('' when every cell with the metric is drawn)."""
    return left_out_caption(_stage5_candidates(agg), _stage5_rows(agg), "stage GMACs")


def left_out_caption(candidates: pd.DataFrame, shown: pd.DataFrame, metric: str) -> str:
    """'Drawn: 4 of 46 configurations with stage GMACs ...; left out: 42 (...), see the Complexity table.'"""
    if candidates.empty or len(shown) >= len(candidates):
        return ""
    left = candidates[~candidates.index.isin(shown.index)]
    why = []
    options = [c for c in ("tokenizer", "num_tokens", "recurrent", "transformer", "projector") if c in left.columns
               and left[c].notna().any()]
    if options:
        why.append(f"options away from the paper's defaults ({', '.join(options)})")
    sizes = set(left.get("input_size", pd.Series(dtype=object)).astype(str)) - set(shown.get("input_size", pd.Series(dtype=object)).astype(str))
    if sizes:
        why.append(f"another input size ({', '.join(sorted(sizes))})")
    if not why:
        why.append("the same model and setting at another measurement setting (the same counted MACs)")
    return (f"Drawn: {len(shown)} of {len(candidates)} configurations with {metric}, each model at the paper's "
            f"default options and one common input. Left out: {len(left)}, with {' or '.join(why)}; "
            f"every configuration's {metric} is in the Complexity table.")


def plot_stage5(agg: pd.DataFrame) -> plt.Figure:
    """Stage-5 GMACs of ResNet against the VT stage of VT-ResNet, per depth, reduction annotated."""
    if "stage_gmacs" not in agg.columns:
        raise PlotSkipped("no per-stage GMACs (gmacs_stage5 / gmacs_vt) in the records")
    if _stage5_candidates(agg).empty:
        raise PlotSkipped("no ResNet or VT-ResNet cell with per-stage GMACs")
    rows = _stage5_rows(agg)
    rows = rows.assign(depth=rows["model"].map(_backbone), family_label=rows["family"].map(FAMILY_LABELS))
    order = _backbone_order(rows)
    fams = [f for f in ("resnet", "vt_resnet") if (rows["family"] == f).any()]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.barplot(data=rows, x="depth", y="stage_gmacs", hue="family_label", order=order,
                hue_order=[FAMILY_LABELS[f] for f in fams], palette=[FAMILY_COLORS[f] for f in fams], errorbar=None, ax=ax)
    _annotate_reduction(ax, rows, order)
    size = rows["input_size"].iloc[0] if "input_size" in rows.columns else "?"
    ax.set_title(f"Stage 5 (ResNet) vs VT stage (VT-ResNet), input {size}")
    ax.set_xlabel("backbone depth")
    ax.set_ylabel("stage GMACs per image (10⁹ MACs)")
    ax.legend(title="family")
    fig.tight_layout()
    return fig


def _annotate_reduction(ax: plt.Axes, rows: pd.DataFrame, order: list[str]) -> None:
    for i, depth in enumerate(order):
        vt = rows[(rows["depth"] == depth) & (rows["family"] == "vt_resnet")]
        if not vt.empty and "stage_gmacs_reduction_x" in vt.columns and not pd.isna(vt["stage_gmacs_reduction_x"].iloc[0]):
            ratio = float(vt["stage_gmacs_reduction_x"].iloc[0])
            ax.annotate(reduction_label(ratio), (i, float(vt["stage_gmacs"].iloc[0])), xytext=(0, 4),
                        textcoords="offset points", ha="left", fontsize=8)


def reduction_label(ratio: float) -> str:
    """The VT stage against stage 5, from `ratio` = stage-5 MACs / VT-stage MACs, as one rounded phrase:
    '2.9x fewer', '3.6x more' (the VT stage costs more: 1 / ratio), or 'same' where the ratio, either way
    round, is 1.0x to one decimal (within about 5 %), rather than '1.0x fewer'."""
    if f"{ratio:.1f}" == "1.0" or f"{1 / ratio:.1f}" == "1.0":
        return "same"
    return f"{ratio:.1f}x fewer" if ratio > 1 else f"{1 / ratio:.1f}x more"


# --------------------------------------------------------------------------- FPN vs VT-FPN

def _fpn_rows(agg: pd.DataFrame) -> pd.DataFrame:
    """FPN and VT-FPN rows with GMACs, at the paper's default options where there are such rows."""
    rows = agg[agg["family"].isin(["fpn", "vt_fpn"])] if "family" in agg.columns else agg.iloc[0:0]
    if rows.empty or "gmacs" not in rows.columns or rows["gmacs"].isna().all():
        raise PlotSkipped("no FPN or VT-FPN cell with GMACs")
    return _default_variant(rows[rows["gmacs"].notna()])


def fpn_caption(agg: pd.DataFrame) -> str:
    """What the FPN plot leaves out ('' when every FPN / VT-FPN cell with GMACs is drawn)."""
    rows = agg[agg["family"].isin(["fpn", "vt_fpn"])] if "family" in agg.columns else agg.iloc[0:0]
    if rows.empty or "gmacs" not in rows.columns:
        return ""
    rows = rows[rows["gmacs"].notna()]
    return left_out_caption(rows, _default_variant(rows), "GMACs") if not rows.empty else ""


def _fpn_has_miou(rows: pd.DataFrame) -> bool:
    return "miou" in rows.columns and bool(rows["miou"].notna().any())


def fpn_title(agg: pd.DataFrame) -> str:
    """The FPN plot's title: it promises mIoU only where a panel shows it."""
    try:
        rows = _fpn_rows(agg)
    except PlotSkipped:
        return "FPN vs VT-FPN"
    return "FPN vs VT-FPN: GMACs and mIoU" if _fpn_has_miou(rows) else "FPN vs VT-FPN: GMACs"


def _backbone(model: str) -> str:
    """'fpn_r101' -> 'R101': the registered depth of the model's backbone ('R' where it has none)."""
    depth = facts_of(model).depth
    return f"R{depth}" if depth is not None else "R"


def _backbone_order(rows: pd.DataFrame) -> list[str]:
    """Backbones by registered depth (R50 before R101), the same order in every panel."""
    models = sorted(rows["model"].unique(), key=lambda m: facts_of(m).depth or 0)
    return list(dict.fromkeys(_backbone(m) for m in models))


def plot_fpn(agg: pd.DataFrame) -> plt.Figure:
    """FPN vs VT-FPN: total and FPN-module GMACs per backbone, a panel per input size; mIoU when trained."""
    rows = _fpn_rows(agg)
    sizes = list(dict.fromkeys(rows["input_size"].astype(str))) if "input_size" in rows.columns else ["?"]
    has_miou = _fpn_has_miou(rows)
    fams = [f for f in ("fpn", "vt_fpn") if (rows["family"] == f).any()]
    order = _backbone_order(rows)
    ncols = len(sizes) + int(has_miou)
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4.8), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        at_size = rows[rows["input_size"].astype(str) == size] if "input_size" in rows.columns else rows
        _fpn_gmacs_panel(ax, at_size.drop_duplicates("model"), fams, size, order)
    if has_miou:
        _miou_panel(axes[0][-1], rows[rows["miou"].notna()].drop_duplicates("model"), fams, order)
    what = "total and FPN-module GMACs per image" + (", and mIoU" if has_miou else "")
    fig.suptitle(f"FPN vs VT-FPN: {what}", fontsize=11)
    fig.tight_layout()
    return fig


def _fpn_gmacs_panel(ax: plt.Axes, rows: pd.DataFrame, fams: list[str], size: str, order: list[str]) -> None:
    parts = ("total", "FPN module")
    long = pd.concat([rows.assign(part="total", value=rows["gmacs"]),
                      rows.assign(part="FPN module", value=_col(rows, "stage_gmacs"))]).dropna(subset=["value"])
    # Two lines per tick ('R50' over 'FPN module'): one line ran into its neighbours at four bars.
    long["bar"] = long["model"].map(_backbone) + "\n" + long["part"]
    long["family_label"] = long["family"].map(FAMILY_LABELS)
    bars = [f"{b}\n{p}" for b in order for p in parts if (long["bar"] == f"{b}\n{p}").any()]
    sns.barplot(data=long, x="bar", y="value", hue="family_label", order=bars,
                hue_order=[FAMILY_LABELS[f] for f in fams], palette=[FAMILY_COLORS[f] for f in fams],
                errorbar=None, ax=ax)
    ax.set_title(f"GMACs per image at {size}")
    ax.set_xlabel("backbone and part")
    ax.set_ylabel("GMACs per image (10⁹ MACs)")
    ax.legend(title="family")


def _miou_panel(ax: plt.Axes, rows: pd.DataFrame, fams: list[str], order: list[str]) -> None:
    rows = rows.assign(depth=rows["model"].map(_backbone), family_label=rows["family"].map(FAMILY_LABELS))
    order = [b for b in order if (rows["depth"] == b).any()]
    sns.barplot(data=rows, x="depth", y="miou", hue="family_label", order=order,
                hue_order=[FAMILY_LABELS[f] for f in fams], palette=[FAMILY_COLORS[f] for f in fams],
                errorbar=None, ax=ax)
    for patch_group, fam in zip(ax.containers, fams):
        part = rows[rows["family"] == fam].set_index("depth")
        for patch in patch_group:
            center = patch.get_x() + patch.get_width() / 2
            depth = order[int(round(center))]  # seaborn draws category i at x = i, hues dodged around it
            if depth in part.index:
                row = part.loc[[depth]]
                ax.errorbar([center], row["miou"], yerr=np.nan_to_num(ci_halfwidths(row, "miou")), fmt="none",
                            ecolor="black", capsize=3)
    datasets = ", ".join(dict.fromkeys(_col(rows, "train.dataset").dropna().astype(str))) or "?"
    ax.set_title(f"mIoU on {datasets}\n(mean over seeds; bars: 95 % t CI, none for one seed)")
    ax.set_xlabel("backbone depth")
    ax.set_ylabel("mIoU (%)")
    ax.legend(title="family", loc="lower right")


# --------------------------------------------------------------------------- files

def save_figure(fig: plt.Figure, out_dir: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.png (for the HTML page) and NAME.svg; close the figure."""
    from bench.core.records import atomic_write

    out_dir.mkdir(parents=True, exist_ok=True)
    png, svg = out_dir / f"{name}.png", out_dir / f"{name}.svg"
    # no bbox_inches="tight": the figures lay themselves out (tight_layout), and the tight bounding
    # box costs a second full draw per file. Each file is written beside its target and renamed,
    # so a full disk leaves the former plot whole, not truncated.
    try:
        with atomic_write(png, "wb") as handle:
            fig.savefig(handle, format="png", dpi=110)
        with atomic_write(svg, "wb") as handle:
            fig.savefig(handle, format="svg")
    finally:
        plt.close(fig)
    return png, svg


def draw(name: str, title: str, make: Callable[[], plt.Figure], out_dir: Path,
         drawn: list[PlotResult], skipped: list[tuple[str, str]], caption: Callable[[], str] | None = None) -> None:
    """Draw one plot, recording it as drawn (with its caption: what it leaves out) or skipped (with the reason)."""
    _theme()
    try:
        fig = make()
    except PlotSkipped as exc:
        log.info("plot %s skipped: %s", name, exc)
        skipped.append((name, str(exc)))
        return
    png, svg = save_figure(fig, out_dir, name)
    drawn.append(PlotResult(name=name, title=title, png=png, svg=svg, caption=caption() if caption else ""))


# --------------------------------------------------------------------------- tokenizer attention

ATTENTION_IMAGES = 4       # real test images in the attention figure
TOKENS_PER_ROW = 16        # token panels per row of an image's block
MAX_TOKEN_PANELS = 320     # images x tokens drawn at most: fewer images first, a token is cut only past this
_SCAN_FOR_CLASSES = 500    # test items looked at to find images of different classes


@dataclass
class AttentionImages:
    """The images an attention figure shows: model inputs, their display form and captions."""

    batch: "torch.Tensor"           # noqa: F821  (B, 3, H, W), normalised as the model saw them
    display: list[np.ndarray]       # (H, W) grey or (H, W, 3) RGB in [0, 1]
    captions: list[str]
    source: str                     # 'digits test images', 'synthetic image (...)'


def synthetic_image(size: tuple[int, int]) -> tuple["torch.Tensor", np.ndarray]:  # noqa: F821
    """A disc and a square (model input (3, H, W), display (H, W)), for runs without a data set."""
    import torch
    import torch.nn.functional as F

    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    disc = ((xx + 0.35) ** 2 + (yy + 0.3) ** 2 < 0.12).float()
    square = ((xx - 0.4).abs() < 0.25).float() * ((yy - 0.35).abs() < 0.25).float()
    gray = F.interpolate((0.15 + 0.7 * disc + 0.5 * square)[None, None], size=size, mode="bilinear",
                         align_corners=False)[0, 0].clamp(0, 1)
    return ((gray - 0.5) / 0.25).expand(3, -1, -1).contiguous(), gray.numpy()


def _display(image: "torch.Tensor") -> np.ndarray:  # noqa: F821
    """A normalised (C, H, W) image for the eye: grey when its channels agree, scaled to [0, 1]."""
    array = image.detach().float().numpy()
    array = array[0] if array.shape[0] == 1 or np.allclose(array, array[:1]) else np.moveaxis(array[:3], 0, -1)
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def _pick_indices(dataset: Any, count: int) -> list[int]:
    """Test items to show: the first of each of `count` different classes where targets are labels
    (so the figure shows variety), else evenly spaced items."""
    n = len(dataset)
    if n == 0:
        return []
    chosen: dict[Any, int] = {}
    for index in range(min(n, _SCAN_FOR_CLASSES)):
        target = dataset[index][1]
        if not isinstance(target, (int, np.integer)):  # a segmentation mask: no class to spread over
            break
        chosen.setdefault(int(target), index)
        if len(chosen) == count:
            return sorted(chosen.values())
    if len(chosen) >= min(count, n):
        return sorted(chosen.values())[:count]
    return sorted({int(i) for i in np.linspace(0, n - 1, min(count, n))})


def attention_images(config: dict[str, Any], size: tuple[int, int], task: str, count: int = ATTENTION_IMAGES) -> AttentionImages:
    """`count` real test images of the cell's training data set (`bench.measure.data.build_dataset` with its
    data-set options, at the input size it trained at); a synthetic image where the cell names no
    data set or the data set cannot be read here (the source says which and why)."""
    import torch

    from bench.measure.data import build_dataset

    train = config.get("train") or {}
    name = train.get("dataset")
    reason = "the cell names no data set" if not name else None
    if name and size[0] != size[1]:
        reason = f"input {size[0]}x{size[1]} is not square"
    if reason is None:
        try:
            dataset = build_dataset(name, "test", root=train.get("data_root"), input_size=size[0], task=task,
                                    **dict(train.get("dataset_args") or {}))
            indices = _pick_indices(dataset, count)
        except Exception as exc:  # noqa: BLE001 - a figure falls back to a synthetic image and says why
            reason = f"data set {name!r} not readable here: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    if reason is not None:
        image, gray = synthetic_image(size)
        return AttentionImages(image[None], [gray], ["synthetic"], f"synthetic image ({reason})")
    items = [dataset[i] for i in indices]
    classes = getattr(dataset, "classes", None)
    captions = []
    for index, (_, target) in zip(indices, items):
        label = ""
        if isinstance(target, (int, np.integer)):
            label = f", {classes[int(target)]}" if classes and int(target) < len(classes) else f", label {int(target)}"
        captions.append(f"test #{index}{label}")
    batch = torch.stack([image for image, _ in items]).float()
    return AttentionImages(batch, [_display(image) for image, _ in items], captions, f"{name} test images")


def load_weights(model: Any, checkpoint: Path | None) -> str:
    """Load a cell's checkpoint.pt into `model` if there is one; say which weights the plot shows.

    Raises PlotSkipped (the report goes on without this plot, saying why) when the file is damaged
    or not weights-only: one bad checkpoint must not cost the whole report.
    """
    from bench.measure.checkpoint import CheckpointError, read_checkpoint_file

    if checkpoint is None or not checkpoint.exists():
        return "untrained weights"
    try:
        state = read_checkpoint_file(checkpoint)  # weights_only=True: never unpickles code
    except CheckpointError as exc:
        log.warning("attention plot: %s", exc)
        raise PlotSkipped(str(exc)) from exc
    for key in ("model", "state_dict", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            epoch = state.get("epoch")
            state = state[key]
            break
    else:
        epoch = None
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:  # not a state dict of this model
        raise PlotSkipped(f"checkpoint {checkpoint} does not fit the model: {str(exc).splitlines()[0]}") from exc
    return "trained weights" + (f" (epoch {epoch})" if epoch is not None else "")


def checkpoint_label(checkpoint: Path | None) -> str:
    """A checkpoint as the title names it: RUN/cells/CELL_ID/checkpoint.pt (no machine-specific prefix)."""
    if checkpoint is None:
        return ""
    parts = Path(checkpoint).parts
    return "/".join(parts[-4:]) if len(parts) >= 4 and parts[-3] == "cells" else str(checkpoint)


def _tokenizer_maps(model: Any, batch: "torch.Tensor") -> list[tuple[str, "torch.Tensor"]]:  # noqa: F821
    """(module name and class, attention (B, L, h, w)) of every tokenizer, in call order
    (`models.token_attention`, with the names caught on the same forward pass)."""
    import models
    from models.tokenizers import Tokenizer

    names = {id(m): f"{n} ({type(m).__name__})" for n, m in model.named_modules() if isinstance(m, Tokenizer)}
    called: list[str] = []
    handles = [m.register_forward_hook(lambda mod, i, o: called.append(names[id(mod)]))
               for m in model.modules() if isinstance(m, Tokenizer)]
    try:
        maps = models.token_attention(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return list(zip(called, maps))


def _which_tokenizer(model: str, count: int) -> tuple[int, str]:
    """Which tokenizer the figure shows: VT-ResNet's last module (the tokens its head reads), VT-FPN's
    finest pyramid level (the most pixels to see attention on)."""
    if facts_of(model).family == "vt_fpn":
        return 0, f"pyramid level 1 of {count} (the finest)"
    return count - 1, f"VT module {count} of {count} (the last)"


def plot_attention(config: dict[str, Any], checkpoint: Path | None, images: int = ATTENTION_IMAGES) -> plt.Figure:
    """One tokenizer's attention over real test images, every token's map upsampled to the input and
    overlaid, for the cell's trained weights when it has a checkpoint (the title says which)."""
    import torch
    import torch.nn.functional as F

    import models

    if not hasattr(models, "token_attention"):
        raise PlotSkipped("models.token_attention is not available in this checkout")
    try:
        # Seeded (the cell's seed) so that untrained weights, where no checkpoint is kept, draw the
        # same figure at every regeneration of a report; fork_rng leaves the caller's RNG alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(config.get("seed") or 0))
            model = models.build_model(config["model"], **(config.get("model_args") or {}))
    except (ValueError, TypeError, KeyError) as exc:  # a record's config that no longer builds
        raise PlotSkipped(f"cannot build {config.get('model')} from its record: {str(exc).splitlines()[0]}") from exc
    weights = load_weights(model, checkpoint)
    weights = (f"{weights} from {checkpoint_label(checkpoint)}" if checkpoint is not None and checkpoint.exists()
               else "UNTRAINED weights (no trained cell with a checkpoint in the run)")
    size = _size_of((config.get("train") or {}).get("input_size") or config.get("input_size")
                    or getattr(model, "default_input_size", 224))
    shown = attention_images(config, size, getattr(model, "task", "cls"), images)
    with torch.no_grad():
        maps = _tokenizer_maps(model.eval(), shown.batch)
    index, where = _which_tokenizer(config["model"], len(maps))
    name, attn = maps[index]
    map_size = tuple(int(v) for v in attn.shape[-2:])
    attn = F.interpolate(attn.float(), size=size, mode="bilinear", align_corners=False).numpy()
    resized = ("" if map_size == tuple(size) else
               f"; each map is {map_size[0]}x{map_size[1]} pixels, upsampled bilinearly to {size[0]}x{size[1]} to overlay")
    options = ", ".join(f"{k}={v}" for k, v in (config.get("model_args") or {}).items()) or "default options"
    title = (f"Tokenizer attention: {config['model']} ({options})\n"
             f"module: {where}, {name}; {weights}\n{shown.source}{resized}")
    return attention_figure(attn, shown.display, shown.captions, title)


def _size_of(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _layout(tokens: int, images: int) -> tuple[int, int, int]:
    """(images drawn, tokens drawn per image, rows per image): every token first, then as many
    images as `MAX_TOKEN_PANELS` allows (at least one)."""
    drawn_tokens = min(tokens, MAX_TOKEN_PANELS)
    drawn_images = max(1, min(images, MAX_TOKEN_PANELS // max(drawn_tokens, 1)))
    return drawn_images, drawn_tokens, math.ceil(drawn_tokens / TOKENS_PER_ROW)


def wrap_to_width(text: str, width_in: float, fontsize: float) -> str:
    """`text` re-wrapped so that no line is wider than a figure `width_in` inches wide.

    A suptitle is not wrapped by matplotlib: a long one (the attention title names model, options,
    module and checkpoint) ran off both edges of the figure. A character of DejaVu Sans averages
    about 0.55 em, so a line holds about width * 72 / (0.55 * fontsize) characters.
    """
    per_line = max(20, int(width_in * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, per_line) for line in text.split("\n"))


def attention_figure(attn: np.ndarray, display: list[np.ndarray], captions: list[str], title: str) -> plt.Figure:
    """A block per image: the image, then one panel per token with its map (scaled to its own max) over it.

    The title ends by saying how many tokens and images are drawn, and how many tokens are left out.
    """
    images, tokens = attn.shape[0], attn.shape[1]
    n_images, n_tokens, rows_per = _layout(tokens, images)
    ncols = 1 + min(n_tokens, TOKENS_PER_ROW)
    nrows = n_images * rows_per
    left_out = tokens - n_tokens
    count = (f"all {tokens} tokens shown" if not left_out else
             f"first {n_tokens} of {tokens} tokens shown ({left_out} left out)")
    width = 1.05 * ncols + 1.2
    heading = wrap_to_width(f"{title}; {count} for each of {n_images} image(s)", width, fontsize=9)
    title_in = 0.16 * (heading.count("\n") + 1) + 0.3  # inches the wrapped title takes
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 1.12 * nrows + 0.6 + title_in), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    cmap = "gray" if display[0].ndim == 2 else None
    last = None
    for b in range(n_images):
        top = b * rows_per
        axes[top][0].imshow(display[b], cmap=cmap, vmin=0, vmax=1)
        axes[top][0].set_title(captions[b], fontsize=6)
        for t in range(n_tokens):
            ax = axes[top + t // TOKENS_PER_ROW][1 + t % TOKENS_PER_ROW]
            peak = float(attn[b, t].max())
            ax.imshow(display[b], cmap=cmap, vmin=0, vmax=1)
            last = ax.imshow(attn[b, t] / peak if peak > 0 else attn[b, t], cmap="magma", alpha=0.6, vmin=0, vmax=1)
            ax.set_title(f"token {t + 1}", fontsize=6)
    fig.suptitle(heading, fontsize=9)
    fig.subplots_adjust(left=0.01, right=1 - 1.2 / fig.get_figwidth(), top=1 - (title_in + 0.15) / fig.get_figheight(),
                        bottom=0.02, wspace=0.08, hspace=0.35)
    if last is not None:
        cax = fig.add_axes([1 - 1.0 / fig.get_figwidth(), 0.2, 0.15 / fig.get_figwidth(), 0.5])
        bar = fig.colorbar(last, cax=cax)
        bar.set_label("attention / the token's max\n(softmax over pixels)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return fig


# --------------------------------------------------------------------------- predicted masks

MASK_SAMPLES_MAX_BYTES = 64 * 2 ** 20   # the file and its arrays unpacked: a few scenes are far below
MAX_MASK_COLUMNS = 6                     # prediction columns; more configurations are named in the caption
MASK_IGNORE_COLOR = "#FFFFFF"            # pixels with the ignore index (no class): white, never a class colour


@dataclass
class MaskSamples:
    """The arrays of one cell's mask_samples.npz (`bench.measure.train`: the first N test scenes)."""

    image: np.ndarray                  # (N, H, W, 3) uint8, stretched per image for display
    target: np.ndarray                 # (N, H, W) class indices, the ignore index kept
    pred: np.ndarray                   # (N, H, W) the model's argmax
    index: np.ndarray                  # (N,) the test items shown
    class_names: list[str] | None
    num_classes: int                   # classes 0..num_classes-1; any other mask value is drawn as ignored


@dataclass
class MaskColumn:
    """One prediction column of the figure: one cell (the lowest seed of its configuration)."""

    label: str
    seed: Any
    miou: float | None
    cell_id: str
    samples: MaskSamples


def read_mask_samples(path: Path, inside: Path) -> MaskSamples:
    """Read one mask_samples.npz as untrusted input (numpy only, no pickles); ValueError/OSError if unusable."""
    import io
    import zipfile

    from bench.core.util import read_untrusted_bytes

    data = read_untrusted_bytes(path, MASK_SAMPLES_MAX_BYTES, inside=inside)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            # A small file may unpack to a huge one: the sizes the archive declares are checked first.
            if sum(info.file_size for info in npz.zip.infolist()) > MASK_SAMPLES_MAX_BYTES:
                raise ValueError(f"{path}: arrays above {MASK_SAMPLES_MAX_BYTES} bytes unpacked")
            arrays = {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise ValueError(f"{path}: not a readable .npz ({exc})") from exc
    return _checked_samples(arrays, path)


def _checked_samples(arrays: dict[str, np.ndarray], path: Path) -> MaskSamples:
    image, target, pred = (arrays.get(k) for k in ("image", "target", "pred"))
    if image is None or target is None or pred is None:
        raise ValueError(f"{path}: needs the arrays image, target and pred (has {', '.join(arrays)})")
    if image.dtype != np.uint8 or image.ndim != 4 or image.shape[-1] != 3 \
            or target.shape != image.shape[:3] or pred.shape != target.shape \
            or not (np.issubdtype(target.dtype, np.integer) and np.issubdtype(pred.dtype, np.integer)):
        raise ValueError(f"{path}: image must be (N, H, W, 3) uint8 and target, pred (N, H, W) integers "
                         f"(got {image.shape} {image.dtype}, {target.shape} {target.dtype}, {pred.shape} {pred.dtype})")
    index = arrays.get("index", np.arange(len(target)))
    names = arrays.get("class_names")
    names = [str(n) for n in names.tolist()] if names is not None and names.dtype.kind == "U" else None
    return MaskSamples(image=image, target=target.astype(np.int64), pred=pred.astype(np.int64),
                       index=np.asarray(index).reshape(-1)[:len(target)], class_names=names,
                       num_classes=_num_classes(arrays, names, pred))


def _num_classes(arrays: dict[str, np.ndarray], names: list[str] | None, pred: np.ndarray) -> int:
    """The file's `num_classes`, else as many as it names, else the highest prediction + 1 (an argmax
    over the classes never holds the ignore index; a mask may)."""
    stored = arrays.get("num_classes")
    if stored is not None and stored.size == 1 and np.issubdtype(stored.dtype, np.integer) and 0 < int(stored) <= 1024:
        return int(stored)
    return len(names) if names else 1 + int(pred.max(initial=0))


def _train_seed(record: dict[str, Any]) -> int:
    """The seed the cell trained with: `train.seed`, else the cell's `seed` (as the runner resolves it)."""
    config = record.get("config") or {}
    seed = (config.get("train") or {}).get("seed", config.get("seed", 0))
    return int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else 0


def _samples_path(record: dict[str, Any], run_dirs: dict[str, Path]) -> tuple[Path, Path] | None:
    """RUN/cells/ID/NAME of a record's `mask_samples` (and the folder it must stay in), or None."""
    from bench.core.records import check_cell_id, check_path_name

    name = (record.get("metrics") or {}).get("mask_samples")
    run = run_dirs.get(str(record.get("run")))
    if not isinstance(name, str) or run is None:
        return None
    cell_dir = run / "cells" / check_cell_id(record.get("cell_id"))
    return cell_dir / check_path_name(name, "mask samples file"), cell_dir


def _column_order(group: Any) -> tuple[bool, str]:
    """Baselines before VT models (FPN before VT-FPN), then by model name: a VT model is one whose
    facts name a baseline."""
    return (bool(getattr(group.facts, "baseline", None)), group.model)


def mask_sample_columns(data: Any) -> tuple[list[MaskColumn], list[str]]:
    """One column per configuration whose cells wrote mask samples, each from its lowest seed.

    Returns (columns, notes): a file that cannot be read, or shows other scenes than the first
    column's, is left out with a note; so are configurations past `MAX_MASK_COLUMNS`.
    """
    from bench.core.errors import UsageError

    run_dirs = {d.name: d for d in data.run_dirs}
    columns: list[MaskColumn] = []
    notes: list[str] = []
    for group in sorted(data.groups, key=_column_order):
        candidates = [r for r in group.records if isinstance((r.get("metrics") or {}).get("mask_samples"), str)]
        if not candidates:
            continue
        record = min(candidates, key=_train_seed)
        try:
            found = _samples_path(record, run_dirs)
            if found is None:
                continue
            samples = read_mask_samples(*found)
        except (OSError, ValueError, UsageError) as exc:
            notes.append(f"{short_name(group.model)} (cell {record.get('cell_id')}): mask samples not read: {exc}")
            continue
        miou = (record.get("metrics") or {}).get("miou")
        columns.append(MaskColumn(label=short_name(group.model), seed=_train_seed(record), cell_id=record["cell_id"],
                                  miou=float(miou) if isinstance(miou, (int, float)) else None, samples=samples))
    return _same_scenes(_labelled(columns, data), notes)


def _labelled(columns: list[MaskColumn], data: Any) -> list[MaskColumn]:
    """Add the options that tell columns of the same model apart ('FPN-R50 width=0.5')."""
    from bench.analysis.load import flatten_config

    flat = {c.cell_id: flatten_config(data.configs.get(c.cell_id) or {})[0] for c in columns}
    keys = sorted({k for row in flat.values() for k in row} - {"model", "seed", "train.seed", "measure"})
    for column in columns:
        twins = [c for c in columns if c.label == column.label]
        varying = [k for k in keys if len({str(flat[c.cell_id].get(k)) for c in twins}) > 1]
        extra = " ".join(f"{k.split('.')[-1]}={flat[column.cell_id].get(k)}" for k in varying)
        column.label = f"{column.label} {extra}".strip()
    return columns


def _same_scenes(columns: list[MaskColumn], notes: list[str]) -> tuple[list[MaskColumn], list[str]]:
    """Keep the columns that show the first column's scenes (same masks), at most MAX_MASK_COLUMNS."""
    if not columns:
        return [], notes
    first = columns[0].samples
    kept = []
    for column in columns:
        same = column.samples.target.shape == first.target.shape and np.array_equal(column.samples.target, first.target)
        if not same:
            notes.append(f"{column.label}: its samples show other scenes than {columns[0].label}'s; left out")
        elif len(kept) == MAX_MASK_COLUMNS:
            notes.append(f"{column.label}: left out, the figure shows {MAX_MASK_COLUMNS} models at most")
        else:
            kept.append(column)
    return kept, notes


def mask_palette(num_classes: int) -> list[str]:
    """Fixed class colours: background (class 0) black, then tab10 (tab20 past ten classes), so a class
    keeps its colour in every run's figure."""
    from matplotlib.colors import to_hex

    cmap = plt.get_cmap("tab10" if num_classes - 1 <= 10 else "tab20")
    return ["#000000"] + [to_hex(cmap(i % cmap.N)) for i in range(num_classes - 1)]


def _mask_rgb(mask: np.ndarray, palette: list[str]) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) colours; a value without a class (the ignore index) white."""
    table = np.array([to_rgb(c) for c in palette])
    rgb = np.ones((*mask.shape, 3))
    known = (mask >= 0) & (mask < len(palette))
    rgb[known] = table[mask[known]]
    return rgb


def plot_mask_samples(columns: list[MaskColumn]) -> plt.Figure:
    """Rows: the scenes; columns: input, ground truth, one prediction per configuration (title: model, mIoU)."""
    if not columns:
        raise PlotSkipped("no cell wrote mask samples")
    first = columns[0].samples
    rows, ncols = len(first.target), 2 + len(columns)
    palette = mask_palette(max(c.samples.num_classes for c in columns))
    handles = _class_handles(palette, first)
    legend_in = 0.3 * math.ceil(len(handles) / 6) + 0.2
    height = 2.1 * rows + 0.6 + legend_in
    fig, axes = plt.subplots(rows, ncols, figsize=(2.1 * ncols, height), squeeze=False)
    titles = ["input", "ground truth"] + [_column_title(c) for c in columns]
    for r in range(rows):
        panels = [first.image[r], _mask_rgb(first.target[r], palette)]
        panels += [_mask_rgb(c.samples.pred[r], palette) for c in columns]
        for c, (ax, panel) in enumerate(zip(axes[r], panels)):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
        axes[r][0].set_ylabel(f"test scene {int(first.index[r])}", fontsize=9)
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(mask_samples_title(columns), fontsize=11)
    fig.tight_layout(rect=(0, legend_in / height, 1, 1 - 0.4 / height))
    return fig


def _class_handles(palette: list[str], samples: MaskSamples) -> list[Any]:
    """Legend entries: every class in its colour (names where the data set gives them), and the ignored pixels."""
    from matplotlib.patches import Patch

    names = samples.class_names or [f"class {i}" for i in range(len(palette))]
    handles = [Patch(facecolor=colour, edgecolor="0.5", label=name) for colour, name in zip(palette, names)]
    if ((samples.target < 0) | (samples.target >= len(palette))).any():
        handles.append(Patch(facecolor=MASK_IGNORE_COLOR, edgecolor="0.5", label="ignored (no class)"))
    return handles


def _column_title(column: MaskColumn) -> str:
    miou = f"mIoU {column.miou:.1f} %" if column.miou is not None else "mIoU not recorded"
    return f"{column.label}\n{miou}"


def _seeds_text(columns: list[MaskColumn]) -> str:
    seeds = list(dict.fromkeys(c.seed for c in columns))
    return f"seed {seeds[0]}" if len(seeds) == 1 else "seeds " + ", ".join(f"{c.label} {c.seed}" for c in columns)


def mask_samples_title(columns: list[MaskColumn]) -> str:
    """'Predicted masks on the first 4 test scenes, seed 0'."""
    if not columns:
        return "Predicted masks"
    return f"Predicted masks on the first {len(columns[0].samples.target)} test scenes, {_seeds_text(columns)}"


def mask_samples_caption(columns: list[MaskColumn], notes: list[str]) -> str:
    """Which scenes and seed the figure shows, what each mIoU is, and what it leaves out."""
    if not columns:
        return ""
    index = ", ".join(str(int(i)) for i in columns[0].samples.index)
    text = (f"Scenes: test items {index}, the first {len(columns[0].samples.index)} of the test set, the same for "
            f"every model. Each prediction is one cell's final weights ({_seeds_text(columns)}, the lowest seed "
            f"that wrote samples); its mIoU is that cell's on the whole test set, not the mean over seeds "
            f"(the Accuracy table has that). Inputs are stretched per image for display.")
    return " ".join([text, *notes])
