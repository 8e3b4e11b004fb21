"""The fidelity study as a section of `vtbench report`: the paper's complexity numbers beside the records.

The records come from the one runner (`vtbench launch experiments/paper_complexity.yaml`, committed as
results/paper_complexity/): each cell's `gmacs`, `params_m`, `gmacs_<stage>`, `params_m_<stage>`,
`gmacs_traced` and the counters' agreement. This module reads nothing else but the paper's numbers
(`bench.analysis.reference`), counts nothing and imports no torch, so that `vtbench report` shows
the fidelity table from the records alone and `vtbench fidelity` (bench/studies/fidelity.py, which
launches the grid and then writes fidelity.md through bench/analysis/fidelity_text.py from these
frames) shares one implementation with it.

The readings say which cell stands for what: `main_readings()`, the twelve registered models at their
defaults (each held to its paper table), and `alternative_readings()`, the other readings of the
paper's open choices and the ablations of Tables 3-7 (the grid's `include` entries). A reading is matched to the record of the same model,
model options (other than `num_classes`), input size and number of classes.

Tolerances (model zoo issue): ResNets within 0.5% of Table 8's MACs; VT-ResNets within 3% (MACs)
and 5% (params) of Table 8, or of Table 2 for VT-R34 (`VT_TABLE`); the FPN module 55.1 G (800x1216)
and 12.9 G (473x473) for FPN, within 15% of 8.5 G / 2.0 G for VT-FPN. The VT stage itself (issue 11):
its MACs and params plus the head's within 15% of what Table 8 (or 2) leaves after the exact trunk,
and ResNet-stage-5 / VT-stage ratios within 15% of Table 1's, the VT-FPN module's tolerance.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import pandas as pd

from bench.analysis.reference import paper_value
from bench.analysis.section import StudySection
from bench.core.tables import markdown_table
from bench.core.util import image_hw

# The paper's models, by family (Tables 2 and 8-10): a fact about the paper, each a registered model.
# Everything else about them (baseline, stages) comes from their records' `model` block.
PAPER_MODELS = {"resnet": ("resnet18", "resnet34", "resnet50", "resnet101"),
                "vt_resnet": ("vt_resnet18", "vt_resnet34", "vt_resnet50", "vt_resnet101"),
                "fpn": ("fpn_r50", "fpn_r101"), "vt_fpn": ("vt_fpn_r50", "vt_fpn_r101")}
FAMILY_OF = {model: family for family, models in PAPER_MODELS.items() for model in models}
CLS_SIZE = (224, 224)
CLS_CLASSES = 1000
SEG_SIZES = {"T9": ((800, 1216), 171), "T10": ((473, 473), 20)}  # COCO-stuff 171 classes, LIP 20
# A fact about the paper, not the models: the table each VT-ResNet's default is held to (the paper's
# Tables 2 and 8 disagree; PAPER.md).
VT_TABLE = {"vt_resnet18": "T8", "vt_resnet34": "T2", "vt_resnet50": "T8", "vt_resnet101": "T8"}
TOL_RESNET_GMACS = 0.005
TOL_VT_GMACS, TOL_VT_PARAMS = 0.03, 0.05
TOL_FPN_MODULE = {"fpn": 0.005, "vt_fpn": 0.15}
FPN_MODULE_EXACT = {(800, 1216): 55.1, (473, 473): 12.9}  # torchvision FPN, counted with fvcore
# The VT stage (+ head) against the budget the paper's totals leave it, and Table 1's stage ratios:
# the only stage-level tolerance the model-zoo issue set is the VT-FPN module's 15%; the same here.
TOL_VT_STAGE = 0.15
# The files the sections write beside report.md (and `vtbench fidelity` into its --out).
MAIN_CSV, ALTERNATIVES_CSV, BUDGET_CSV = "fidelity.csv", "fidelity_alternatives.csv", "fidelity_budget.csv"


@dataclass(frozen=True)
class Reading:
    """One configuration of the study: a model, its overrides, and the paper row it is set beside."""

    model: str
    overrides: dict = field(default_factory=dict)
    label: str = "default"
    table: str = ""  # the paper table whose row it is compared with ("" for none)
    variant: str = ""  # the paper row's variant label (T3-T7), if any
    why: str = ""

    @property
    def input_size(self) -> tuple[int, int]:
        return SEG_SIZES[self.table][0] if self.table in SEG_SIZES else CLS_SIZE

    @property
    def num_classes(self) -> int:
        return SEG_SIZES[self.table][1] if self.table in SEG_SIZES else CLS_CLASSES

    @property
    def is_seg(self) -> bool:
        return self.table in SEG_SIZES

    def key(self) -> tuple:
        return _cell_key(self.model, self.overrides, self.input_size, self.num_classes)


def main_readings() -> list[Reading]:
    """The twelve registered models with their default options, each against its paper table."""
    readings = [Reading(m, table="T8") for m in PAPER_MODELS["resnet"]]
    readings += [Reading(m, table=VT_TABLE[m]) for m in PAPER_MODELS["vt_resnet"]]
    readings += [Reading(m, table=t) for t in SEG_SIZES for m in (*PAPER_MODELS["fpn"], *PAPER_MODELS["vt_fpn"])]
    return readings


def alternative_readings() -> list[Reading]:
    """Other readings of the open choices, and the paper's ablations (Tables 3-7)."""
    out = []
    for m in ("vt_resnet18", "vt_resnet34"):
        out += [
            Reading(m, {}, "default vs the other table", "T8" if m == "vt_resnet34" else "T2",
                    why="Tables 2 and 8 disagree"),
            Reading(m, {"qk_channels": 1024}, "K, Q full C_T x C_T", VT_TABLE[m], why="ICCV K, Q in R^{C x C}"),
            Reading(m, {"last_projector": True}, "projector in the last module too", VT_TABLE[m],
                    why="last projector's output is never read"),
            Reading(m, {"transformer": "mhsa"}, "appendix transformer (mhsa)", VT_TABLE[m],
                    why="grouped k/q/v, 16 heads, one FF conv"),
            Reading(m, {"token_channels": 256}, "C_T = C = 256", VT_TABLE[m], why="ICCV equations without C_T"),
            Reading(m, {"tokenizer": "pooling", "recurrent": False}, "tokenizer=pooling", "T3", "tokenizer=pooling"),
            Reading(m, {"tokenizer": "clustering"}, "tokenizer=clustering", "T3", "tokenizer=clustering"),
            Reading(m, {"recurrent": False}, "recurrent=false", "T4", "recurrent=false"),
            Reading(m, {"transformer": "none"}, "token_op=none", "T5", "token_op=none"),
            Reading(m, {"num_tokens": 32}, "num_tokens=32", "T6", "num_tokens=32"),
            Reading(m, {"num_tokens": 64}, "num_tokens=64", "T6", "num_tokens=64"),
            Reading(m, {"projector": False}, "projector=false", "T7", "projector=false"),
        ]
    for m in ("vt_resnet50", "vt_resnet101"):
        out += [
            Reading(m, {"transformer": "mhsa", "proj_channels": 512, "proj_groups": 8},
                    "appendix reading (mhsa, projector d=512 in 8 groups)", "T8",
                    why="grouped k/q/v, 16 heads, one FF conv: meets MACs, not params"),
            Reading(m, {"proj_channels": None, "proj_groups": 1}, "ICCV projector (W_Q, W_K in R^{C x C})", "T8",
                    why="no grouping anywhere"),
            Reading(m, {"qk_channels": 1024}, "K, Q full C_T x C_T", "T8"),
            Reading(m, {"refresh": "half"}, "recurrent refreshes half the tokens", "T8", why="appendix transcription"),
            Reading(m, {"head_hidden": 2048}, "head with a 2048-wide hidden layer", "T8", why="not in the paper"),
            Reading(m, {"last_projector": True}, "projector in the last module too", "T8"),
        ]
    out += [
        Reading("vt_fpn_r50", {"transformer": "mhsa"}, "appendix transformer (mhsa)", "T9"),
        Reading("vt_fpn_r50", {"proj_groups": 1}, "ungrouped W_Q (ICCV)", "T9"),
    ]
    return out


