"""One comparison of a VT configuration with its baseline: the pairing rule, the statistics, the verdicts.

Every table, section, plot and command that sets a VT cell beside its baseline asks this module, so
that a pair has one answer everywhere (docs/statistics.md says why each choice is what it is):

- **Pairing** (`setting_key`, `pair_groups`): a VT configuration and the configuration of its
  registry baseline (the record's `model.baseline`; nothing parses a model's name) at identical
  settings of the measurement compared: the input size, the model options the two share, and the
  measurement's own section (latency: device, dtype, batch, threads, compile, CUDA graphs,
  channels_last, the timing options, and the device measured on; accuracy: the training recipe).
- **Latency** (`latency_ratio`): the VT / baseline ratio of every interleaved round (the two
  measurements of a round were taken next to each other), summarised as their geometric mean with a
  t interval on the log ratios. Only where there are no paired rounds: the ratio of the p50s,
  labelled "single pass, no interval".
- **Accuracy** (`seed_difference`): VT - baseline in points, paired by seed on the seeds both
  sides hold (all of them, or at least `MIN_SEEDS` common ones while a grid is still running), else
  Welch's t.
- **Verdicts** only on a sound basis (`no_verdict_reason`): none when a measurement behind it judged
  itself noisy, or with fewer than `MIN_ROUNDS` rounds or `MIN_SEEDS` seeds; the row says why.
- **Many rows against one baseline** (`holm`, `decide`): Holm's step-down adjustment across a
  table's comparisons; a verdict needs the adjusted p below `ALPHA`.
- **Unresolved** (`rounds_needed`, `seeds_needed`): how many rounds or seeds would resolve a
  difference of the observed size at the observed spread, at `POWER` and `ALPHA`.

Torch-free: numbers, lists and record dicts in; dataclasses out.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from bench.core.contracts import LatencyOptions

CONFIDENCE = 0.95                 # every interval in a report
ALPHA = 1 - CONFIDENCE            # two-sided level of every test (Holm-adjusted across a table)
POWER = 0.80                      # of the rounds/seeds-needed figures
MIN_ROUNDS = 4                    # paired rounds before a latency ratio gets an interval and a verdict
MIN_SEEDS = 3                     # seeds per side (pairs when paired) before an accuracy difference does
MAX_NEEDED = 10_000               # beyond this the answer is "more than 10000"

SINGLE_PASS = "single pass, no interval"
GEOMEAN_LABEL = "geometric mean of per-round VT/baseline ratios, 95 % t interval on log ratios"
PAIRED_LABEL = "paired by seed, 95 % t interval"
PAIRED_COMMON_LABEL = "paired on the seeds both sides hold, 95 % t interval"
WELCH_LABEL = "Welch, 95 % t interval"


# ------------------------------------------------------------------------------ t quantiles -----

def t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
    """The two-sided t critical value (scipy.stats.t.ppf) with `df` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, df))


def t_p_value(t: float, df: float) -> float:
    """Two-sided p-value of a t statistic with `df` degrees of freedom."""
    from scipy import stats

    return float(2 * stats.t.sf(abs(t), df))


def mean_ci_halfwidth(std: Any, n: Any, confidence: float = CONFIDENCE) -> float:
    """Half-width of the t confidence interval of a mean over n values (NaN for fewer than 2)."""
    if n is None or _missing(n) or n < 2 or std is None or _missing(std):
        return math.nan
    return t_quantile(int(n) - 1, confidence) * float(std) / math.sqrt(int(n))


def _missing(value: Any) -> bool:
    try:
        return value is None or math.isnan(float(value))
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------ estimates -------

@dataclass(frozen=True)
class Estimate:
    """One statistic of a pair: a ratio (latency) or a difference (accuracy), with its interval.

    `lo`/`hi` are None where there is no interval (too few rounds or seeds, a single pass). `sd`
    is the spread the interval came from (of log ratios, or of seed differences / per side for
    Welch as `sd_vt`, `sd_base`), which the rounds- and seeds-needed figures reuse. `df` and `se`
    are the t test's, on the scale of the test (log for a ratio).
    """

    value: float
    n: int
    method: str
    lo: float | None = None
    hi: float | None = None
    df: float | None = None
    se: float | None = None
    center: float | None = None       # on the test's scale: mean log ratio, or the mean difference
    sd: float | None = None
    sd_vt: float | None = None
    sd_base: float | None = None
    note: str = ""                    # why there is no interval
    log_scale: bool = False

    @property
    def has_interval(self) -> bool:
        return self.lo is not None and self.hi is not None

    def p_value(self, reference: float) -> float | None:
        """Two-sided p of "the true value is `reference`" (a ratio's reference is taken on the log scale)."""
        if not self.has_interval or self.se is None or self.center is None:
            return None
        null = math.log(reference) if self.log_scale else reference
        if self.se == 0:
            return 0.0 if self.center != null else 1.0
        return t_p_value((self.center - null) / self.se, self.df)


