"""Training and evaluation: classification (top-1/top-5) and segmentation (mIoU, pixel accuracy).

`train(model_name, model_args, cfg, out_dir, *, resume=True, progress=True) -> dict` trains a
registered model (or a factory given as `package.module:callable`) on a data set from
`bench.measure.data`, evaluates it after every epoch, and returns the final metrics
(docs/architecture.md): `top1`, `top5`, `best_top1` (classification, %) or `miou`, `pixel_acc`,
`best_miou` (segmentation, %), plus `train_time_s`, `epoch_time_s`, `epochs`,
`resumed_from_epoch`, `warmup_iterations`, `iterations_per_epoch` and a few descriptive extras.

Recipe (the same defaults for baselines and VT models, so a comparison is fair): SGD with momentum
0.9 and weight decay (or AdamW, `optimizer="adamw"`, which trains deep networks from scratch on small
synthetic sets faster); a linear warm-up over `warmup_epochs` (default 1, at most a tenth of the
run) from `warmup_start` x lr up to the nominal lr, then a cosine over the remaining iterations to
zero (default), or a step schedule, all stepped per iteration (`lr_factor` gives the closed form;
docs/training.md); the global
gradient norm clipped to `clip_grad_norm` (default 1.0: VT-ResNets from scratch at lr 0.05 diverged
without it); optional label smoothing; pixel cross-entropy with an ignore index for segmentation. Mixed
precision (fp16 autocast + GradScaler) on CUDA only. The CPU thread count is set explicitly.

Logs (`logger`, see `bench.measure.loggers`): `jsonl` (OUT/metrics.jsonl, the default), `csv`
(OUT/metrics.csv) and `tensorboard` (OUT/tensorboard/), one entry per epoch: loss, lr, accuracy,
images/s. Checkpoints: one OUT/checkpoint.pt, replaced atomically after every epoch
(`keep_checkpoints` > 1 keeps that many, see `bench.measure.checkpoint`).

Extending a run: resuming with a larger `epochs` than the checkpoint's (and every other option
the same) continues from the checkpoint's last epoch to the new total, with the schedule defined
over the new total from then on; the metrics say so (`extended_from_epoch`, `extended_from_epochs`).
Any other difference is refused, naming each differing option with both values.

Reproducibility: the model is initialised from `seed` (identically on every process); the data
order comes from a DistributedSampler seeded with `seed` and the epoch; each process's torch,
CUDA, numpy and Python RNG states are saved with every checkpoint and restored on resume, so a run
interrupted after any epoch and resumed gives bit-identical weights on CPU.

Distributed: with several processes (see `bench.measure.distributed`) the global batch `batch_size` is
split evenly over the processes, gradients are averaged by DDP and BatchNorm statistics are
synchronised over the global batch, so P processes equal one process on the same global batch up
to floating-point rounding (random augmentation and dropout excepted: each process draws its own).
Only rank 0 writes the checkpoint and the logs.

Mask samples (segmentation): once the run is done, rank 0 writes the model's predictions on the
first `mask_samples` test scenes to OUT/mask_samples.npz (`MASK_SAMPLES_FILE`; the test set's first
items, so every seed and model of a study shows the same scenes) and the metrics name the file
(`mask_samples`, relative to OUT). The arrays: `image` (N, H, W, 3) uint8, each image stretched to
0..255 for display (the data sets normalise differently; the figure needs only what the eye sees),
`target` and `pred` (N, H, W) int16 with the ignore index kept, `index` (the test items shown),
`num_classes` and `ignore_index` (scalars) and, where the data set names its classes
(`class_names`), `class_names`. The report draws them
(`bench.analysis.plots.plot_mask_samples`) without torch.
"""

from __future__ import annotations

import io
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from bench.measure import checkpoint as ckpt
from bench.measure import distributed as bdist
from bench.measure import loggers as blog
from bench.core.contracts import COERCE, TrainOptions, ValidationError, problems_of
from bench.measure.data import IGNORE_INDEX, build_dataset, check_dataset_options, dataset_spec, resolve_task
from bench.core.errors import MeasurementError, UsageError
from bench.core.modelref import build_from_ref
from bench.core.util import atomic_write, image_hw

log = logging.getLogger(__name__)

METRICS_FILE = blog.METRICS_JSONL
MASK_SAMPLES_FILE = "mask_samples.npz"
SCHEDULES = ("cosine", "step", "constant")
OPTIMIZERS = ("sgd", "adamw")
# Options that say how a run is watched and stored, not what it computes. A cell records only
# the training options given (`bench.pipeline.grid.resolve_cell`), so adding one never changes a cell id.
OUTPUT_OPTIONS = ("logger", "keep_checkpoints", "mask_samples")
# Fields that change neither the trajectory nor the result: a checkpoint stays valid across them.
_FINGERPRINT_EXCLUDED = ("threads", "channels_last", "workers", "data_root", "eval_every", *OUTPUT_OPTIONS)
# May differ between a checkpoint and the run resuming it (a larger value extends the run).
_EXTENDABLE = ("train.epochs",)