def study_cells() -> list[dict[str, Any]]:
    """Every distinct cell the study needs (model, model_args, input_size), in reading order."""
    seen, cells = set(), []
    for r in (*main_readings(), *alternative_readings()):
        if r.key() not in seen:
            seen.add(r.key())
            cells.append({"model": r.model, "model_args": {"num_classes": r.num_classes, **r.overrides},
                          "input_size": list(r.input_size)})
    return cells


# --------------------------------------------------------------------------- records -> rows

def _cell_key(model: str, overrides: Mapping[str, Any], input_size: Any, num_classes: Any) -> tuple:
    return model, json.dumps(dict(overrides), sort_keys=True), image_hw(input_size), int(num_classes)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def records_by_key(data: Any) -> dict[tuple, dict[str, Any]]:
    """The complexity metrics of each ok record of a RunData (`data.records`, as read), by reading key,
    with the record's `cell_id`, `finished_at`, scalar `env.*` and its model's facts (`model_facts`: the
    record's own block, as the registry gave it when the cell ran) beside them. A record whose cell
    does not name its number of classes matches no reading (every reading names one)."""
    out: dict[tuple, dict[str, Any]] = {}
    for record in getattr(data, "records", None) or []:
        config, metrics = record.get("config") or {}, record.get("metrics") or {}
        if "complexity" not in (config.get("measure") or []) or _missing(metrics.get("gmacs")):
            continue
        model = config.get("model")
        args = dict(config.get("model_args") or {})
        classes = args.pop("num_classes", None)
        if classes is None:
            continue
        try:
            key = _cell_key(model, args, config.get("input_size"), classes)
        except (TypeError, ValueError):
            continue
        env = {f"env.{k}": v for k, v in (record.get("env") or {}).items() if not isinstance(v, (dict, list))}
        out.setdefault(key, {**metrics, **env, "cell_id": record.get("cell_id"),
                             "finished_at": record.get("finished_at"),
                             "model_facts": {**(record.get("model") or {}), "name": model}})
    return out