def latency_ratio(ratios: Sequence[float], confidence: float = CONFIDENCE,
                  min_rounds: int = MIN_ROUNDS) -> Estimate:
    """Geometric mean of per-round VT/baseline ratios with the t interval of their mean log.

    A ratio is multiplicative, so its logs are averaged; the interval is exp(mean log ± t s/√n) with
    n - 1 degrees of freedom. Fewer than `min_rounds` rounds: the geometric mean alone, no interval.
    """
    logs = [math.log(float(r)) for r in ratios]
    n = len(logs)
    if n == 0:
        raise ValueError("no round ratios")
    center = statistics.fmean(logs)
    sd = statistics.stdev(logs) if n >= 2 else None
    if n < min_rounds:
        return Estimate(math.exp(center), n, GEOMEAN_LABEL, center=center, sd=sd, log_scale=True,
                        note=f"{n} round{'s' if n != 1 else ''} (an interval needs >= {min_rounds})")
    se = sd / math.sqrt(n)
    half = t_quantile(n - 1, confidence) * se
    return Estimate(math.exp(center), n, GEOMEAN_LABEL, lo=math.exp(center - half), hi=math.exp(center + half),
                    df=n - 1, se=se, center=center, sd=sd, log_scale=True)


def single_pass_ratio(vt_p50: float, base_p50: float, why: str = "") -> Estimate:
    """VT p50 / baseline p50 where there are no paired rounds: no interval, never a verdict."""
    return Estimate(float(vt_p50) / float(base_p50), 1, SINGLE_PASS, note=why or "single pass", log_scale=True)


def round_ratios(vt_rounds: Sequence[float], base_rounds: Sequence[float]) -> list[float]:
    """VT / baseline of each round both sides were timed in (round i with round i)."""
    n = min(len(vt_rounds), len(base_rounds))
    return [float(vt_rounds[i]) / float(base_rounds[i]) for i in range(n)]