class TrainConfig(TrainOptions):
    """How to train and evaluate one model on one data set: `TrainOptions` (types, defaults), checked together.

    Args:
        dataset: a name from `bench.measure.data.list_datasets()`.
        data_root: local folder for data sets that read files (never downloaded).
        dataset_args: extra options for the data set (e.g. `shapes`: `num_samples`).
        input_size: square image side (default: the data set's own, e.g. 32 for digits).
        epochs: number of epochs.
        batch_size: global batch size (split evenly over processes).
        lr: learning rate for the global batch.
        optimizer: `sgd` (momentum, L2 weight decay: the paper's recipe) or `adamw` (decoupled
            weight decay; `momentum` is then unused).
        momentum: SGD momentum.
        weight_decay: weight decay on every parameter.
        schedule: `cosine` (from the nominal lr at the end of the warm-up to zero at the end of
            the run), `step` (x `gamma` every `step_size` epochs) or `constant`; per iteration.
        warmup_epochs: epochs (fractions allowed) of linear warm-up at the start (0 = none),
            capped at a tenth of the run's iterations (`WARMUP_MAX_FRACTION`); the record's
            `warmup_iterations` says how many ran.
        warmup_start: lr factor of the first warm-up iteration.
        step_size: epochs between decays for `step` (default: a third of `epochs`).
        gamma: decay factor for `step`.
        label_smoothing: classification label smoothing (0 = off).
        clip_grad_norm: clip the global gradient norm to this value (None = off; default 1.0):
            VT models trained from scratch at lr 0.05 diverged without it, and baselines get it too.
        ignore_index: mask value ignored by the segmentation loss and metrics.
        eval_every: evaluate on the test split every N epochs, and always after the last (a CPU
            study sets it to its epoch count: evaluating the full test set costs an epoch's time).
        device: `cpu`, `cuda` or `cuda:N` (with several processes, each takes its local GPU).
        amp: fp16 mixed precision, used on CUDA only.
        threads: CPU threads per process (default: the CPUs this process may use).
        channels_last: model and batches in NHWC (`torch.channels_last`). The same arithmetic up to
            float summation order, as `threads`; measured 1.26-1.39x the images/s of NCHW when
            training ResNet-18 and VT-ResNet-18 on 2 CPU cores (results/train_speed_cpu), hence
            the default; off brings back NCHW.
        workers: DataLoader worker processes.
        seed: seed of initialisation and data order.
        sync_bn: synchronise BatchNorm over processes when distributed.
        find_unused_parameters: passed to DDP, for models with branches unused in a step.
        deterministic: cuDNN deterministic algorithms (slower) instead of benchmark mode.
        logger: where per-epoch metrics go: one name or a list of `jsonl` (OUT/metrics.jsonl),
            `csv` (OUT/metrics.csv), `tensorboard` (OUT/tensorboard/; needs the `tensorboard`
            extra). Default `jsonl`.
        keep_checkpoints: how many epoch checkpoints to keep: 1 (default) keeps OUT/checkpoint.pt
            only, N also keeps the N-1 before it (checkpoint.prev.pt, checkpoint.prev2.pt, ...).
        mask_samples: segmentation only: predictions on the first N test scenes written to
            OUT/mask_samples.npz after the run, for the report's figure (default 4; 0 = none).
    """

    def __init__(self, **values: Any) -> None:
        try:  # text given for a number ("1e-4", a `--set` value) becomes the number
            self.__pydantic_validator__.validate_python(values, self_instance=self, context={COERCE: True})
        except ValidationError as exc:
            problems = problems_of(exc, TrainOptions, values)
            raise UsageError("train option " + "; ".join(problems)) from None
        self._check()

    def _check(self) -> None:
        self.logger = _logger_names(self.logger)
        if self.keep_checkpoints < 1:
            raise UsageError(f"keep_checkpoints must be at least 1 (got {self.keep_checkpoints})")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"optimizer must be one of {', '.join(OPTIMIZERS)} (got {self.optimizer!r})")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"schedule must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})")
        for name in ("epochs", "batch_size", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.warmup_epochs < 0 or not 0 < self.warmup_start <= 1:
            raise UsageError(f"warmup_epochs must be >= 0 and warmup_start in (0, 1] "
                             f"(got {self.warmup_epochs}, {self.warmup_start})")
        if not (self.device == "cpu" or str(self.device).startswith("cuda")):
            raise UsageError(f"device must be cpu or cuda[:N] (got {self.device!r})")
        if isinstance(self.input_size, (list, tuple)):
            height, width = image_hw(self.input_size)
            if height != width:
                raise UsageError(f"training takes square inputs (got input_size {list(self.input_size)})")
            self.input_size = height
        if not isinstance(self.dataset_args, dict):
            raise UsageError(f"dataset_args must be a mapping (got {self.dataset_args!r})")
        self._check_ranges()
        if self.dataset_args:
            check_dataset_options(self.dataset, self.dataset_args)

    def _check_ranges(self) -> None:
        """Refuse values that would be silently read as "default" or poison the run.

        0 is falsy: `input_size: 0` and `threads: 0` used to fall back to the defaults, so the
        config recorded in the cell said something that did not run. NaN and inf pass every
        comparison, and an lr of NaN trains for minutes before the loss says so.
        """
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UsageError(f"train option {name} must be a finite number (got {value})")
        for name in ("input_size", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UsageError(f"{name} must be a positive integer, or unset for the default (got {value!r})")
        if not self.lr > 0:
            raise UsageError(f"lr must be a positive number (got {self.lr})")
        if self.workers < 0:
            raise UsageError(f"workers must be >= 0 (got {self.workers})")
        if not 0 <= self.mask_samples <= MAX_MASK_SAMPLES:
            raise UsageError(f"mask_samples must be an integer in 0..{MAX_MASK_SAMPLES} (got {self.mask_samples!r})")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a dict; an unknown key is a UsageError listing the known ones."""
        known = set(cls.model_fields)
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown train option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict copy (JSON-able)."""
        return self.model_dump()


def _logger_names(value: Any) -> list[str]:
    """`logger` as a list of known names without repeats (a string may hold one, or several joined by commas)."""
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise UsageError(f"logger must be one of {', '.join(blog.LOGGERS)} or a non-empty list of them "
                         f"(got {value!r})")
    unknown = [n for n in names if n not in blog.LOGGERS]
    if unknown:
        raise UsageError(f"unknown logger {unknown[0]!r}; choose from {', '.join(blog.LOGGERS)}")
    return list(dict.fromkeys(names))


MAX_MASK_SAMPLES = 64
"""A figure shows a handful of scenes; more would only make the file large."""

WARMUP_MAX_FRACTION = 0.1
"""The warm-up lasts `warmup_epochs` epochs but at most this fraction of the run's iterations: on a
3-epoch run one epoch of warm-up would spend a third of the run below the nominal lr."""


def warmup_iterations(steps_per_epoch: int, cfg: TrainConfig) -> int:
    """Iterations of linear warm-up: `warmup_epochs` epochs, at most `WARMUP_MAX_FRACTION` of the run."""
    total = steps_per_epoch * cfg.epochs
    return min(round(cfg.warmup_epochs * steps_per_epoch), int(WARMUP_MAX_FRACTION * total))


def lr_factor(iteration: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """The lr multiplier of optimizer step `iteration` (0-based): linear warm-up, then cosine / step / constant.

    With W = `warmup_iterations` and T = `epochs` x `steps_per_epoch`: steps 0..W-1 rise linearly
    from `warmup_start` (step i: warmup_start + (1 - warmup_start) i / W); step W runs at the nominal
    lr (factor 1, the peak); a cosine then decays over the remaining T - W steps, step i at
    (1 + cos(pi (i - W) / (T - W))) / 2, reaching 0 one step after the last. `step` multiplies the
    warm-up by `gamma` ** (epochs done // `step_size`); `constant` is the warm-up, then 1.
    """
    total = steps_per_epoch * cfg.epochs
    warm_iters = warmup_iterations(steps_per_epoch, cfg)
    ramp = 1.0 if iteration >= warm_iters else cfg.warmup_start + (1 - cfg.warmup_start) * iteration / warm_iters
    if cfg.schedule == "cosine":
        done = min(max(iteration - warm_iters, 0) / max(total - warm_iters, 1), 1.0)
        return ramp * 0.5 * (1 + math.cos(math.pi * done))
    if cfg.schedule == "step":
        return ramp * cfg.gamma ** int(iteration / steps_per_epoch // (cfg.step_size or max(1, cfg.epochs // 3)))
    return ramp


class TrainingDiverged(MeasurementError):
    """The loss became NaN or infinite: a measurement without a result, not a vtbench bug."""


def train(model_name: str, model_args: dict[str, Any] | None, cfg: TrainConfig | dict,
          out_dir: str | os.PathLike, *, resume: bool = True, progress: bool = True) -> dict[str, Any]:
    """Train `model_name` under `cfg`, writing OUT/checkpoint.pt and OUT/metrics.jsonl.

    Args:
        model_name: a registry name (`models.list_models()`) or `package.module:callable`.
        model_args: keyword arguments of the model builder.
        cfg: a TrainConfig or a dict for `TrainConfig.from_dict`.
        out_dir: folder of the checkpoint and per-epoch metrics (rank 0 writes).
        resume: continue from OUT/checkpoint.pt when it exists (else start afresh, replacing it).
        progress: show a tqdm bar (only on a terminal, only on rank 0).

    Returns:
        The final metrics (see the module docstring).
    """
    cfg = cfg if isinstance(cfg, TrainConfig) else TrainConfig.from_dict(dict(cfg))
    denv = bdist.current_env()
    device = _select_device(cfg.device, denv)
    created = bdist.init_process_group(denv, device)
    try:
        trainer = Trainer(model_name, dict(model_args or {}), cfg, Path(out_dir), device, progress)
        return trainer.run(resume=resume)
    finally:
        if created:
            dist.destroy_process_group()


def _select_device(name: str, denv: bdist.DistEnv) -> torch.device:
    """The device of this process: with several processes on CUDA, the local rank's GPU."""
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise UsageError("device cuda requested but CUDA is not available here; use --device cpu")
    if device.index is None:
        device = torch.device("cuda", denv.local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def config_fingerprint(model_name: str, model_args: dict[str, Any], cfg: TrainConfig) -> str:
    """Hash of everything that determines the training trajectory."""
    return ckpt.fingerprint(fingerprinted_config(model_name, model_args, cfg.to_dict()))


def fingerprinted_config(model_name: str, model_args: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's config that its checkpoint fingerprint covers."""
    values = {k: v for k, v in train.items() if k not in _FINGERPRINT_EXCLUDED}
    return {"model": model_name, "model_args": model_args, "train": values}


def build_network(model_name: str, model_args: dict[str, Any]) -> nn.Module:
    """`models.build_model(name, **args)`, or a factory given as `package.module:callable`."""
    return build_from_ref(model_name, model_args)


class ShardSampler(Sampler[int]):
    """Every `world_size`-th index from `rank`, in order, without padding (for evaluation)."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------

def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of samples whose target is among the top-k logits, for each k (k capped at classes)."""
    kmax = min(max(ks), logits.size(1))
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(targets.view(-1, 1))
    return [int(hits[:, :min(k, kmax)].any(dim=1).sum()) for k in ks]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """`(C, C)` int64 matrix, rows = true class, columns = predicted; ignored pixels dropped."""
    keep = target != ignore_index
    target, pred = target[keep].long(), pred[keep].long()
    if target.numel() and (int(target.max()) >= num_classes or int(target.min()) < 0):
        raise ValueError(f"mask holds label {int(target.max())} outside 0..{num_classes - 1} "
                         f"(and not the ignore index {ignore_index})")
    flat = target * num_classes + pred
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def segmentation_metrics(conf: torch.Tensor) -> dict[str, Any]:
    """mIoU and pixel accuracy (in %) from a confusion matrix.

    IoU_c = TP / (TP + FP + FN); the mean is over classes present in the ground truth or the
    predictions (a class absent from both has no defined IoU and is skipped).
    """
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    valid = union > 0
    iou = torch.where(valid, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    total = conf.sum()
    return {"miou": float(iou[valid].mean() * 100) if valid.any() else float("nan"),
            "pixel_acc": float(tp.sum() / total * 100) if total > 0 else float("nan"),
            "iou_per_class": [None if math.isnan(v) else round(v * 100, 4) for v in iou.tolist()]}


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------

class Trainer:
    """One training run: data, model, optimiser, checkpoints. Built and used by `train`.

    Args:
        model_name: registry name or `package.module:callable`.
        model_args: builder keyword arguments.
        cfg: the training config.
        out_dir: where rank 0 writes the checkpoint and metrics.
        device: this process's device.
        progress: whether a tqdm bar may be shown.
    """

    def __init__(self, model_name: str, model_args: dict[str, Any], cfg: TrainConfig,
                 out_dir: Path, device: torch.device, progress: bool):
        self.cfg, self.out_dir, self.device = cfg, out_dir, device
        self.model_name, self.model_args = model_name, model_args
        self.denv = bdist.current_env()
        self.threads = _set_threads(cfg.threads)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.fingerprint = config_fingerprint(model_name, model_args, cfg)
        self.show_progress = progress and self.denv.is_main and sys.stderr.isatty()
        blog.check_loggers(cfg.logger)  # a missing tensorboard package fails before any work
        dataset_spec(cfg.dataset)  # unknown name fails before a model is built
        seed_everything(cfg.seed)
        self.net = build_network(model_name, model_args)
        self.task = getattr(self.net, "task", "cls")
        self.train_set, self.test_set = self._build_data()
        self.num_classes = self._check_classes()
        self.model = self._wrap_model()
        self.optimizer = self._build_optimizer()
        self.use_amp = cfg.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.criterion = self._build_criterion()
        self.train_loader, self.test_loader = self._build_loaders()
        self.scheduler = self._build_scheduler(len(self.train_loader))
        self.history: list[dict[str, Any]] = []
        # Each time a checkpoint was resumed with more epochs: {"at_epoch", "from_epochs", "to_epochs"}.
        self.extensions: list[dict[str, int]] = []
        self.loggers: list[blog.EpochLogger] = []

    # -- set-up ---------------------------------------------------------------------------
    def _build_data(self) -> tuple[Dataset, Dataset]:
        cfg = self.cfg
        task = resolve_task(cfg.dataset, self.task)
        kwargs = dict(root=cfg.data_root, input_size=cfg.input_size, task=task, **cfg.dataset_args)
        return build_dataset(cfg.dataset, "train", **kwargs), build_dataset(cfg.dataset, "test", **kwargs)

    def _check_classes(self) -> int:
        data_classes = int(self.train_set.num_classes)
        model_classes = getattr(self.net, "num_classes", None)
        if model_classes is not None and int(model_classes) != data_classes:
            raise UsageError(f"model {self.model_name!r} has {model_classes} classes but dataset "
                             f"{self.cfg.dataset!r} has {data_classes}; set num_classes={data_classes}")
        return data_classes

    def _wrap_model(self) -> nn.Module:
        self.net.to(self.device, memory_format=self.memory_format)
        if not self.denv.enabled:
            return self.net
        if self.cfg.sync_bn:
            self.net = bdist.convert_sync_batchnorm(self.net, self.device)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            self.net, device_ids=ids, find_unused_parameters=self.cfg.find_unused_parameters)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(self.net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)

    def _build_scheduler(self, steps_per_epoch: int):
        """A per-iteration LambdaLR of `lr_factor` (its state, the iteration count, resumes exactly)."""
        cfg, steps = self.cfg, max(1, steps_per_epoch)
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda it: lr_factor(it, steps, cfg))

    def _build_criterion(self) -> nn.Module:
        if self.task == "seg":
            return nn.CrossEntropyLoss(ignore_index=self.cfg.ignore_index)
        return nn.CrossEntropyLoss(label_smoothing=self.cfg.label_smoothing)

    def _build_loaders(self) -> tuple[DataLoader, DataLoader]:
        world, rank = self.denv.world_size, self.denv.rank
        if self.cfg.batch_size % world:
            raise UsageError(f"batch_size {self.cfg.batch_size} does not split evenly over {world} processes")
        per_rank = self.cfg.batch_size // world
        sampler = DistributedSampler(self.train_set, num_replicas=world, rank=rank, shuffle=True,
                                     seed=self.cfg.seed)
        common = dict(num_workers=self.cfg.workers, pin_memory=self.device.type == "cuda",
                      persistent_workers=False)
        # drop_last keeps every global batch full (and the same for 1 and P processes)
        train_loader = DataLoader(self.train_set, batch_size=per_rank, sampler=sampler,
                                  drop_last=len(sampler) >= per_rank, **common)
        test_loader = DataLoader(self.test_set, batch_size=per_rank,
                                 sampler=ShardSampler(len(self.test_set), rank, world), **common)
        return train_loader, test_loader

    # -- the loop -------------------------------------------------------------------------
    def run(self, resume: bool) -> dict[str, Any]:
        """Resume if asked and possible, train the remaining epochs, return the final metrics."""
        start = self._resume() if resume else self._start_fresh()
        if self.denv.is_main:
            self.loggers = blog.make_loggers(self.cfg.logger, self.out_dir, self.task, self.history)
        log.info("training %s on %s (%s, %d train / %d test images, input %d) for epochs %d..%d "
                 "on %s x%d, %d thread(s)", self.model_name, self.cfg.dataset, self.task,
                 len(self.train_set), len(self.test_set), self.train_set.input_size, start + 1,
                 self.cfg.epochs, self.device, self.denv.world_size, self.threads)
        try:
            for epoch in range(start, self.cfg.epochs):
                record = self._run_epoch(epoch)
                self.history.append(record)
                self._save(epoch + 1)
                log.info("epoch %d/%d: %s", epoch + 1, self.cfg.epochs, _summary(record))
        finally:
            for logger in self.loggers:
                logger.close()
        metrics = self._final_metrics(start)
        samples = self._write_mask_samples()
        if samples is not None:
            metrics["mask_samples"] = samples
        return metrics

    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        lr = self.optimizer.param_groups[0]["lr"]
        train_stats = self._train_epoch(epoch)
        tic = time.perf_counter()
        due = (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs
        eval_stats = self._evaluate() if due else {}
        return {"epoch": epoch + 1, "lr": lr, **train_stats, **eval_stats,
                "eval_time_s": time.perf_counter() - tic, "time": time.time()}

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        self.train_loader.sampler.set_epoch(epoch)
        sums = torch.zeros(2, dtype=torch.float64)  # loss * n, n
        bar = self._progress_bar(epoch)
        tic = time.perf_counter()
        for step, (images, targets) in enumerate(self.train_loader):
            loss = self._train_step(images, targets)
            sums += torch.tensor([loss.item() * len(images), len(images)], dtype=torch.float64)
            if bar is not None:
                elapsed = time.perf_counter() - tic
                bar.set_postfix(loss=f"{sums[0] / sums[1]:.4f}",
                                img_s=f"{sums[1] * self.denv.world_size / elapsed:.1f}")
                bar.update()
        elapsed = time.perf_counter() - tic
        if bar is not None:
            bar.close()
        bdist.all_reduce_sum(sums)
        if not math.isfinite(float(sums[0])):
            raise TrainingDiverged(f"training diverged: mean loss of epoch {epoch + 1} is not finite; "
                                   "lower lr or set clip_grad_norm")
        return {"train_loss": float(sums[0] / max(sums[1], 1)), "epoch_time_s": elapsed,
                "images_per_s": float(sums[1]) / elapsed if elapsed > 0 else float("nan")}

    def _train_step(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        images = self._batch(images, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
            logits = self.model(images)
        loss = self.criterion(self._match(logits.float(), targets), targets)
        if not self.use_amp and not torch.isfinite(loss):  # under AMP the scaler skips such steps
            raise TrainingDiverged(f"training diverged: loss is {loss.item()} at epoch "
                                   f"{len(self.history) + 1}; lower lr or set clip_grad_norm")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()  # per iteration: warm-up, then the schedule (lr_factor)
        return loss.detach()

    def _batch(self, images: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
        """A batch of images on this run's device, in the model's memory format."""
        return images.to(self.device, non_blocking=non_blocking, memory_format=self.memory_format)

    def _match(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Segmentation logits resized to the mask when a model predicts at another size."""
        if self.task == "seg" and logits.shape[-2:] != targets.shape[-2:]:
            return F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    def _progress_bar(self, epoch: int):
        if not self.show_progress:
            return None
        return tqdm(total=len(self.train_loader), desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                    unit="batch", leave=False, dynamic_ncols=True)

    @torch.no_grad()
    def _evaluate(self) -> dict[str, Any]:
        """Test-set metrics, summed over processes (each evaluates its own shard)."""
        self.net.eval()
        if self.task == "seg":
            return self._evaluate_seg()
        sums = torch.zeros(4, dtype=torch.float64)  # loss * n, top-1 hits, top-5 hits, n
        for images, targets in self.test_loader:
            images, targets = self._batch(images), targets.to(self.device)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
                logits = self.net(images).float()
            top1, top5 = topk_correct(logits, targets)
            loss = F.cross_entropy(logits, targets, reduction="sum").item()
            sums += torch.tensor([loss, top1, top5, len(targets)], dtype=torch.float64)
        bdist.all_reduce_sum(sums)
        n = max(float(sums[3]), 1.0)
        return {"test_loss": float(sums[0]) / n, "top1": float(sums[1]) / n * 100,
                "top5": float(sums[2]) / n * 100}

    def _evaluate_seg(self) -> dict[str, Any]:
        conf = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        sums = torch.zeros(2, dtype=torch.float64)  # loss sum over valid pixels, valid pixels
        for images, targets in self.test_loader:
            images, targets = self._batch(images), targets.to(self.device)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
                logits = self._match(self.net(images).float(), targets)
            conf += confusion_matrix(logits.argmax(1), targets, self.num_classes, self.cfg.ignore_index).cpu()
            loss = F.cross_entropy(logits, targets, ignore_index=self.cfg.ignore_index, reduction="sum")
            sums += torch.tensor([loss.item(), float((targets != self.cfg.ignore_index).sum())],
                                 dtype=torch.float64)
        bdist.all_reduce_sum(conf)
        bdist.all_reduce_sum(sums)
        return {"test_loss": float(sums[0]) / max(float(sums[1]), 1.0), **segmentation_metrics(conf)}

    # -- mask samples ---------------------------------------------------------------------
    @torch.no_grad()
    def _write_mask_samples(self) -> str | None:
        """Rank 0 writes OUT/mask_samples.npz (see the module docstring); returns its name, or None.

        Written from the final weights on every call, a resumed finished run included, so the file
        always matches the checkpoint; an earlier file is removed when samples are off.
        """
        count = min(self.cfg.mask_samples, len(self.test_set)) if self.task == "seg" else 0
        path = self.out_dir / MASK_SAMPLES_FILE
        if self.denv.is_main:
            if count > 0:
                _save_npz(path, self._mask_sample_arrays(count))
            else:
                path.unlink(missing_ok=True)
        bdist.barrier()
        return MASK_SAMPLES_FILE if count > 0 else None

    def _mask_sample_arrays(self, count: int) -> dict[str, np.ndarray]:
        """The first `count` test scenes, their masks and the model's argmax, as evaluation computes it."""
        images, targets = zip(*(self.test_set[i] for i in range(count)))
        batch, target = self._batch(torch.stack(images)), torch.stack(targets).to(self.device)
        self.net.eval()
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
            logits = self._match(self.net(batch).float(), target)
        arrays = {"image": display_images(batch.float().cpu().numpy()), "index": np.arange(count),
                  "num_classes": np.array(self.num_classes), "ignore_index": np.array(self.cfg.ignore_index),
                  "target": target.cpu().numpy().astype(np.int16),
                  "pred": logits.argmax(1).cpu().numpy().astype(np.int16)}
        names = getattr(self.test_set, "class_names", None)
        if names is not None and len(names) == self.num_classes:
            arrays["class_names"] = np.array([str(n) for n in names])
        return arrays

    # -- checkpoints ----------------------------------------------------------------------
    def _save(self, epochs_done: int) -> None:
        """Gather every process's RNG state; rank 0 writes the checkpoint and metrics atomically."""
        rng = _gather_rng_states(self.denv)
        if self.denv.is_main:
            state = {"fingerprint": self.fingerprint, "epoch": epochs_done,
                     "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                     "rng": rng, "history": self.history, "extensions": self.extensions,
                     "config": {"model": self.model_name, "model_args": self.model_args,
                                "train": self.cfg.to_dict()}}
            ckpt.save_checkpoint(self.out_dir, state, keep=self.cfg.keep_checkpoints)
            for logger in self.loggers:  # after the checkpoint: a resume rewrites them from its history
                logger.log_epoch(self.history[-1])
        bdist.barrier()

    def _resume(self) -> int:
        """Load OUT/checkpoint.pt if there is one; return the number of epochs already done.

        A checkpoint whose config differs only by fewer `epochs` is extended (`_extend`); any
        other difference is a CheckpointError naming each differing key.
        """
        if self.denv.is_main:
            ckpt.remove_stale_temp_files(self.out_dir)
        current = fingerprinted_config(self.model_name, self.model_args, self.cfg.to_dict())
        state = ckpt.load_checkpoint(self.out_dir, self.fingerprint, config=current,
                                     accept=_is_extension, saved_config=_saved_fingerprinted_config)
        if state is None:
            return self._start_fresh()
        self.extensions = [dict(e) for e in state.get("extensions", [])]
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.history = list(state["history"])
        rng = state["rng"]
        if len(rng) != self.denv.world_size:
            log.warning("checkpoint has RNG states of %d process(es), this run has %d: "
                        "random streams will differ from an uninterrupted run", len(rng), self.denv.world_size)
        ckpt.restore_rng_state(rng[self.denv.rank % len(rng)])
        if state["fingerprint"] != self.fingerprint:
            self._extend(state)
        bdist.barrier()
        log.info("resumed from %s at epoch %d", self.out_dir / ckpt.CHECKPOINT, state["epoch"])
        return int(state["epoch"])

    def _extend(self, state: dict[str, Any]) -> None:
        """Continue a checkpoint written for fewer epochs: the schedule now spans `cfg.epochs`.

        The scheduler keeps its iteration count; the optimiser's lr, which the old schedule set
        (about 0 at the end of a cosine), is set to the new schedule's value at that iteration.
        """
        done, before = int(state["epoch"]), int(state["config"]["train"]["epochs"])
        self.extensions.append({"at_epoch": done, "from_epochs": before, "to_epochs": self.cfg.epochs})
        steps = max(1, len(self.train_loader))
        factor = lr_factor(self.scheduler.last_epoch, steps, self.cfg)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * factor
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        log.warning("extending the run in %s: %d of its %d epochs were done; training on to %d epochs "
                    "from epoch %d, with the %s schedule redefined over %d epochs (lr factor now %.4g)",
                    self.out_dir, done, before, self.cfg.epochs, done + 1, self.cfg.schedule,
                    self.cfg.epochs, factor)

    def _start_fresh(self) -> int:
        if self.denv.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temp_files(self.out_dir)
            for name in (blog.METRICS_JSONL, blog.METRICS_CSV):  # an earlier run's, in this folder
                (self.out_dir / name).unlink(missing_ok=True)
        bdist.barrier()
        return 0

    def _final_metrics(self, resumed_from: int) -> dict[str, Any]:
        if not self.history:
            raise RuntimeError("no epoch was trained (epochs < 1?)")
        last = self.history[-1]
        metrics: dict[str, Any] = {}
        if self.task == "seg":
            metrics.update(miou=last["miou"], pixel_acc=last["pixel_acc"],
                           best_miou=max(h["miou"] for h in self.history if "miou" in h))
        else:
            metrics.update(top1=last["top1"], top5=last["top5"],
                           best_top1=max(h["top1"] for h in self.history if "top1" in h))
        metrics.update(
            train_time_s=sum(h["epoch_time_s"] + h["eval_time_s"] for h in self.history),
            epoch_time_s=float(np.mean([h["epoch_time_s"] for h in self.history])),
            epochs=len(self.history), resumed_from_epoch=resumed_from,
            **_extension_metrics(self.extensions),
            train_loss=last["train_loss"], test_loss=last["test_loss"],
            images_per_s=float(np.mean([h["images_per_s"] for h in self.history])),
            world_size=self.denv.world_size, threads=self.threads, channels_last=self.cfg.channels_last,
            train_images=len(self.train_set), test_images=len(self.test_set),
            warmup_iterations=warmup_iterations(max(1, len(self.train_loader)), self.cfg),
            iterations_per_epoch=len(self.train_loader),
            input_size=self.train_set.input_size, task=self.task, num_classes=self.num_classes)
        return metrics


def display_images(batch: np.ndarray) -> np.ndarray:
    """Normalised (N, C, H, W) model inputs as (N, H, W, 3) uint8: each image stretched to 0..255.

    One scale per image over all its channels keeps its colours' relations; a one-channel image
    is repeated to grey.
    """
    rgb = np.repeat(batch, 3, axis=1) if batch.shape[1] == 1 else batch[:, :3]
    low = rgb.min(axis=(1, 2, 3), keepdims=True)
    span = rgb.max(axis=(1, 2, 3), keepdims=True) - low
    scaled = np.where(span > 0, (rgb - low) / np.where(span > 0, span, 1), 0.0)
    return np.moveaxis(np.round(scaled * 255), 1, -1).astype(np.uint8)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A compressed .npz written atomically (a reader never sees half a file)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())


def _set_threads(threads: int | None) -> int:
    """Fix the CPU thread count: `threads`, else the CPUs this process may run on."""
    if not threads:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        threads = max(1, (available or 1) // max(local, 1))
    torch.set_num_threads(int(threads))
    return int(threads)


def _gather_rng_states(denv: bdist.DistEnv) -> list[dict[str, Any]]:
    """Every process's RNG state, in rank order (on one process, a one-element list)."""
    mine = ckpt.capture_rng_state()
    if not denv.enabled:
        return [mine]
    gathered: list[Any] = [None] * denv.world_size
    dist.all_gather_object(gathered, mine)
    return gathered


def _saved_fingerprinted_config(state: dict[str, Any]) -> dict[str, Any] | None:
    """The fingerprinted part of the config a checkpoint was written under (None if it has none)."""
    config = state.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("train"), dict):
        return None
    return fingerprinted_config(config.get("model"), config.get("model_args"), config["train"])


def _is_extension(differences: dict[str, tuple[Any, Any]]) -> bool:
    """Whether a checkpoint differs from the resuming run only by having fewer epochs."""
    if set(differences) != set(_EXTENDABLE):
        return False
    before, now = differences["train.epochs"]
    return isinstance(before, int) and isinstance(now, int) and now > before


def _extension_metrics(extensions: list[dict[str, int]]) -> dict[str, int]:
    """`extended_from_epoch` (where the first larger schedule took over) and the epochs first planned."""
    if not extensions:
        return {}
    first = extensions[0]
    return {"extended_from_epoch": int(first["at_epoch"]), "extended_from_epochs": int(first["from_epochs"])}


def _summary(record: dict[str, Any]) -> str:
    keys = ("train_loss", "test_loss", "top1", "top5", "miou", "pixel_acc", "epoch_time_s", "images_per_s")
    return ", ".join(f"{k} {record[k]:.4g}" for k in keys if k in record)


__all__ = ["TrainConfig", "TrainingDiverged", "train", "Trainer", "MASK_SAMPLES_FILE", "display_images", "lr_factor", "warmup_iterations", "config_fingerprint", "build_network",
           "confusion_matrix", "segmentation_metrics", "topk_correct", "seed_everything"]