def reading_row(r: Reading, metrics: Mapping[str, Any], stages: list[str]) -> dict[str, Any]:
    """One reading's record set beside the paper's numbers, with its verdict."""
    size = r.input_size
    row = {"model": r.model, "reading": r.label, "overrides": _fmt(r.overrides), "table": r.table,
           "input": f"{size[0]}x{size[1]}", "why": r.why}
    for metric in ("gmacs", "params_m", "gmacs_fpn"):
        paper = paper_value(r.model, metric, r.table, size, r.variant) if r.table else None
        measured = metrics.get(metric)
        row[f"paper_{metric}"] = paper
        row[metric] = measured
        row[f"delta_pct_{metric}"] = None if paper is None or measured is None else 100 * (measured - paper) / paper
    for key in ("gmacs_traced", "counter_gap_pct", "counter_agree", "gmacs_fvcore"):
        row[key] = metrics.get(key)
    for stage in stages:
        row[f"gmacs_{stage}"] = metrics.get(f"gmacs_{stage}")
        row[f"params_m_{stage}"] = metrics.get(f"params_m_{stage}")
    row["unsupported_ops"] = _fmt(_as_dict(metrics.get("unsupported_ops")))
    row["verdict"] = verdict(row)
    row["cell_id"] = metrics.get("cell_id")
    return row


def _as_dict(value: Any) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {"?": value} if value else {}
    return dict(value) if isinstance(value, Mapping) else {}


def _fmt(d: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items()) if d else ""


def verdict(row: Mapping[str, Any]) -> str:
    """'ok' or what misses, against the tolerances of the model zoo issue."""
    family, misses = FAMILY_OF.get(row["model"]), []
    d_gmacs, d_params = row.get("delta_pct_gmacs"), row.get("delta_pct_params_m")
    if family == "resnet" and d_gmacs is not None and abs(d_gmacs) > 100 * TOL_RESNET_GMACS:
        misses.append(f"MACs {d_gmacs:+.1f}%")
    if family == "vt_resnet":
        if d_gmacs is not None and abs(d_gmacs) > 100 * TOL_VT_GMACS:
            misses.append(f"MACs {d_gmacs:+.1f}%")
        if d_params is not None and abs(d_params) > 100 * TOL_VT_PARAMS:
            misses.append(f"params {d_params:+.1f}%")
    if family in TOL_FPN_MODULE and row.get("delta_pct_gmacs_fpn") is not None:
        tol = TOL_FPN_MODULE[family]
        exact = FPN_MODULE_EXACT.get(tuple(int(v) for v in row["input"].split("x")))
        target = exact if family == "fpn" and exact else row["paper_gmacs_fpn"]
        if abs(row["gmacs_fpn"] - target) / target > tol:
            misses.append(f"FPN module {row['delta_pct_gmacs_fpn']:+.1f}%")
    return "ok" if not misses else "misses: " + ", ".join(misses)