def welch_ci(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int,
             confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Difference a - b of two means with Welch's t interval (unequal variances).

    Returns `diff`, `lo`, `hi`, `df`, `se` and `resolved` (the interval excludes 0), with `note`
    saying why there is no interval: one value on either side, or no spread at all (the
    Welch-Satterthwaite degrees of freedom are then undefined).
    """
    diff = float(mean_a) - float(mean_b)
    out: dict[str, Any] = {"diff": diff, "lo": math.nan, "hi": math.nan, "df": math.nan, "se": math.nan,
                           "resolved": False, "note": ""}
    if not (n_a >= 2 and n_b >= 2):
        fewest = min(int(n_a), int(n_b))
        out["note"] = f"{fewest} seed" + ("s" if fewest != 1 else "")
        return out
    var_a, var_b = float(std_a) ** 2 / n_a, float(std_b) ** 2 / n_b
    if var_a + var_b == 0:
        out["note"] = "no spread over seeds"
        return out
    df = (var_a + var_b) ** 2 / (var_a ** 2 / (n_a - 1) + var_b ** 2 / (n_b - 1))  # Welch-Satterthwaite
    se = math.sqrt(var_a + var_b)
    half = t_quantile(df, confidence) * se
    out.update(lo=diff - half, hi=diff + half, df=df, se=se, resolved=bool(diff - half > 0 or diff + half < 0))
    return out


def seed_difference(vt: Mapping[Any, float], base: Mapping[Any, float], confidence: float = CONFIDENCE,
                    min_seeds: int = MIN_SEEDS) -> Estimate:
    """VT - baseline over seeds (points), paired by seed on the seeds both sides hold.

    `vt`, `base`: seed -> value (one value per seed). Paired: the mean of the per-seed differences
    with a t interval (n - 1 df), since a seed gives both models the same data order. Where the seed
    sets differ (a grid still running) but at least `min_seeds` seeds are common, the pairs are those
    seeds (`PAIRED_COMMON_LABEL`): a paired test on fewer seeds is sounder than Welch's on all, which
    would ignore what a seed shares. Otherwise Welch's interval over every seed. No interval with
    fewer than `min_seeds` seeds on a side (pairs when paired).
    """
    a, b = [float(v) for v in vt.values()], [float(v) for v in base.values()]
    diff = statistics.fmean(a) - statistics.fmean(b)
    fewest = min(len(a), len(b))
    # A tuple key is a record without a seed of its own (or a repeated seed): nothing to pair it with.
    seeded = not any(isinstance(k, tuple) for k in (*vt, *base))
    common = [s for s in vt if s in base] if seeded else []
    same = seeded and set(vt) == set(base)
    if len(common) >= 2 and (same or len(common) >= min_seeds):
        diffs = [float(vt[s]) - float(base[s]) for s in common]
        sd, mean_diff = statistics.stdev(diffs), statistics.fmean(diffs)
        est = Estimate(mean_diff, len(diffs), PAIRED_LABEL if same else PAIRED_COMMON_LABEL, df=len(diffs) - 1,
                       se=sd / math.sqrt(len(diffs)), center=mean_diff, sd=sd)
        fewest = len(diffs)
    elif same and len(common) == 1:  # one seed on each side, the same one: a pair, but no spread
        est = Estimate(diff, 1, PAIRED_LABEL, center=diff)
    else:
        sd_a = statistics.stdev(a) if len(a) > 1 else math.nan
        sd_b = statistics.stdev(b) if len(b) > 1 else math.nan
        w = welch_ci(statistics.fmean(a), sd_a, len(a), statistics.fmean(b), sd_b, len(b), confidence)
        est = Estimate(diff, fewest, WELCH_LABEL, df=None if math.isnan(w["df"]) else w["df"],
                       se=None if math.isnan(w["se"]) else w["se"], center=diff, sd_vt=sd_a, sd_base=sd_b,
                       note=w["note"])
    if fewest < min_seeds:
        note = "1 seed: no claim" if fewest == 1 else f"{fewest} seeds (an interval needs >= {min_seeds})"
        return replace(est, lo=None, hi=None, note=note)
    if est.se is None:
        return replace(est, note=est.note or "no spread over seeds")
    half = t_quantile(est.df, confidence) * est.se
    return replace(est, lo=est.value - half, hi=est.value + half)


# ------------------------------------------------------------------------------ verdicts --------

def no_verdict_reason(estimate: Estimate, noisy: int = 0, measurements: int = 0,
                      noisy_sides: Sequence[str] = ()) -> str | None:
    """Why a pair gets no verdict ('no verdict: 3 of 8 measurements noisy'), or None when it may have one."""
    if noisy:
        return f"no verdict: {noisy} of {measurements} measurements noisy"
    if noisy_sides:
        return f"no verdict: {' and '.join(noisy_sides)} judged noisy"
    if not estimate.has_interval:
        note = estimate.note or "no interval"
        return note if note.endswith("no claim") else f"no verdict: {note}"
    return None


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (step-down, kept monotone); None stays None and is not counted.

    The i-th smallest of m p-values is multiplied by m - i + 1 (i from 1), then each adjusted value
    is raised to the largest before it, capped at 1: a family of m tests keeps its chance of any false
    "resolved" at most alpha, uniformly more powerful than Bonferroni.
    """
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(tested)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


@dataclass
class Comparison:
    """A VT configuration beside its baseline for one metric: estimate, test and verdict.

    `reference` is the value tested against (1 for a latency ratio, 0 for an accuracy difference,
    the MACs ratio for the speed target). `verdict` is None where `why_no_verdict` says why.
    `p_holm` is the p-value adjusted across the comparisons of one table (`decide`).
    """

    estimate: Estimate
    reference: float
    why_no_verdict: str | None = None
    p: float | None = None
    p_holm: float | None = None
    family_size: int = 0
    verdict: str | None = None
    needed: str | None = None
    words: tuple[str, str, str] = ("resolved", "resolved", "not resolved")  # below, above, neither
    too_few: bool = False             # no verdict only for want of rounds or seeds (the spread is known)
    extra: dict[str, Any] = field(default_factory=dict)


def compare(estimate: Estimate, reference: float, *, noisy: int = 0, measurements: int = 0,
            noisy_sides: Sequence[str] = (), words: tuple[str, str, str] = ("resolved", "resolved", "not resolved"),
            **extra: Any) -> Comparison:
    """A Comparison of `estimate` against `reference`, before the table's Holm step (see `decide`)."""
    why = no_verdict_reason(estimate, noisy, measurements, noisy_sides)
    p = None if why else estimate.p_value(reference)
    too_few = bool(why) and not noisy and not noisy_sides and estimate.method != SINGLE_PASS
    return Comparison(estimate, reference, why_no_verdict=why, p=p, words=words, too_few=too_few, extra=dict(extra))


def decide(comparisons: Sequence[Comparison], alpha: float = ALPHA, power: float = POWER) -> list[Comparison]:
    """Holm across the comparisons that may have a verdict, then each one's verdict and, when not
    resolved, the rounds or seeds that would resolve a difference of the observed size."""
    adjusted = holm([c.p for c in comparisons])
    family = sum(p is not None for p in adjusted)
    # Rows short only of rounds or seeds join the family once they have them: the figure for any row is
    # for the table as it would then be tested.
    planned = family + sum(1 for c in comparisons if c.p is None and c.too_few)
    for c, p_holm in zip(comparisons, adjusted):
        c.p_holm, c.family_size = p_holm, family
        if p_holm is None:
            c.verdict = None
        elif p_holm < alpha:
            below = (c.estimate.center < (math.log(c.reference) if c.estimate.log_scale else c.reference))
            c.verdict = c.words[0] if below else c.words[1]
        else:
            c.verdict = c.words[2]
        if c.verdict == c.words[2] or (c.verdict is None and c.too_few):
            # Holm's strictest step tests at alpha / m: rounds or seeds enough for it resolve the row
            # whatever rank its p takes in the table.
            c.needed = needed_text(c, alpha, power, max(planned, 1))
    return list(comparisons)


# ------------------------------------------------------------------------------ power -----------

def _power_one_sample(effect: float, sd: float, n: int, alpha: float) -> float:
    """Power of the two-sided one-sample (or paired) t test at n, true mean `effect`, spread `sd`."""
    from scipy import stats

    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect / sd * math.sqrt(n)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def _power_welch(effect: float, sd_a: float, sd_b: float, n: int, alpha: float) -> float:
    """Power of Welch's two-sided test with n per side (Welch-Satterthwaite df, noncentral t)."""
    from scipy import stats

    va, vb = sd_a ** 2 / n, sd_b ** 2 / n
    df = (va + vb) ** 2 / (va ** 2 / (n - 1) + vb ** 2 / (n - 1))
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect / math.sqrt(va + vb)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def _z_sum(alpha: float, power: float) -> float:
    """z_(1 - alpha/2) + z_power: the normal approximation's n = (z_sum sd / effect)^2, a start below the exact n."""
    from scipy import stats

    return float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))


