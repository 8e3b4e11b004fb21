"""`vtbench train MODEL --dataset NAME`: train and evaluate one model, write one record.

    vtbench train resnet18 --dataset digits --set stem=cifar --epochs 15 --out runs/train/r18
    vtbench train vt_fpn_r50 --dataset shapes --input-size 64 --epochs 5 --batch-size 16
    vtbench train resnet50 --dataset imagenet --data-root /data/imagenet --device cuda
    vtbench train resnet18 --dataset digits --logger csv --logger tensorboard --out runs/r18
    vtbench train resnet18 --dataset digits --epochs 30 --out runs/r18 --resume   # extend to 30

OUT (default `runs/train/MODEL-DATASET`) receives `checkpoint.pt` (every epoch, atomic; only the
latest unless `--keep-checkpoints N`), the per-epoch logs of `--logger` (`metrics.jsonl` by
default, `metrics.csv`, `tensorboard/`) and `records/CELL_ID.json`, a record in DESIGN.md's
shape whose `config` is the cell a grid gives the same training (`bench.pipeline.grid.resolve_cell`), so
the record has that grid cell's id: `model`, `model_args` (with `num_classes` filled in),
`measure: [train]`, `input_size` and `seed` (the data set's side and 0 unless given), and in
`train` only the training options given here, as a grid's `train:` section holds only those it
sets (the checkpoint keeps every option, defaults included). `--resume` with a larger `--epochs`
than the checkpoint's extends the run (the schedule then spans the new total; the record's
metrics say `extended_from_epoch`); any other difference from the checkpoint's config is
refused, naming each differing option.
`--set KEY=VALUE` (YAML value, repeatable) sets a training option when KEY is a TrainConfig field
(`weight_decay`, `schedule`, `label_smoothing`, ...), a data-set option as `dataset_args.KEY`, and
a model option otherwise (`num_tokens`, `stem`, ...); `train.KEY` and `model_args.KEY` force
either side. `num_classes` defaults to the data set's.
The model's MACs and parameters are counted first at the training's input size (`measure:
[complexity, train]`; `--no-macs` skips them), so the record and a report over it have them.
The result goes to stdout (`--format table`, the default: one row of final metrics with GMACs and
params; `json`, `csv`); logs and the progress bar go to stderr.
Several processes (`torchrun --nproc-per-node 2 -m bench train ...`, or a multi-task SLURM job)
train data-parallel; only rank 0 writes. Bad input exits 2 with one line, before anything runs: an
unknown `--set` key (with a did-you-mean), a value the model's builder refuses, `--data-root` for
a data set that reads no files.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from bench.cli.commands import common
from bench.core.errors import UsageError
from bench.measure.loggers import LOGGERS

if TYPE_CHECKING:
    from bench.measure.train import TrainConfig

NAME = "train"
HELP = "Train and evaluate one model on a data set (classification or segmentation); write a record."

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vtbench train`."""
    parser.add_argument("model", metavar="MODEL", help="a registered model (`vtbench models`) or package.module:callable")
    dataset = parser.add_argument("--dataset", required=True, metavar="NAME", help="a registered data set")
    common.registry_help(parser, dataset, common.dataset_help)
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="local data folder (never downloaded), for a data set that reads files")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 15)")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size (default 64)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default 0.05; --set optimizer=adamw for AdamW)")
    parser.add_argument("--input-size", type=int, default=None, help="square image side (default: the data set's)")
    overrides = parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                                    help="training, data-set (dataset_args.KEY) or model option; repeatable")
    common.registry_help(parser, overrides, lambda: common.model_set_help(
        "training option (a TrainConfig field), data-set option (dataset_args.KEY) or model option"))
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (default runs/train/MODEL-DATASET)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoint.pt (a larger --epochs extends a finished run)")
    parser.add_argument("--logger", action="append", default=None, choices=list(LOGGERS),
                        help="per-epoch log: jsonl (OUT/metrics.jsonl, the default), csv (OUT/metrics.csv) "
                             "or tensorboard (OUT/tensorboard/, needs pip install 'vtbench[tensorboard]'); "
                             "repeatable")
    parser.add_argument("--keep-checkpoints", type=int, default=None, metavar="N",
                        help="keep the last N epoch checkpoints (default 1: OUT/checkpoint.pt only)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: all allowed)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-macs", action="store_true",
                        help="do not count the model's MACs and parameters before training (they go in the record)")
    common.add_format(parser, "the final metrics")


