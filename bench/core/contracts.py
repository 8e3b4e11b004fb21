"""Typed contracts: the cell (what one measurement is asked to do) and the record (what it gave).

One place defines both, with pydantic v2 (`extra="forbid"`: an unknown key is refused by name,
and every problem of a value is collected at once):

- `CellConfig`: `model`, `model_args`, `measure`, `input_size`, `seed` and the sections
  `complexity` (`ComplexityOptions`), `latency` (`LatencyOptions`) and `train` (`TrainOptions`);
  `Resources`: how each job of a grid's array is sized.
- `Record`: `schema`, `cell_id`, `run`, `config`, `env`, `status`, `error`, `metrics`, the times,
  `job`, and (from `vtbench.record/2`) `model`, the registry's facts about the cell's model
  (`ModelBlock`). `vtbench.record/1` records, which have no `model` block, are read as they are
  (their `model` stays None: a block filled in at read time would state today's registry as
  though it were the one the record was measured under).
- `Remeasurement` (`vtbench.remeasurement/1`): a later latency measurement of a cell, written by
  `vtbench interleave` beside the cell's record, never over it: `remeasures` (the cell id of the
  record it re-measures), `number`, `run`, `session` (`RemeasureSession`: the interleave
  invocation's `id`, `protocol`, `started_at`, `finished_at`, `rounds`, `cells`),
  `record_finished_at` (the re-measured record's `finished_at`, as read), its own `env` and the
  latency `metrics`.

A cell's config is kept as given: validating it changes no value and adds no key
(`CellConfig.to_config()` gives back the dict it was validated from), because the cell id is the
hash of that dict and every committed run is keyed by it. Training options given as text
(`lr: "1e-4"`, as YAML 1.1 reads `1e-4`) are checked as numbers and kept as text in the cell;
`TrainOptions.parse` gives the typed values a run uses.

Standard library and pydantic only: the command line's `--help` imports this through
bench.pipeline.grid and bench.core.records, and must not import torch.
"""

from __future__ import annotations

import difflib
import math
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr,
                      ValidationError, ValidationInfo, WrapValidator, field_validator)

__all__ = ["CellConfig", "ComplexityOptions", "LatencyOptions", "TrainOptions", "Resources", "Record",
           "ModelBlock", "RecordError", "RecordConfig", "Remeasurement", "RemeasureSession", "SCHEMA",
           "READABLE_SCHEMAS", "REMEASUREMENT_SCHEMA", "MEASUREMENTS",
           "DTYPES", "COMPILE_MODES", "DEFAULT_LATENCY", "EXTRA_LATENCY_KEYS", "COMPLEXITY_KEYS", "DEFAULT_TIMING",
           "TIMING_KEYS",
           "problems_of", "did_you_mean", "model_block", "ValidationError"]