def rounds_needed(effect: float, sd: float | None, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """Paired rounds (or seeds) at which a true mean difference `effect` (log ratio, or points) with
    spread `sd` is resolved with probability `power` by the two-sided t test at `alpha`; inf beyond
    MAX_NEEDED, None where it is undefined (no difference, or no spread known)."""
    if not effect or sd is None or not sd > 0 or math.isnan(sd):
        return None
    n = max(2, math.ceil((_z_sum(alpha, power) * sd / abs(effect)) ** 2) - 2)  # normal approximation, then exact
    while n <= MAX_NEEDED:
        if _power_one_sample(abs(effect), sd, n, alpha) >= power:
            return n
        n += 1
    return math.inf


seeds_needed_paired = rounds_needed


def seeds_needed_welch(effect: float, sd_vt: float, sd_base: float, alpha: float = ALPHA,
                       power: float = POWER) -> float | None:
    """Seeds per side at which Welch's test resolves a true difference `effect` at the observed spreads
    (inf beyond MAX_NEEDED, None where undefined)."""
    if not effect or any(s is None or math.isnan(s) for s in (sd_vt, sd_base)) or sd_vt + sd_base == 0:
        return None
    n = max(2, math.ceil(_z_sum(alpha, power) ** 2 * (sd_vt ** 2 + sd_base ** 2) / effect ** 2) - 2)
    while n <= MAX_NEEDED:
        if _power_welch(abs(effect), sd_vt, sd_base, n, alpha) >= power:
            return n
        n += 1
    return math.inf


def needed_text(c: Comparison, alpha: float = ALPHA, power: float = POWER, family: int = 1) -> str | None:
    """'12 rounds (80 % power, alpha 0.05/16)': the rounds or seeds that would resolve a difference of the
    observed size at the observed spread; None where no spread is known. With `family` > 1 the test is
    at alpha / family (Holm's strictest step)."""
    est = c.estimate
    level = alpha / family
    if est.center is None:
        return None
    null = math.log(c.reference) if est.log_scale else c.reference
    effect = est.center - null
    if effect == 0:
        return "none: no difference observed"
    if est.method == WELCH_LABEL:
        n, unit = seeds_needed_welch(effect, est.sd_vt, est.sd_base, level, power), "seeds per side"
    else:
        n = rounds_needed(effect, est.sd, level, power)
        unit = "rounds" if est.log_scale else "paired seeds"
    if n is None:
        return None
    at = f"{100 * power:.0f} % power, alpha {alpha:g}" + (f"/{family}" if family > 1 else "")
    if math.isinf(n):
        return f"more than {MAX_NEEDED} {unit} ({at})"
    return f"{n} {unit} ({at})"


# ------------------------------------------------------------------------------ pairing ---------

def _latency_defaults() -> dict[str, Any]:
    """Every latency option's default under the name a cell gives it (`bench.core.contracts.LatencyOptions`):
    a cell that leaves an option unset was timed at its default, so pairs as if it had set it."""
    return {info.alias or name: info.default for name, info in LatencyOptions.model_fields.items()}


LATENCY_DEFAULTS = _latency_defaults()


def _image_hw(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return int(value), int(value)


def _freeze(value: Any) -> Any:
    """A hashable, order-free form of a config value (dicts sorted, lists as tuples)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def measurement_settings(config: Mapping[str, Any], env: Mapping[str, Any] | None, measurement: str) -> tuple:
    """The settings of one measurement that both sides of a pair must share.

    latency: the cell's latency section (the contract's defaults filled in) and the device it ran on
    (`env.device_name`); train: the training recipe without the seed; complexity: its section.
    """
    section = dict(config.get(measurement) or {}) if isinstance(config.get(measurement), Mapping) else {}
    if measurement == "latency":
        section = {**LATENCY_DEFAULTS, **section}
        return _freeze(section), (env or {}).get("device_name")
    if measurement == "train":
        section.pop("seed", None)
    return (_freeze(section),)


def shared_options(vt_args: Mapping[str, Any], base_args: Mapping[str, Any],
                   base_defaults: Mapping[str, Any] | None, vt_defaults: Mapping[str, Any] | None) -> tuple:
    """The model options a VT cell and a baseline cell must agree on, each resolved to its value.

    Where the baseline's registry defaults are known, every option the baseline takes (a given
    value, else each model's own default); otherwise the options the baseline cell sets.
    """
    keys = set(base_defaults) if base_defaults is not None else set(base_args)
    out = []
    for key in sorted(keys):
        vt_value = vt_args.get(key, (vt_defaults or {}).get(key, (base_defaults or {}).get(key)))
        base_value = base_args.get(key, (base_defaults or {}).get(key))
        out.append((key, _freeze(vt_value), _freeze(base_value)))
    return tuple(out)


@dataclass(frozen=True)
class Facts:
    """What the analysis needs to know of a model: the record's `model` block, else the registry's."""

    name: str
    family: str = "other"
    task: str = "cls"
    depth: int | None = None
    baseline: str | None = None
    stages: tuple[str, ...] = ()
    replaced: str | None = None
    defaults: Mapping[str, Any] | None = None   # None: not known in this process


@dataclass
class Group:
    """One configuration: the ok records that differ only in seed (and run), measured on one device."""

    group_id: str
    model: str
    facts: Facts
    config: dict[str, Any]
    records: list[dict[str, Any]]
    device_name: str | None = None

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.config.get("model_args") or {})


def is_pair(vt: Group, base: Group, measurement: str) -> bool:
    """The one pairing rule: `base` is `vt`'s registry baseline at identical settings of `measurement`."""
    if not vt.facts.baseline or base.model != vt.facts.baseline:
        return False
    if _image_hw(vt.config.get("input_size")) != _image_hw(base.config.get("input_size")):
        return False
    if measurement_settings(vt.config, {"device_name": vt.device_name}, measurement) != \
            measurement_settings(base.config, {"device_name": base.device_name}, measurement):
        return False
    options = shared_options(vt.args, base.args, base.facts.defaults, vt.facts.defaults)
    return all(a == b for _, a, b in options)


def pair_groups(groups: Sequence[Group], measurement: str,
                has_metric: Any = None) -> list[tuple[Group, Group]]:
    """(VT group, its baseline group) for every VT configuration with a baseline at the same settings;
    `has_metric(group)` restricts both sides to configurations that measured the metric."""
    ok = [g for g in groups if has_metric is None or has_metric(g)]
    pairs = []
    for vt in ok:
        if not vt.facts.baseline:
            continue
        base = next((b for b in ok if is_pair(vt, b, measurement)), None)
        if base is not None:
            pairs.append((vt, base))
    return pairs


# ------------------------------------------------------------------------------ the two metrics --

def session_of(record: Mapping[str, Any]) -> str | None:
    """The interleave session that timed a record's latency (None for a single pass)."""
    if (record.get("metrics") or {}).get("latency_protocol") != "interleaved":
        return None
    remeasured = record.get("remeasured_at") or {}
    return remeasured.get("session") or remeasured.get("started_at")


def _rounds(record: Mapping[str, Any]) -> list[float]:
    values = (record.get("metrics") or {}).get("latency_round_p50_ms") or []
    return [float(v) for v in values] if isinstance(values, list) else []


def _round_verdicts(record: Mapping[str, Any], n: int) -> list[str]:
    """The first `n` rounds' own judgements ([] where the record kept none: its whole-record verdict counts)."""
    verdicts = (record.get("metrics") or {}).get("latency_round_verdicts")
    return [str(v) for v in verdicts[:n]] if isinstance(verdicts, list) else []


def _record_noisy(record: Mapping[str, Any]) -> bool:
    return (record.get("metrics") or {}).get("latency_verdict") == "noisy"


def _p50(records: Sequence[Mapping[str, Any]]) -> float:
    return statistics.median(float(r["metrics"]["latency_ms_p50"]) for r in records)


def latency_comparison(vt: Group, base: Group, reference: float = 1.0,
                       words: tuple[str, str, str] = ("resolved", "resolved", "not resolved"),
                       sides: tuple[str, str] = ("VT", "baseline")) -> Comparison:
    """The latency ratio VT / baseline of a pair, compared with `reference` (1, or the MACs ratio).

    Rounds pair only within one interleave session: each VT record is matched with the baseline
    record of its session (of its seed first), and every round both were timed in gives a ratio.
    A measurement (one side's round) that judged itself noisy, or a record judged noisy as a whole
    (e.g. its rounds' p50 spread), withholds the verdict; `sides` names the two sides in that reason.
    """
    vt_recs = [r for r in vt.records if (r.get("metrics") or {}).get("latency_ms_p50") is not None]
    base_recs = [r for r in base.records if (r.get("metrics") or {}).get("latency_ms_p50") is not None]
    ratios, noisy, measured, sessions = [], 0, 0, 0
    noisy_sides: list[str] = []
    for rec in vt_recs:
        session = session_of(rec)
        mates = [b for b in base_recs if session is not None and session_of(b) == session]
        if not mates:
            continue
        mate = min(mates, key=lambda b: (b.get("config") or {}).get("seed") != (rec.get("config") or {}).get("seed"))
        pair = round_ratios(_rounds(rec), _rounds(mate))
        if not pair:
            continue
        sessions += 1
        ratios += pair
        n = len(pair)
        noisy += sum(v == "noisy" for v in _round_verdicts(rec, n) + _round_verdicts(mate, n))
        measured += 2 * n
        for side, record in zip(sides, (rec, mate)):
            if _record_noisy(record) and side not in noisy_sides:
                noisy_sides.append(side)
    extra = {"vt_ms_p50": _p50(vt_recs), "base_ms_p50": _p50(base_recs)}
    if not ratios:
        any_rounds = any(session_of(r) for r in vt_recs) and any(session_of(r) for r in base_recs)
        why = ("timed in different interleave sessions: rounds cannot be paired" if any_rounds
               else "single pass (no interleaved rounds)")
        return compare(single_pass_ratio(extra["vt_ms_p50"], extra["base_ms_p50"], why), reference, words=words,
                       timing=why, **extra)
    estimate = latency_ratio(ratios)
    return compare(estimate, reference, noisy=noisy, measurements=measured,
                   noisy_sides=[] if noisy else [f"{side} (as a whole)" for side in noisy_sides], words=words,
                   timing="interleaved",
                   round_ratios=ratios, rounds=len(ratios), noisy_measurements=noisy, measured=measured,
                   sessions=sessions, **extra)


def seed_values(group: Group, metric: str) -> dict[Any, float]:
    """seed -> the metric of the group's records (records without a seed numbered by position)."""
    out: dict[Any, float] = {}
    for i, record in enumerate(group.records):
        value = (record.get("metrics") or {}).get(metric)
        if value is None:
            continue
        seed = (record.get("config") or {}).get("seed")
        seed = ((record.get("config") or {}).get("train") or {}).get("seed", seed) if seed is None else seed
        key = seed if seed is not None and seed not in out else ("record", i)
        out[key] = float(value)
    return out


def accuracy_comparison(vt: Group, base: Group, metric: str) -> Comparison:
    """VT - baseline of `metric` (points) over seeds, against 0 (see `seed_difference`)."""
    vt_values, base_values = seed_values(vt, metric), seed_values(base, metric)
    estimate = seed_difference(vt_values, base_values)
    return compare(estimate, 0.0, words=("resolved", "resolved", "not resolved"),
                   vt_seeds=len(vt_values), base_seeds=len(base_values))


# ------------------------------------------------------------------------------ a table's pairs --

def has_metric(group: Group, metric: str) -> bool:
    """Whether any record of the group holds `metric`."""
    return any((r.get("metrics") or {}).get(metric) is not None for r in group.records)


def group_mean(group: Group, metric: str) -> float | None:
    """The metric's mean over the group's records (None where none holds it)."""
    values = [float(r["metrics"][metric]) for r in group.records if (r.get("metrics") or {}).get(metric) is not None]
    return statistics.fmean(values) if values else None


def macs_ratio(vt: Group, base: Group) -> float | None:
    """VT GMACs / baseline GMACs (MACs are counted, not timed: no interval)."""
    a, b = group_mean(vt, "gmacs"), group_mean(base, "gmacs")
    return a / b if a and b else None


@dataclass
class LatencyPair:
    """A VT configuration beside its baseline's at the same latency settings: the one latency ratio,
    tested against 1 (`versus_one`: resolved or not) and against the MACs ratio (`target`: met or missed)."""

    vt: Group
    base: Group
    versus_one: Comparison
    target: Comparison | None
    macs_ratio: float | None

    @property
    def estimate(self) -> Estimate:
        return self.versus_one.estimate


def latency_pairs(groups: Sequence[Group]) -> list[LatencyPair]:
    """Every latency pair of the groups, each with both verdicts, Holm applied across the pairs."""
    pairs = []
    for vt, base in pair_groups(groups, "latency", lambda g: has_metric(g, "latency_ms_p50")):
        macs = macs_ratio(vt, base)
        versus_one = latency_comparison(vt, base)
        target = latency_comparison(vt, base, macs, words=("met", "missed", "not resolved")) if macs else None
        pairs.append(LatencyPair(vt, base, versus_one, target, macs))
    decide([p.versus_one for p in pairs])
    decide([p.target for p in pairs if p.target is not None])
    return pairs


@dataclass
class FormPair:
    """One model in two values of one model option (`variant` and `reference`) at identical latency
    settings: the latency ratio variant / reference, tested against 1 (faster, slower or not resolved)."""

    option: str
    variant: Group
    reference: Group
    versus_one: Comparison

    @property
    def variant_value(self) -> Any:
        return option_value(self.variant, self.option)


def option_value(group: Group, option: str) -> Any:
    """The group's value of a model option: given, else the model's default where known (None otherwise)."""
    return group.args.get(option, (group.facts.defaults or {}).get(option))


def is_form_pair(variant: Group, reference: Group, option: str, reference_value: Any) -> bool:
    """The pairing rule of two forms of one model: the same model, input and latency settings (device
    included), `reference` at `reference_value` of `option` and `variant` at another value, and every
    other model option the same."""
    if variant.model != reference.model or variant is reference:
        return False
    if option_value(reference, option) != reference_value or option_value(variant, option) in (None, reference_value):
        return False
    if _image_hw(variant.config.get("input_size")) != _image_hw(reference.config.get("input_size")):
        return False
    if measurement_settings(variant.config, {"device_name": variant.device_name}, "latency") != \
            measurement_settings(reference.config, {"device_name": reference.device_name}, "latency"):
        return False
    rest = lambda g: {k: _freeze(v) for k, v in g.args.items() if k != option}  # noqa: E731
    return rest(variant) == rest(reference)


def form_pairs(groups: Sequence[Group], option: str, reference_value: Any) -> list[FormPair]:
    """Every (variant, reference) pair of forms of `option` among the latency groups, Holm across them.

    Same statistic as `latency_pairs` (per-round ratios within one interleave session, geometric mean,
    t interval, no verdict on noise or too few rounds); verdict 'faster' / 'slower' than the reference form.
    """
    timed = [g for g in groups if has_metric(g, "latency_ms_p50")]
    pairs = []
    for variant in timed:
        reference = next((r for r in timed if is_form_pair(variant, r, option, reference_value)), None)
        if reference is not None:
            versus_one = latency_comparison(variant, reference, words=("faster", "slower", "not resolved"),
                                            sides=("form", "reference form"))
            pairs.append(FormPair(option, variant, reference, versus_one))
    decide([p.versus_one for p in pairs])
    return pairs


def accuracy_pairs(groups: Sequence[Group], metric: str) -> dict[str, Comparison]:
    """VT group id -> its accuracy comparison on `metric` with the baseline at the same training
    recipe, Holm applied across them all."""
    found = {vt.group_id: accuracy_comparison(vt, base, metric)
             for vt, base in pair_groups(groups, "train", lambda g: has_metric(g, metric))}
    decide(list(found.values()))
    return found


def complexity_pairs(groups: Sequence[Group]) -> dict[str, Group]:
    """VT group id -> the baseline group its MACs and parameters are compared with (same input and options)."""
    return {vt.group_id: base for vt, base in pair_groups(groups, "complexity", lambda g: has_metric(g, "gmacs"))}


# ------------------------------------------------------------------------------ text ------------

def ratio_text(est: Estimate) -> str:
    """'0.921 [0.884-0.960]', or '0.921 (single pass, no interval)' / '0.921 (2 rounds, no interval)'."""
    if est.has_interval:
        return f"{est.value:.3f} [{est.lo:.3f}-{est.hi:.3f}]"
    if est.method == SINGLE_PASS:
        return f"{est.value:.3f} ({SINGLE_PASS})"
    return f"{est.value:.3f} (no interval: {est.note})"


def difference_text(est: Estimate) -> str:
    """'+1.50 [-0.30, +3.30]' in points, or '+1.50 (1 seed: no claim)'."""
    if est.has_interval:
        return f"{est.value:+.2f} [{est.lo:+.2f}, {est.hi:+.2f}]"
    return f"{est.value:+.2f} ({est.note or 'no interval'})"


def verdict_text(c: Comparison) -> str:
    """'resolved (Holm p 0.012)', 'not resolved (Holm p 0.31)' or the reason there is none."""
    if c.verdict is None:
        return c.why_no_verdict or "no verdict"
    holm_note = f"Holm p {c.p_holm:.3g}" if c.family_size > 1 else f"p {c.p_holm:.3g}"
    return f"{c.verdict} ({holm_note})"


def holm_caption(comparisons: Sequence[Comparison], what: str) -> str:
    """The sentence a table's intro gives about its multiple comparisons ('Holm' in words, with the count)."""
    family = max((c.family_size for c in comparisons), default=0)
    if family <= 1:
        return (f"{what}: a verdict needs p below {ALPHA:g} (two-sided t test); "
                f"{'one row of this table has' if family == 1 else 'no row of this table has'} a verdict.")
    return (f"{what}: the {family} rows with a verdict are tested together, Holm (Holm-Bonferroni) adjusted: a "
            f"verdict needs its adjusted p below {ALPHA:g}, so that the chance of any false verdict in the table "
            f"stays at most {ALPHA:g}; the intervals shown are each row's own {100 * CONFIDENCE:.0f} %.")