def budget_rows(main: pd.DataFrame, facts: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """What Table 8 (and 2) leaves the VT stage + head, from the measured ResNet trunks (stem..stage4);
    `facts`: each model's facts as its record holds them (baseline, stages, replaced)."""
    rows = []
    for model in PAPER_MODELS["vt_resnet"]:
        base = facts.get(facts.get(model, {}).get("baseline"), {})
        res, vt = main[main.model == base.get("name")], main[main.model == model]
        if res.empty or vt.empty or base.get("replaced") not in (base.get("stages") or ()):
            continue
        res, vt = res.iloc[0], vt.iloc[0]
        stages = list(base["stages"])
        trunk = stages[:stages.index(base["replaced"])]  # what the VT model keeps: stem..stage4
        trunk_g = sum(res[f"gmacs_{s}"] for s in trunk)
        trunk_p = sum(res[f"params_m_{s}"] for s in trunk)
        for table in ("T8", "T2"):
            g = paper_value(model, "gmacs", table, CLS_SIZE)
            p = paper_value(model, "params_m", table, CLS_SIZE)
            if g is None:
                continue
            budget_g, budget_p = (g - trunk_g) * 1e3, p - trunk_p
            rows.append({"model": model, "table": table, "trunk_gmacs": trunk_g, "trunk_params_m": trunk_p,
                         "budget_mmacs": budget_g, "budget_params_m": budget_p, "macs_per_param": budget_g / budget_p,
                         "measured_mmacs": (vt["gmacs_vt"] + vt["gmacs_head"]) * 1e3,
                         "measured_params_m": vt["params_m_vt"] + vt["params_m_head"],
                         "resnet_stage5_over_vt_gmacs": res["gmacs_stage5"] / vt["gmacs_vt"],
                         "resnet_stage5_over_vt_params": res["params_m_stage5"] / vt["params_m_vt"],
                         "paper_t1_gmacs_x": paper_value(model, "stage_gmacs_reduction_x", "T1", CLS_SIZE),
                         "paper_t1_params_x": paper_value(model, "stage_params_reduction_x", "T1", CLS_SIZE)})
            rows[-1].update(stage_verdicts(rows[-1]))
    return pd.DataFrame(rows)


def stage_verdicts(row: Mapping[str, Any]) -> dict[str, Any]:
    """Deltas and verdicts of the VT stage: against the table's budget, and against Table 1's ratios."""
    out, budget_misses, t1_misses = {}, [], []
    checks = (("budget", "MACs", row["measured_mmacs"], row["budget_mmacs"], budget_misses),
              ("budget", "params", row["measured_params_m"], row["budget_params_m"], budget_misses),
              ("t1", "MACs", row["resnet_stage5_over_vt_gmacs"], row["paper_t1_gmacs_x"], t1_misses),
              ("t1", "params", row["resnet_stage5_over_vt_params"], row["paper_t1_params_x"], t1_misses))
    for kind, what, measured, paper, misses in checks:
        delta = None if paper is None else 100 * (measured - paper) / paper
        out[f"{kind}_delta_pct_{what.lower()}"] = delta
        if delta is not None and abs(delta) > 100 * TOL_VT_STAGE:
            misses.append(f"{'stage ' if kind == 'budget' else 'ratio '}{what} {delta:+.0f}%")
    out["budget_verdict"] = "ok" if not budget_misses else "misses: " + ", ".join(budget_misses)
    out["t1_verdict"] = "ok" if not t1_misses else "misses: " + ", ".join(t1_misses)
    return out


@dataclass
class Fidelity:
    """The study's frames: the default models, the alternatives, the VT-stage budget; and where measured."""

    main: pd.DataFrame
    alts: pd.DataFrame
    budget: pd.DataFrame
    env: str
    missing: list[str] = field(default_factory=list)  # readings without a record: "model (options, input)"


def fidelity_frames(data: Any, skip_seg: bool = False) -> Fidelity | None:
    """The study from a RunData's records; None unless it holds the eight classifiers at their defaults."""
    found = records_by_key(data)
    cls_main = [r for r in main_readings() if not r.is_seg]
    if not all(r.key() in found for r in cls_main):
        return None
    readings = [r for r in (*main_readings(), *alternative_readings()) if not (skip_seg and r.is_seg)]
    stages = stage_order(found.values())
    missing: list[str] = []
    seen: set[tuple] = set()
    for r in readings:
        if r.key() not in found and r.key() not in seen:
            seen.add(r.key())
            missing.append(f"{r.model} ({_fmt(r.overrides) or 'defaults'}, {r.input_size[0]}x{r.input_size[1]})")
    main = pd.DataFrame([reading_row(r, found[r.key()], stages) for r in main_readings()
                         if r.key() in found and not (skip_seg and r.is_seg)])
    alts = pd.DataFrame([reading_row(r, found[r.key()], stages) for r in alternative_readings()
                         if r.key() in found and not (skip_seg and r.is_seg)])
    used = list({id(found[r.key()]): found[r.key()] for r in readings if r.key() in found}.values())
    facts = {m["model_facts"]["name"]: m["model_facts"] for m in found.values()}
    return Fidelity(main=main, alts=alts, budget=budget_rows(main, facts), env=environment(used), missing=missing)


def stage_order(metrics: Any) -> list[str]:
    """The stages of the records' models (their `model.stages`) merged into one order that keeps each
    model's own, a stage not seen yet placed before the first of its model's later stages (`vt` and
    `fpn` before `head`), the families in the registry's order, as its `stage_order` merges them."""
    order: list[str] = []
    family_rank = {family: i for i, family in enumerate(PAPER_MODELS)}  # the registry's order of families
    ranked = sorted(metrics, key=lambda m: family_rank.get(FAMILY_OF.get(m["model_facts"]["name"]), len(family_rank)))
    for stages in (tuple(m["model_facts"].get("stages") or ()) for m in ranked):
        for i, stage in enumerate(stages):
            if stage not in order:
                later = [s for s in stages[i + 1:] if s in order]
                order.insert(order.index(later[0]) if later else len(order), stage)
    return order


def environment(records: list[Mapping[str, Any]]) -> str:
    """Where and when the records were measured: dates, hosts, CPUs, threads, software, commits."""
    def values(key: str) -> str:
        seen = [str(r.get(key)) for r in records if not _missing(r.get(key))]
        return ", ".join(dict.fromkeys(seen)) or "unknown"

    dates = sorted(str(r["finished_at"])[:16].replace("T", " ") for r in records if r.get("finished_at"))
    when = f"{dates[0]} to {dates[-1]} UTC" if dates else "at an unknown time"
    return (f"{when} ({len(records)} records); host {values('env.host')} ({values('env.cpu')}, "
            f"{values('env.threads')} threads); python {values('env.python')}, torch {values('env.torch')}; "
            f"git {values('env.git_commit')}")


# --------------------------------------------------------------------------- presentation

def _num(v: Any, fmt: str = "{:.3f}") -> str:
    return "" if v is None or (isinstance(v, float) and pd.isna(v)) else fmt.format(v)


def _md_table(df: pd.DataFrame) -> str:
    """A DataFrame of strings as a markdown table (`bench.core.tables`: numeric columns right-aligned)."""
    return markdown_table(df, empty="(none)").rstrip("\n")


def main_table(main: pd.DataFrame) -> pd.DataFrame:
    """The default models, paper vs measured, as shown."""
    rows = []
    for _, r in main.iterrows():
        rows.append({
            "model": r.model, "table": r.table, "input": r.input,
            "paper GMACs": _num(r.paper_gmacs), "measured GMACs": _num(r.gmacs), "Δ MACs": _num(r.delta_pct_gmacs, "{:+.2f}%"),
            "paper params (M)": _num(r.paper_params_m, "{:.1f}"), "measured params (M)": _num(r.params_m, "{:.2f}"),
            "Δ params": _num(r.delta_pct_params_m, "{:+.1f}%"),
            "paper FPN module": _num(r.paper_gmacs_fpn, "{:.1f}"), "measured FPN module": _num(r.gmacs_fpn, "{:.2f}"),
            "traced GMACs": _num(r.gmacs_traced), "traced vs executed": _num(r.counter_gap_pct, "{:+.2f}%"),
            "fvcore total": _num(r.gmacs_fvcore), "verdict": r.verdict,
        })
    return pd.DataFrame(rows)


def stage_table(main: pd.DataFrame) -> pd.DataFrame:
    """G MACs / M params of every stage of the default models."""
    stages = [c[len("params_m_"):] for c in main.columns if c.startswith("params_m_")]  # in stage order (reading_row)
    rows = []
    for _, r in main.iterrows():
        row = {"model": r.model, "input": r.input}
        for stage in stages:
            g, p = r.get(f"gmacs_{stage}"), r.get(f"params_m_{stage}")
            row[stage] = "" if g is None or pd.isna(g) else f"{g:.3f} / {p:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def alt_table(alts: pd.DataFrame) -> pd.DataFrame:
    """The other readings and the ablations, each against its paper row."""
    rows = []
    for _, r in alts.iterrows():
        stage = r.get("gmacs_vt")
        rows.append({
            "model": r.model, "reading": r.reading, "options": r.overrides, "vs": r.table,
            "paper GMACs": _num(r.paper_gmacs), "GMACs": _num(r.gmacs), "Δ MACs": _num(r.delta_pct_gmacs, "{:+.1f}%"),
            "paper params": _num(r.paper_params_m, "{:.1f}"), "params": _num(r.params_m, "{:.2f}"),
            "Δ params": _num(r.delta_pct_params_m, "{:+.1f}%"),
            "stage GMACs (vt or fpn)": _num(r.gmacs_fpn if stage is None or pd.isna(stage) else stage),
            "traced GMACs": _num(r.gmacs_traced), "traced vs executed": _num(r.counter_gap_pct, "{:+.2f}%"),
            "verdict": r.verdict, "note": r.why,
        })
    return pd.DataFrame(rows)


def budget_table(budget: pd.DataFrame) -> pd.DataFrame:
    """The VT stage + head against the budget and Table 1, as shown."""
    return pd.DataFrame([
        {"model": r.model, "table": r.table, "trunk GMACs / M": f"{r.trunk_gmacs:.4f} / {r.trunk_params_m:.2f}",
         "left for VT + head (M MACs / M params)": f"{r.budget_mmacs:.0f} / {r.budget_params_m:.2f}",
         "MACs per param": f"{r.macs_per_param:.1f}",
         "measured VT + head": f"{r.measured_mmacs:.0f} / {r.measured_params_m:.2f}",
         "Δ (MACs, params)": f"{r.budget_delta_pct_macs:+.0f}%, {r.budget_delta_pct_params:+.0f}%",
         "budget verdict": r.budget_verdict,
         "ResNet stage 5 / VT stage (MACs, params)": f"{r.resnet_stage5_over_vt_gmacs:.2f}x, "
                                                     f"{r.resnet_stage5_over_vt_params:.2f}x",
         "Table 1 (MACs, params)": f"{_num(r.paper_t1_gmacs_x, '{:.1f}')}x, {_num(r.paper_t1_params_x, '{:.2f}')}x",
         "Δ vs Table 1": f"{_num(r.t1_delta_pct_macs, '{:+.0f}%')}, {_num(r.t1_delta_pct_params, '{:+.0f}%')}",
         "Table 1 verdict": r.t1_verdict}
        for r in budget.itertuples()])


def counting_summary(main: pd.DataFrame, alts: pd.DataFrame) -> str:
    """How many rows the traced and executed counts agree on, the rows where not, unsupported ops."""
    rows = pd.concat([main, alts], ignore_index=True)
    known = rows[rows.counter_agree.notna()] if "counter_agree" in rows else rows.iloc[:0]
    agree = known.counter_agree.astype(bool)
    equal = known.gmacs == known.gmacs_traced

    def count(df: pd.DataFrame) -> str:
        sub = df[df.counter_agree.notna()] if "counter_agree" in df else df.iloc[:0]
        return f"{int(sub.counter_agree.astype(bool).sum())} of {len(sub)}"

    lines = [f"The traced and executed counts agree (`counter_agree`: within the tolerance of "
             f"`bench.measure.complexity.AGREE_TOL_PCT`) on {int(agree.sum())} of {len(known)} rows "
             f"({count(main)} default models, {count(alts)} alternatives) and are identical on "
             f"{int(equal.sum())}" + ("." if agree.all() else "; they disagree on:")]
    lines += [f"- `{r.model}` {r.reading} ({r.overrides or 'defaults'}): traced {r.gmacs_traced:.4f} G, executed "
              f"{r.gmacs:.4f} G ({_num(r.counter_gap_pct, '{:+.2f} %')})" for r in known[~agree].itertuples()]
    if len(known) < len(rows):
        lines.append(f"({len(rows) - len(known)} rows come from records without a traced count.)")
    close = known[agree & ~equal]
    if not close.empty:
        lines += ["", "Different, but within the tolerance: " + "; ".join(
            f"`{r.model}` {r.reading} ({_num(r.counter_gap_pct, '{:+.2f} %')})" for r in close.itertuples()) + "."]
    unsupported = rows[rows.unsupported_ops.fillna("") != ""]
    lines.append("")
    lines.append("No row has an operator without an fvcore handle (`unsupported_ops` is empty on every row)."
                 if unsupported.empty else "Operators without an fvcore handle (traced figures only; the executed "
                 "count does not depend on them): " + "; ".join(
                     f"`{r.model}` {r.reading}: {r.unsupported_ops}" for r in unsupported.itertuples()) + ".")
    return "\n".join(lines)


def table7_rows(main: pd.DataFrame, alts: pd.DataFrame) -> pd.DataFrame:
    """What removing the projectors saves: the paper (Table 2 default - Table 7) and the two readings."""
    rows = []
    for model in ("vt_resnet18", "vt_resnet34"):
        if main.empty or alts.empty:
            break
        default = main[main.model == model]
        every = alts[(alts.model == model) & (alts.overrides == "last_projector=True")]
        none = alts[(alts.model == model) & (alts.overrides == "projector=False")]
        if default.empty or every.empty or none.empty:
            continue
        d, e, n = default.iloc[0], every.iloc[0], none.iloc[0]
        paper_g = paper_value(model, "gmacs", "T2", CLS_SIZE) - n.paper_gmacs
        paper_p = paper_value(model, "params_m", "T2", CLS_SIZE) - n.paper_params_m
        rows.append({"model": model, "paper Δ (T2 - T7), M MACs / M params": f"{paper_g * 1e3:.0f} / {paper_p:.2f}",
                     "no projector in the last module (default) - none": f"{(d.gmacs - n.gmacs) * 1e3:.1f} / "
                                                                          f"{d.params_m - n.params_m:.2f}",
                     "a projector in every module - none": f"{(e.gmacs - n.gmacs) * 1e3:.1f} / {e.params_m - n.params_m:.2f}",
                     "every module, executed GMACs vs T8 / T2": f"{e.gmacs:.4f} vs "
                     f"{_num(paper_value(model, 'gmacs', 'T8', CLS_SIZE))} / {_num(paper_value(model, 'gmacs', 'T2', CLS_SIZE))}"})
    return pd.DataFrame(rows)


def fpn_module_lines(main: pd.DataFrame) -> str:
    """The FPN module (the `fpn` stage) of FPN-R50 and VT-FPN-R50 at both input sizes."""
    lines = []
    for table in SEG_SIZES:
        for name in ("fpn_r50", "vt_fpn_r50"):
            rows = main[(main.model == name) & (main.table == table)] if not main.empty else main
            if not rows.empty and not _missing(rows.iloc[0].gmacs_fpn):
                r = rows.iloc[0]
                lines.append(f"- `{name}` FPN module at {r.input}: {r.gmacs_fpn:.2f} G MACs")
    return "\n".join(lines) or "- (the FPN rows were not measured)"


def miss_lines(f: Fidelity) -> tuple[str, str]:
    """The network totals that miss, and the VT stages that miss (budget, Table 1), as markdown lists."""
    misses = f.main[f.main.verdict != "ok"]
    totals = "\n".join(f"- `{r.model}` ({r.table}, {r.input}): {r.verdict}" for r in misses.itertuples()) or \
        "- none: every default model's totals are within the issue's tolerances."
    stages = [f"- `{r.model}` VT stage + head against {r.table}'s budget: {r.budget_verdict}"
              for r in f.budget.itertuples() if r.budget_verdict != "ok"]
    stages += [f"- `{r.model}` stage ratios against Table 1: {r.t1_verdict}"
               for r in f.budget.drop_duplicates("model").itertuples() if r.t1_verdict != "ok"]
    return totals, "\n".join(stages) or "- none."


def _missing_note(f: Fidelity) -> str:
    if not f.missing:
        return ""
    return (f"\n\nNot in the records yet ({len(f.missing)}; `vtbench launch experiments/paper_complexity.yaml` "
            f"measures them): " + "; ".join(f.missing) + ".")


def sections(f: Fidelity) -> list[StudySection]:
    """The study as report sections: the twelve models, their stages, the VT-stage budget, the alternatives."""
    totals, stage_misses = miss_lines(f)
    out = [
        StudySection(
            "Fidelity: the paper's complexity numbers beside the default models",
            "Each default model against its paper table (VT-ResNet-34 against Table 2, the other VT-ResNets "
            f"against Table 8: the tables disagree). {tolerances_text()} Measured {f.env}.\n\nTotals that miss:\n{totals}\n\nThe FPN module (the `fpn` "
            f"stage):\n{fpn_module_lines(f.main)}\n\n{counting_summary(f.main, f.alts)}{_missing_note(f)}",
            main_table(f.main), csv_name=MAIN_CSV, data=f.main),
        StudySection("Fidelity: per-stage breakdown (G MACs / M params)",
                     "Executed counts of every stage of the default models (in fidelity.csv too).",
                     stage_table(f.main)),
    ]
    if not f.budget.empty:
        out.append(StudySection(
            "Fidelity: the VT stage against what the paper's totals leave it, and Table 1",
            "The trunk (stem and stages 2-4) is torchvision's, so the paper's total minus the measured trunk "
            f"is what the VT stage plus the head may cost. Held to it within {100 * TOL_VT_STAGE:.0f} %, and the "
            f"ResNet-stage-5 / VT-stage ratios to Table 1's within {100 * TOL_VT_STAGE:.0f} %.\n\nMisses:\n"
            + stage_misses,
            budget_table(f.budget), csv_name=BUDGET_CSV, data=f.budget))
    if not f.alts.empty:
        out.append(StudySection(
            "Fidelity: other readings of the paper's open choices, and the ablations of Tables 3-7",
            "Each row changes the options shown and is set beside the paper row named in `vs` (Tables 3-7 "
            "rows are the paper's ablation numbers for VT-R18/R34), with the same tolerances as its model's "
            "default.", alt_table(f.alts), csv_name=ALTERNATIVES_CSV, data=f.alts))
        t7 = table7_rows(f.main, f.alts)
        if not t7.empty:
            out.append(StudySection(
                "Fidelity: what removing the projectors saves (Table 7)",
                "M MACs / M params; Table 7's savings against one projector (the default: none in the last "
                "module) and against one in every module (`last_projector: true`).", t7))
    return out


def tolerances_text() -> str:
    """The tolerances of the verdicts, as a sentence (from TOL_* and FPN_MODULE_EXACT)."""
    exact = " / ".join(f"{g:.1f} G" for g in FPN_MODULE_EXACT.values())
    return (f"Tolerances: ResNets {100 * TOL_RESNET_GMACS:.1f} % of Table 8's MACs; VT-ResNets "
            f"{100 * TOL_VT_GMACS:.0f} % (MACs) and {100 * TOL_VT_PARAMS:.0f} % (params); the FPN module within "
            f"{100 * TOL_FPN_MODULE['fpn']:.1f} % of {exact} (FPN) and within {100 * TOL_FPN_MODULE['vt_fpn']:.0f} % "
            "of the paper's (VT-FPN).")


def report_sections(data: Any, table: pd.DataFrame) -> list[StudySection]:
    """The fidelity sections, when the run's records hold the eight classifiers at their defaults."""
    f = fidelity_frames(data)
    return [] if f is None else sections(f)
