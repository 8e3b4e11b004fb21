"""Per-epoch training logs that people can watch while a run trains: jsonl, CSV, TensorBoard.

`make_loggers(names, out_dir, task, history)` returns one logger per name; the trainer calls
`log_epoch(record)` after every epoch and `close()` at the end. Each logger is built from the
history a run resumes with, so its file holds exactly the epochs of the checkpoint (lines of
epochs lost to a crash are dropped) and then grows by one epoch at a time:

- `jsonl`: OUT/metrics.jsonl, one JSON object per epoch, every key of the epoch record (the
  format committed results and tests read; unchanged).
- `csv`: OUT/metrics.csv, a header then one row per epoch (as Lightning's CSVLogger): epoch, lr,
  losses, accuracy (top-1/top-5, or mIoU/pixel accuracy), images/s and times; a cell is empty
  when the epoch was not evaluated. Each row is flushed and fsync'ed, so a crash leaves whole rows.
- `tensorboard`: event files in OUT/tensorboard/ through `torch.utils.tensorboard.SummaryWriter`
  (needs the `tensorboard` package: `pip install 'vtbench[tensorboard]'`), one scalar per key and
  epoch (`train/loss`, `train/lr`, `train/images_per_s`, `test/loss`, `test/top1`, ...). A resumed
  run purges the steps past its checkpoint (`purge_step`), so TensorBoard shows one curve.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Protocol

from bench.core.errors import UsageError
from bench.core.util import write_text_atomic

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_EXTRA = "pip install 'vtbench[tensorboard]'"

# Epoch-record keys -> TensorBoard tags (and the CSV columns, in this order after `epoch`).
_TAGS = {"lr": "train/lr", "train_loss": "train/loss", "test_loss": "test/loss",
         "top1": "test/top1", "top5": "test/top5", "miou": "test/miou", "pixel_acc": "test/pixel_acc",
         "images_per_s": "train/images_per_s", "epoch_time_s": "time/epoch_s", "eval_time_s": "time/eval_s"}
_TASK_KEYS = {"cls": ("top1", "top5"), "seg": ("miou", "pixel_acc")}


class EpochLogger(Protocol):
    """What the trainer calls: one record per finished epoch, then close."""

    def log_epoch(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class JsonlLogger:
    """OUT/metrics.jsonl: one sorted-key JSON object per epoch, appended and fsync'ed."""

    def __init__(self, out_dir: Path, task: str, history: list[dict[str, Any]]):
        self.path = out_dir / METRICS_JSONL
        write_text_atomic(self.path, "".join(_json_line(r) for r in history))

    def log_epoch(self, record: dict[str, Any]) -> None:
        _append(self.path, _json_line(record))

    def close(self) -> None:
        pass


class CsvLogger:
    """OUT/metrics.csv: a header, then one row per epoch, each flushed to disk as it is written."""

    def __init__(self, out_dir: Path, task: str, history: list[dict[str, Any]]):
        self.path = out_dir / METRICS_CSV
        self.columns = csv_columns(task)
        write_text_atomic(self.path, "".join(self._row(r) for r in [None, *history]))

    def _row(self, record: dict[str, Any] | None) -> str:
        """The header (record None) or one epoch's row, as CSV text ending in a newline."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns if record is None else [_cell(record.get(c)) for c in self.columns])
        return buffer.getvalue()

    def log_epoch(self, record: dict[str, Any]) -> None:
        _append(self.path, self._row(record))

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Scalars per epoch in OUT/tensorboard/ (global step = epoch, 1-based)."""

    def __init__(self, out_dir: Path, task: str, history: list[dict[str, Any]]):
        writer_class = _summary_writer_class()
        # Steps after the checkpoint's last epoch were logged by a run that then died: purge them.
        self.writer = writer_class(str(out_dir / TENSORBOARD_DIR), purge_step=len(history) + 1)
        self.keys = [k for k in _TAGS if k not in _other_task_keys(task)]

    def log_epoch(self, record: dict[str, Any]) -> None:
        for key in self.keys:
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(_TAGS[key], value, global_step=int(record["epoch"]),
                                       walltime=record.get("time"))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


LOGGERS: dict[str, Callable[[Path, str, list[dict[str, Any]]], EpochLogger]] = {
    "jsonl": JsonlLogger, "csv": CsvLogger, "tensorboard": TensorBoardLogger}


def csv_columns(task: str) -> list[str]:
    """The CSV header for a task: epoch, then the logged keys that apply to it."""
    return ["epoch", *(k for k in _TAGS if k not in _other_task_keys(task)), "time"]


def check_loggers(names: list[str]) -> None:
    """UsageError for an unknown logger, or for `tensorboard` where its package is missing."""
    for name in names:
        if name not in LOGGERS:
            raise UsageError(f"unknown logger {name!r}; choose from {', '.join(LOGGERS)}")
    if "tensorboard" in names:
        _summary_writer_class()


def make_loggers(names: list[str], out_dir: Path, task: str,
                 history: list[dict[str, Any]]) -> list[EpochLogger]:
    """One logger per name, each holding the epochs of `history` (a resumed run's) already."""
    check_loggers(names)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [LOGGERS[name](out_dir, task, history) for name in names]


def _summary_writer_class() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch raises ImportError when the tensorboard package is missing
        raise UsageError(f"logger tensorboard needs the tensorboard package, which is not installed: "
                         f"{TENSORBOARD_EXTRA}") from exc
    return SummaryWriter


def _other_task_keys(task: str) -> tuple[str, ...]:
    return tuple(k for t, keys in _TASK_KEYS.items() if t != task for k in keys)


def _cell(value: Any) -> Any:
    return "" if value is None else value


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True) + "\n"


def _append(path: Path, text: str) -> None:
    """Append whole lines and force them to disk, so a crash leaves no half-written line."""
    with open(path, "a") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


__all__ = ["LOGGERS", "METRICS_JSONL", "METRICS_CSV", "TENSORBOARD_DIR", "EpochLogger", "JsonlLogger",
           "CsvLogger", "TensorBoardLogger", "make_loggers", "check_loggers", "csv_columns"]