SCHEMA = "vtbench.record/2"
READABLE_SCHEMAS = ("vtbench.record/1", SCHEMA)
REMEASUREMENT_SCHEMA = "vtbench.remeasurement/1"
MEASUREMENTS = ("complexity", "latency", "train")
DTYPES = ("fp32", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEVICE_PATTERN = r"^(cpu|cuda(:\d+)?|mps)$"
CELL_ID_PATTERN = r"^[0-9a-f]{12}$"
# Coerce training values given as text to their field's type (`TrainOptions.parse`); a cell keeps them as given.
COERCE = "coerce"


def _described(kind: Any, text: str) -> Any:
    """`kind` whose problems read "VALUE is not TEXT" (see `problems_of`)."""
    return Annotated[kind, Field(description=text)]


PosInt = Annotated[StrictInt, Field(gt=0)]
NonNegInt = Annotated[StrictInt, Field(ge=0)]
Finite = Annotated[StrictInt | StrictFloat, Field(allow_inf_nan=False)]


class Contract(BaseModel):
    """Base of every contract: unknown keys refused, no protected `model_` names."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# ------------------------------------------------------------------------------------ resources
class Resources(Contract):
    """What each job of the array asks for (submitit/SLURM parameters).

    Args:
        timeout_min: wall-clock limit of one cell's job, in minutes.
        cpus_per_task: CPU cores per task.
        gpus_per_node: GPUs per node (0 on CPU).
        tasks_per_node: processes per node (>1: distributed training, one record from rank 0).
        nodes: nodes per job.
        mem_gb: memory per node in GB (None: the cluster's default).
        partition: SLURM partition (None: the cluster's default).
        array_parallelism: how many cells of the array SLURM runs at once.
        local_parallelism: how many cells the local executor runs at once (1 keeps latency clean).
        account: SLURM account. qos: SLURM quality of service. constraint: SLURM node features.
        signal_delay_s: seconds before the time limit at which SLURM sends the requeue signal.
        max_num_timeout: how many times a timed-out cell is requeued.
        setup: shell lines run before each job (module loads, venv activation).
    """

    timeout_min: _described(PosInt, "a positive integer") = 60
    cpus_per_task: _described(PosInt, "a positive integer") = 2
    gpus_per_node: _described(NonNegInt, "an integer >= 0") = 0
    tasks_per_node: _described(PosInt, "a positive integer") = 1
    nodes: _described(PosInt, "a positive integer") = 1
    mem_gb: _described(Annotated[StrictInt | StrictFloat, Field(gt=0)] | None, "a positive number or null") = None
    partition: _described(Annotated[StrictStr, Field(min_length=1)] | None, "a non-empty string or null") = None
    array_parallelism: _described(PosInt, "a positive integer") = 4
    local_parallelism: _described(PosInt, "a positive integer") = 1
    account: _described(Annotated[StrictStr, Field(min_length=1)] | None, "a non-empty string or null") = None
    qos: _described(Annotated[StrictStr, Field(min_length=1)] | None, "a non-empty string or null") = None
    constraint: _described(Annotated[StrictStr, Field(min_length=1)] | None, "a non-empty string or null") = None
    signal_delay_s: _described(NonNegInt | None, "an integer >= 0 or null") = None
    max_num_timeout: _described(NonNegInt, "an integer >= 0") = 3
    setup: _described(list[StrictStr], "a list of strings") = Field(default_factory=list)


# ---------------------------------------------------------------------------------- the sections
class ComplexityOptions(Contract):
    """Options of `bench.measure.complexity.measure_complexity`."""

    batch_size: _described(PosInt, "a positive integer") = 1


COMPLEXITY_KEYS = tuple(ComplexityOptions.model_fields)


class LatencyOptions(Contract):
    """Options of `bench.measure.latency.measure_latency`, under the names a cell gives them.

    The one renamed key: a cell's `compile` is `measure_latency`'s `compile_mode`. Fields up to
    `train_step` are filled into every latency cell (`DEFAULT_LATENCY`); the rest are passed only
    when given. tests/test_grid.py keeps these in step with `measure_latency`'s signature.
    """

    device: _described(Annotated[StrictStr, Field(pattern=DEVICE_PATTERN)], "cpu, cuda, cuda:N or mps") = "cpu"
    batch_size: _described(PosInt, "a positive integer") = 1
    dtype: _described(Literal[DTYPES], f"one of {', '.join(DTYPES)}") = "fp32"
    threads: _described(PosInt | None, "a positive integer or null") = None
    channels_last: _described(StrictBool, "true or false") = False
    compile_mode: _described(Literal[COMPILE_MODES] | None, f"null or one of {', '.join(COMPILE_MODES)}") = \
        Field(None, alias="compile")
    cuda_graphs: _described(StrictBool, "true or false") = False
    train_step: _described(StrictBool, "true or false") = False
    # Given only when a cell sets them (defaults: measure_latency's own, and DEFAULT_TIMING below).
    oom_retry: _described(StrictBool, "true or false") = True
    min_batch_size: _described(PosInt, "a positive integer") = 1
    cudnn_benchmark: _described(StrictBool | None, "true, false or null") = True
    in_channels: _described(PosInt, "a positive integer") = 3
    # CUDA: zero a 256 MB buffer before each timed iteration, outside its events (a cold L2 each time).
    flush_l2: _described(StrictBool, "true or false") = False
    # The protocol (bench/measure/latency.py). Warm-up: until the medians of two consecutive windows
    # of 3 iterations agree within `settle_tol`, at least `warmup_min_iters`; `warmup_max_s` ends an
    # unsettled warm-up only once `warmup_settle_iters` ran (settling's first chance is the 6th
    # iteration, so a slow forward is never cut before it could settle), `warmup_max_iters` and
    # `warmup_cap_s` end it regardless. Timed part: at least `min_iters` samples whatever the seconds,
    # and at least `min_time_s` seconds (CPU: as far as `max_time_s` allows).
    warmup_min_iters: _described(NonNegInt, "an integer >= 0") = 3
    warmup_max_iters: _described(NonNegInt, "an integer >= 0") = 50
    warmup_max_s: _described(Annotated[Finite, Field(ge=0)], "a number >= 0") = 20.0
    warmup_settle_iters: _described(NonNegInt, "an integer >= 0") = 8
    warmup_cap_s: _described(Annotated[Finite, Field(gt=0)], "a positive number") = 300.0
    settle_tol: _described(Annotated[Finite, Field(gt=0)], "a positive number") = 0.05
    min_iters: _described(PosInt, "a positive integer") = 10
    max_iters: _described(PosInt, "a positive integer") = 10_000
    min_time_s: _described(Annotated[Finite, Field(ge=0)], "a number >= 0") = 1.0
    max_time_s: _described(Annotated[Finite, Field(gt=0)], "a positive number") = 30.0

    def measure_kwargs(self) -> dict[str, Any]:
        """The keywords of `measure_latency` this section sets (by its parameter names), batch size apart."""
        return self.model_dump(exclude_unset=True, exclude={"batch_size"})


_FILLED_LATENCY = ("device", "batch_size", "dtype", "threads", "channels_last", "compile_mode", "cuda_graphs",
                   "train_step")
DEFAULT_LATENCY = {LatencyOptions.model_fields[n].alias or n: LatencyOptions.model_fields[n].default
                   for n in _FILLED_LATENCY}
EXTRA_LATENCY_KEYS = tuple(n for n in LatencyOptions.model_fields if n not in _FILLED_LATENCY)
TIMING_KEYS = ("warmup_min_iters", "warmup_max_iters", "warmup_max_s", "warmup_settle_iters", "warmup_cap_s",
               "settle_tol", "min_iters", "max_iters", "min_time_s", "max_time_s")
# The protocol's defaults (`measure_latency(**timing)` overrides them), from the one contract above.
DEFAULT_TIMING = {n: LatencyOptions.model_fields[n].default for n in TIMING_KEYS}


def _as_given(value: Any, handler: Any, info: ValidationInfo) -> Any:
    """Check `value` as the field's type; keep it as given unless the caller asked to coerce."""
    parsed = handler(value)
    return parsed if (info.context or {}).get(COERCE) else value


def _given(kind: Any, text: str) -> Any:
    """A training option's type: text such as "1e-4" accepted, kept as given in a cell (see module doc)."""
    return Annotated[kind, WrapValidator(_as_given), Field(description=text)]


class TrainOptions(Contract):
    """Training options of a cell's `train` section (`bench.measure.train.TrainConfig` documents each).

    Types only: `TrainConfig` adds the checks between options and the data set's.
    """

    dataset: _given(str, "a string") = "digits"
    data_root: _given(str | None, "a string or null") = None
    dataset_args: _given(dict, "a mapping") = Field(default_factory=dict)
    input_size: _given(int | list[int] | None, "an integer, [H, W] or null") = None
    epochs: _given(int, "an integer") = 15
    batch_size: _given(int, "an integer") = 64
    lr: _given(float, "a number") = 0.05
    optimizer: _given(str, "a string") = "sgd"
    momentum: _given(float, "a number") = 0.9
    weight_decay: _given(float, "a number") = 5e-4
    schedule: _given(str, "a string") = "cosine"
    warmup_epochs: _given(float, "a number") = 1.0
    warmup_start: _given(float, "a number") = 0.1
    step_size: _given(int | None, "an integer or null") = None
    gamma: _given(float, "a number") = 0.1
    label_smoothing: _given(float, "a number") = 0.0
    clip_grad_norm: _given(float | None, "a number or null") = 1.0
    ignore_index: _given(int, "an integer") = 255  # bench.measure.data.IGNORE_INDEX
    eval_every: _given(int, "an integer") = 1
    device: _given(str, "a string") = "cpu"
    amp: _given(bool, "true or false") = True
    threads: _given(int | None, "an integer or null") = None
    channels_last: _given(bool, "true or false") = True
    workers: _given(int, "an integer") = 0
    seed: _given(int, "an integer") = 0
    sync_bn: _given(bool, "true or false") = True
    find_unused_parameters: _given(bool, "true or false") = False
    deterministic: _given(bool, "true or false") = False
    logger: _given(str | list[str], "a logger name or a list of them") = Field(default_factory=lambda: ["jsonl"])
    keep_checkpoints: _given(int, "an integer") = 1
    mask_samples: _given(int, "an integer") = 4

    @classmethod
    def parse(cls, values: dict[str, Any]) -> dict[str, Any]:
        """`values` with text coerced to each option's type (ValidationError naming every bad one)."""
        return dict(cls.model_validate(values, context={COERCE: True}))


# -------------------------------------------------------------------------------------- the cell
InputSize = _described(PosInt | Annotated[list[PosInt], Field(min_length=2, max_length=2)],
                       "a positive integer or [H, W] (required)")


class CellConfig(Contract):
    """One fully resolved cell (docs/architecture.md, "Cell config"): the dict its id hashes."""

    model: _described(StrictStr, "a model name or package.module:callable")
    model_args: dict[str, Any] = Field(default_factory=dict)
    measure: _described(list[Literal[MEASUREMENTS]], f"a non-empty list of distinct {', '.join(MEASUREMENTS)}") \
        = Field(default_factory=lambda: ["complexity"])
    input_size: InputSize
    seed: _described(NonNegInt, "an integer >= 0") = 0
    complexity: ComplexityOptions = Field(default_factory=ComplexityOptions)
    latency: LatencyOptions = Field(default_factory=LatencyOptions)
    train: TrainOptions = Field(default_factory=TrainOptions)

    @field_validator("measure")
    @classmethod
    def _distinct(cls, measure: list[str]) -> list[str]:
        if not measure or len(set(measure)) != len(measure):
            raise ValueError("not distinct")
        return measure

    def to_config(self) -> dict[str, Any]:
        """The config dict, exactly as validated (given keys only, under their given names)."""
        return self.model_dump(by_alias=True, exclude_unset=True, warnings=False)


# ------------------------------------------------------------------------------------ the record
class ModelBlock(Contract):
    """The registry's facts about a record's model (`bench.core.modelfacts.facts_of`); family "other" if unregistered."""

    family: StrictStr
    task: StrictStr
    depth: StrictInt | None = None
    baseline: StrictStr | None = None
    stages: list[StrictStr] = Field(default_factory=list)
    replaced: StrictStr | None = None
    # The variant's keyword options with the defaults in force when the record was written: a cell
    # states only the options it sets, and a default may change later (the trunk init, the numerics).
    defaults: dict[str, Any] | None = None


def model_block(model: Any) -> dict[str, Any]:
    """The `model` block of a record of `model` (imports the registry, hence torch)."""
    from bench.core.modelfacts import facts_of, recorded_defaults

    facts = facts_of(model)
    return ModelBlock(family=facts.family, task=facts.task, depth=facts.depth, baseline=facts.baseline,
                      stages=list(facts.stages), replaced=facts.replaced,
                      defaults=recorded_defaults(model)).model_dump()


class RecordError(Contract):
    """What stopped a cell: exception type, first line of its message, traceback."""

    type: StrictStr
    message: StrictStr
    traceback: StrictStr | None = None


class RecordConfig(BaseModel):
    """A record's `config` as readers rely on it.

    Looser than `CellConfig` for now: `vtbench profile` records a list of batch sizes, and records
    written by older checkouts may hold keys a cell no longer has; the parts readers iterate over
    are typed.
    """

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: StrictStr | None = None
    model_args: dict[str, Any] | None = None
    measure: list[Any] | None = None
    complexity: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    train: dict[str, Any] | None = None


# Metrics the report computes with: a finite number or null when present (never text, never true/false).
NUMERIC_METRICS = ("gmacs", "gmacs_traced", "gmacs_fvcore", "counter_gap_pct", "params_m", "latency_ms_p50",
                   "latency_ms_p20", "latency_ms_p80", "latency_ms_mean", "latency_ms_min", "throughput_img_s",
                   "peak_mem_mb", "batch_size_used", "top1", "top5", "best_top1", "miou", "pixel_acc",
                   "best_miou", "train_time_s", "epoch_time_s", "epochs")


class Record(Contract):
    """One record file (bench/core/records.py): `vtbench.record/2`, or `/1` without a `model` block."""

    schema_: _described(Literal[READABLE_SCHEMAS], f"one of {', '.join(READABLE_SCHEMAS)}") = Field(alias="schema")
    cell_id: _described(Annotated[StrictStr, Field(pattern=CELL_ID_PATTERN)], "12 lowercase hex digits")
    run: StrictStr | None = None
    config: RecordConfig
    model: ModelBlock | None = None
    env: dict[str, Any] | None = None
    status: _described(Literal["ok", "error"], "ok or error")
    error: RecordError | None = None
    metrics: dict[str, Any] | None = None
    started_at: StrictStr | None = None
    finished_at: StrictStr | None = None
    duration_s: Finite | None = None
    job: dict[str, Any] | None = None
    # Written in place by `vtbench interleave` before re-measurements had their own files
    # (`Remeasurement`); still read, and what `bench.core.records.with_remeasurement` fills in.
    remeasured_at: dict[str, Any] | None = None

    @field_validator("metrics")
    @classmethod
    def _typed_metrics(cls, metrics: dict[str, Any] | None) -> dict[str, Any] | None:
        return _numeric_metrics_checked(metrics)


def _numeric_metrics_checked(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """`metrics` if each of NUMERIC_METRICS it holds is a finite number or null; else ValueError."""
    for key in NUMERIC_METRICS:
        value = (metrics or {}).get(key)
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                               and math.isfinite(value))
        if not ok:
            raise ValueError(f"metric {key} must be a finite number or null, not {_short(value)}")
    return metrics


class RemeasureSession(Contract):
    """The `vtbench interleave` invocation that took a re-measurement (one id for all its cells)."""

    id: _described(Annotated[StrictStr, Field(pattern=CELL_ID_PATTERN)], "12 lowercase hex digits")
    protocol: _described(Literal["interleaved"], "interleaved")
    started_at: StrictStr
    finished_at: StrictStr
    rounds: _described(PosInt, "a positive integer")
    cells: _described(PosInt, "a positive integer")


class Remeasurement(Contract):
    """A later latency measurement of a cell: RUN/records/remeasured/ID.N.json (bench/core/records.py).

    The cell's record (RUN/records/ID.json) is left as it was; readers take the latency from the
    newest re-measurement (highest `number`) and everything else from the record.
    """

    schema_: _described(Literal[REMEASUREMENT_SCHEMA], REMEASUREMENT_SCHEMA) = Field(alias="schema")
    remeasures: _described(Annotated[StrictStr, Field(pattern=CELL_ID_PATTERN)], "12 lowercase hex digits")
    number: _described(PosInt, "a positive integer")
    run: StrictStr | None = None
    session: RemeasureSession
    record_finished_at: StrictStr | None = None
    env: dict[str, Any]
    metrics: dict[str, Any]

    @field_validator("metrics")
    @classmethod
    def _typed_metrics(cls, metrics: dict[str, Any]) -> dict[str, Any]:
        return _numeric_metrics_checked(metrics)


# ---------------------------------------------------------------------------------------- errors
def problems_of(exc: ValidationError, model: type[BaseModel], data: Any = None, where: str = "") -> list[str]:
    """One line per problem of `exc`, in the grid's words ("latency.dtype: 'fp8' is not one of ...").

    Args:
        exc: what pydantic raised validating `data` as `model`.
        model: the validated class: a field is described by its `description`.
        data: the validated input, to quote a field's whole value (not the part of a union that failed).
        where: prefix of every location (`resources`; '' for a cell's top level).
    """
    out: list[str] = []
    for error in exc.errors(include_url=False):
        fields, owner, field = _walk(model, [str(p) for p in error["loc"]])
        path = ".".join([where, *fields] if where else fields) or where or "cell"
        if error["type"] == "extra_forbidden":
            out.append(f"{path}: unknown key {str(error['loc'][-1])!r}{_hint(str(error['loc'][-1]), owner)}")
        elif error["type"] == "missing":
            out.append(f"{path}: required")
        elif field is not None and field.description:
            value = _lookup(data, fields) if data is not None else error.get("input")
            out.append(f"{path}: {_short(value)} is not {field.description}")
        else:
            out.append(f"{path}: {_sentence(error['msg'])}")
    return list(dict.fromkeys(out))


def _walk(model: type[BaseModel], loc: list[str]) -> tuple[list[str], type[BaseModel], Any]:
    """(the field names `loc` goes through, the model holding the last of them, its FieldInfo or None)."""
    names: list[str] = []
    owner, field = model, None
    for part in loc:
        found = next((f for n, f in owner.model_fields.items() if part in (n, f.alias)), None)
        if found is None:
            break
        names.append(part)
        field = found
        inner = found.annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            owner, field = inner, None
    return names, owner, field


def _lookup(data: Any, path: list[str]) -> Any:
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _hint(key: str, owner: type[BaseModel]) -> str:
    names = [f.alias or n for n, f in owner.model_fields.items()]
    close = did_you_mean(key, names)
    hint = f" (did you mean {close}?)" if close else ""
    return f"{hint}; allowed: {', '.join(names)}"


def did_you_mean(word: Any, candidates: Any, n: int = 2) -> str:
    """Close matches of `word` among `candidates` ('a or b'), or '' when nothing is close."""
    candidates = list(candidates)
    close = difflib.get_close_matches(str(word), candidates, n=n, cutoff=0.6)
    if not close:
        close = [c for c in candidates if c.startswith(str(word)) or str(word).startswith(c)][:n]
    if not close:
        close = difflib.get_close_matches(str(word), candidates, n=n, cutoff=0.5)
    return " or ".join(close)


def _sentence(msg: str) -> str:
    msg = msg.removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