def split_overrides(pairs: list[tuple[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Route each --set pair to the training options or the model arguments (see module doc)."""
    from bench.core.contracts import TrainOptions

    fields = set(TrainOptions.model_fields)
    train_opts: dict[str, Any] = {"dataset_args": {}}
    model_args: dict[str, Any] = {}
    for key, value in pairs:
        if key.startswith("dataset_args."):
            train_opts["dataset_args"][key.split(".", 1)[1]] = value
        elif key.startswith("train."):
            train_opts[key.split(".", 1)[1]] = value
        elif key.startswith(("model_args.", "model.")):
            model_args[key.split(".", 1)[1]] = value
        elif key in fields:
            train_opts[key] = value
        else:
            model_args[key] = value
    return train_opts, model_args


def build_config(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """TrainConfig options and model arguments from the command line (flags win over --set)."""
    train_opts, model_args = split_overrides(common.parse_overrides(args.overrides))
    flags = {"dataset": args.dataset, "data_root": args.data_root, "epochs": args.epochs,
             "batch_size": args.batch_size, "lr": args.lr, "input_size": args.input_size,
             "device": args.device, "threads": args.threads, "seed": args.seed,
             "logger": args.logger, "keep_checkpoints": args.keep_checkpoints}
    train_opts.update({k: v for k, v in flags.items() if v is not None})
    return train_opts, model_args


def resolve_defaults(model: str, train_opts: dict[str, Any], model_args: dict[str, Any]) -> str:
    """Fill `num_classes` and `input_size` from the data set, so the config is fully resolved.

    Returns the task the model is trained for.
    """
    from bench.measure.data import dataset_spec, resolve_task

    spec = dataset_spec(train_opts["dataset"])
    task = spec.tasks[0] if len(spec.tasks) == 1 else _model_task(model, model_args)
    task = resolve_task(spec.name, task)
    classes = spec.num_classes[task]
    if "num_classes" not in model_args and classes is not None and _accepts(model, "num_classes"):
        model_args["num_classes"] = classes
    train_opts.setdefault("input_size", spec.default_input_size[task])
    return task


def cell_config(model: str, model_args: dict[str, Any], cfg: TrainConfig, given: Iterable[str], *,
                macs: bool = True) -> dict[str, Any]:
    """The grid cell of this training (`bench.pipeline.grid.resolve_cell`): `input_size` and `seed` at the top,
    and in `train` the options `given`, valued as `cfg` holds them (an empty `dataset_args` is none);
    `measure` is [complexity, train] (the model's MACs and parameters at the training's input size,
    so a report over training runs has its complexity table), or [train] alone without `macs`."""
    from bench.core.contracts import CellConfig
    from bench.pipeline.grid import resolve_cell

    values = cfg.to_dict()
    train = {k: values[k] for k in given
             if k not in ("input_size", "seed") and not (k == "dataset_args" and not values[k])}
    cell = resolve_cell({"model": model, "model_args": model_args, "measure": ["complexity", "train"] if macs
                         else ["train"], "input_size": cfg.input_size, "seed": cfg.seed, "train": train})
    return CellConfig.model_validate(cell).to_config()


def _model_task(model: str, model_args: dict[str, Any]) -> str:
    """The `task` attribute of the model (built once, for data sets that serve several tasks)."""
    from bench.core.modelref import build_from_ref

    return getattr(build_from_ref(model, model_args), "task", "cls")


def _accepts(model: str, option: str) -> bool:
    import inspect

    from bench.core.modelref import resolve_model_ref

    ref = resolve_model_ref(model)
    if ref.kind == "registry":
        from models import model_options

        return option in model_options(model)
    params = inspect.signature(ref.factory).parameters
    return option in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def output_dir(out: str | None, model: str, dataset: str) -> Path:
    """--out, or runs/train/MODEL-DATASET; UsageError when it cannot be a folder.

    The default is built from the model and data-set names, so that name is checked to be one
    safe path component (a model name cannot lead the output out of runs/train/).
    """
    from bench.core.records import check_path_name

    if out is None:
        name = check_path_name(f"{model.replace(':', '.')}-{dataset}", "default output folder name")
        return Path("runs") / "train" / name
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out} is an existing file, not a folder; choose another --out")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"--out {out}: {parent} is a file, so the folder cannot be made there")
    return path


def check_input(args: argparse.Namespace, train_opts: dict[str, Any], model_args: dict[str, Any]) -> None:
    """Refuse, before anything is built or written: a model option the model does not have (with a
    did-you-mean) or a value its builder refuses, and --data-root for a data set that reads no files."""
    from bench.core.contracts import TrainOptions
    from bench.measure.data import dataset_spec

    spec = dataset_spec(train_opts["dataset"])
    if train_opts.get("data_root") is not None and not reads_files(spec):
        raise UsageError(f"--data-root: data set {spec.name!r} reads no files ({spec.layout}); drop --data-root")
    common.check_registry_model_args(args.model, model_args, also=TrainOptions.model_fields,
                                     hint="; training options are TrainConfig fields, data-set options "
                                          "dataset_args.KEY")


def reads_files(spec: Any) -> bool:
    """Whether data set `spec` reads anything from --data-root: one that needs a root, or one whose
    layout names `data_root` as an alternative to its installed files (fashion_mnist)."""
    return bool(spec.needs_root or "data_root" in spec.layout)


# The metrics `vtbench train` prints, in this order (those the record has).
RESULT_KEYS = ("model", "dataset", "top1", "top5", "best_top1", "miou", "pixel_acc", "best_miou", "epochs",
               "epoch_time_s", "gmacs", "params_m")
RESULT_COLUMNS = (("model", "model", ""), ("dataset", "dataset", ""), ("top1", "top1", ".2f"),
                  ("top5", "top5", ".2f"), ("best_top1", "best top1", ".2f"), ("miou", "mIoU", ".2f"),
                  ("pixel_acc", "pixel acc", ".2f"), ("best_miou", "best mIoU", ".2f"), ("epochs", "epochs", ""),
                  ("epoch_time_s", "s/epoch", ".1f"), ("gmacs", "GMACs", ".4g"), ("params_m", "params M", ".3g"))


def result_row(record: dict[str, Any]) -> dict[str, Any]:
    """The row `vtbench train` prints: the model, the data set and the final metrics it has."""
    metrics, config = record["metrics"], record["config"]
    row = {"model": config["model"], "dataset": (config.get("train") or {}).get("dataset", "digits"),
           **{k: metrics[k] for k in RESULT_KEYS[2:] if k in metrics}}
    if "extended_from_epoch" in metrics:
        row["extended_from_epoch"] = metrics["extended_from_epoch"]
    return row


def run(args: argparse.Namespace) -> int:
    """Train through the runner (`bench.pipeline.runner.record_cell`, as a grid's cell is), write
    OUT/records/CELL_ID.json and print the result (rank 0); an error is recorded and re-raised, bad
    input is refused before anything runs and not recorded."""
    from bench.core.records import write_record
    from bench.measure.distributed import current_env
    from bench.measure.train import TrainConfig
    from bench.pipeline.runner import MeasureOptions, record_cell

    train_opts, model_args = build_config(args)
    check_input(args, train_opts, model_args)
    resolve_defaults(args.model, train_opts, model_args)
    cfg = TrainConfig.from_dict(train_opts)
    out = output_dir(args.out, args.model, cfg.dataset)
    if (out / "checkpoint.pt").exists() and not args.resume:
        raise UsageError(f"{out} already holds a checkpoint: pass --resume to continue it, or choose another --out")
    config = cell_config(args.model, model_args, cfg, given=train_opts, macs=not args.no_macs)
    with common.error_said_once():
        record, error = record_cell(config, out, rank=current_env().rank,
                                    options=MeasureOptions(resume=args.resume, progress=not args.no_progress))
    if isinstance(error, UsageError):
        raise error
    if record is not None:
        path = write_record(out / "records", record)
        log.info("%s record written to %s", record["status"], path)
        metrics = record["metrics"]
        if error is None and "extended_from_epoch" in metrics:
            log.info("extended: epochs 1-%s followed a %s-epoch schedule", metrics["extended_from_epoch"],
                     metrics["extended_from_epochs"])
        if error is None:
            columns = [c for c in RESULT_COLUMNS if c[0] in result_row(record)]
            common.emit_rows(args.format, [result_row(record)], table=lambda rows: common.format_table(rows, columns))
    if error is not None:
        raise error
    return 0
