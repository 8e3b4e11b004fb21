"""Training images/s of one grid cell under CPU levers: channels_last, batch size, threads, data in tensors, compile.

Builds the cell's model and training data as `vtbench launch` would (`bench.measure.train`,
`bench.measure.data`), then times optimizer steps (forward, loss, backward, clip, SGD/AdamW step)
for every combination of the levers asked for. Variants run round-robin, one round each in turn,
so a load change on the machine spreads over all of them; each row gives the median images/s over
rounds, the spread (min-max), and the load average at the start and end of the run.

Levers:
- `channels_last`: model and batches in NHWC (`torch.channels_last`).
- `tensors`: the batches are drawn from the data set materialised once as tensors (one index per
  batch, as `TensorImageDataset` allows) instead of a `DataLoader` calling `__getitem__` per image;
  the time to materialise is reported apart.
- `compile`: `torch.compile(model)` (its compile time is reported apart, not in images/s).
- `--batch-sizes`, `--threads`: swept as given.

Example (run it on an idle machine; the numbers mean nothing on a loaded one):
    python scripts/bench_train_speed.py experiments/fashion_ablation.yaml --cell 0 \\
        --levers base,channels_last,tensors --batch-sizes 64,128 --threads 2 --out results/train_speed
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from bench.core.errors import UsageError
from bench.measure.data import IGNORE_INDEX, build_dataset, resolve_task
from bench.measure.train import TrainConfig, build_network
from bench.pipeline.grid import load_grid

log = logging.getLogger("bench_train_speed")
LEVERS = ("base", "channels_last", "tensors", "compile")


def pick_cell(grid_path: str, which: str) -> dict[str, Any]:
    """The config of the cell at index `which`, or of the cell whose id starts with `which`."""
    cells = load_grid(grid_path).cells
    if which.isdigit() and int(which) < len(cells):
        return cells[int(which)].config
    matches = [c for c in cells if c.cell_id.startswith(which)]
    if len(matches) != 1:
        raise UsageError(f"--cell {which!r} names {len(matches)} of the grid's {len(cells)} cells; "
                         "give an index or a unique id prefix")
    return matches[0].config


class Variant:
    """One lever combination: builds its model, optimizer and batches, and times `steps` steps."""

    def __init__(self, cell: dict[str, Any], lever: str, batch: int, threads: int):
        self.cell, self.lever, self.batch, self.threads = cell, lever, batch, threads
        self.cfg = TrainConfig.from_dict({**cell.get("train", {}), "batch_size": batch, "threads": threads})
        torch.manual_seed(self.cfg.seed)
        self.model = build_network(cell["model"], dict(cell.get("model_args", {})))
        task = resolve_task(self.cfg.dataset, getattr(self.model, "task", "cls"))
        self.data = build_dataset(self.cfg.dataset, "train", root=self.cfg.data_root, input_size=cell["input_size"],
                                  task=task, **self.cfg.dataset_args)
        self.criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX) if task == "seg" else nn.CrossEntropyLoss()
        self.memory = torch.channels_last if lever == "channels_last" else torch.contiguous_format
        self.model.to(memory_format=self.memory).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr, momentum=self.cfg.momentum,
                                         weight_decay=self.cfg.weight_decay)
        self.setup_s = self._prepare()

    def _prepare(self) -> float:
        tic = time.perf_counter()
        if self.lever == "tensors":
            pairs = [self.data[i] for i in range(len(self.data))]
            self.images = torch.stack([p[0] for p in pairs])
            self.targets = torch.stack([torch.as_tensor(p[1]) for p in pairs])
        if self.lever == "compile":
            self.model = torch.compile(self.model)
            self._step(*next(iter(self._batches(1))))  # compiles forward and backward
        return time.perf_counter() - tic

    def _batches(self, count: int):
        if self.lever == "tensors":
            for _ in range(count):
                index = torch.randint(len(self.targets), (self.batch,))
                yield self.images[index], self.targets[index]
            return
        loader = DataLoader(self.data, batch_size=self.batch, shuffle=True, drop_last=True,
                            num_workers=self.cfg.workers)
        yield from itertools.islice(itertools.cycle(loader), count)

    def _step(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        logits = self.model(images.contiguous(memory_format=self.memory))
        if logits.dim() == 4 and logits.shape[-2:] != targets.shape[-2:]:
            logits = nn.functional.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
        loss = self.criterion(logits, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.clip_grad_norm:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
        self.optimizer.step()

    def images_per_s(self, warmup: int, steps: int) -> float:
        """Images per second over `steps` timed steps after `warmup` untimed ones (data time included)."""
        torch.set_num_threads(self.threads)
        for batch in self._batches(warmup):
            self._step(*batch)
        tic = time.perf_counter()
        for batch in self._batches(steps):
            self._step(*batch)
        return steps * self.batch / (time.perf_counter() - tic)


def run(cell: dict[str, Any], levers: list[str], batches: list[int], threads: list[int], rounds: int,
        warmup: int, steps: int) -> list[dict[str, Any]]:
    """Round-robin timing of every (lever, batch, threads) variant; one row per variant."""
    variants = [Variant(cell, lever, b, t) for lever, b, t in itertools.product(levers, batches, threads)]
    samples: list[list[float]] = [[] for _ in variants]
    for r in range(rounds):
        for variant, seen in zip(variants, samples):
            seen.append(variant.images_per_s(warmup, steps))
            log.info("round %d/%d %s batch %d threads %d: %.1f images/s", r + 1, rounds, variant.lever,
                     variant.batch, variant.threads, seen[-1])
    return [{"lever": v.lever, "batch_size": v.batch, "threads": v.threads, "images_per_s": s,
             "images_per_s_median": statistics.median(s), "setup_s": v.setup_s} for v, s in zip(variants, samples)]


def markdown(cell: dict[str, Any], rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    """The rows as a table, each against the `base` row of the same batch size and threads."""
    base = {(r["batch_size"], r["threads"]): r["images_per_s_median"] for r in rows if r["lever"] == "base"}
    lines = [f"Training images/s of {cell['model']} {cell.get('model_args', {})} at {cell['input_size']}, "
             f"load average {env['load_start'][0]:.2f} -> {env['load_end'][0]:.2f}, torch {torch.__version__}", "",
             "| lever | batch | threads | images/s (median) | min-max | vs base | set-up s |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in rows:
        ref = base.get((r["batch_size"], r["threads"]))
        ratio = f"{r['images_per_s_median'] / ref:.2f}x" if ref else "-"
        lines.append(f"| {r['lever']} | {r['batch_size']} | {r['threads']} | {r['images_per_s_median']:.1f} | "
                     f"{min(r['images_per_s']):.1f}-{max(r['images_per_s']):.1f} | {ratio} | {r['setup_s']:.1f} |")
    return "\n".join(lines) + "\n"


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def _levers(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in LEVERS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"levers are {', '.join(LEVERS)} (got {text!r})")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", help="grid file, e.g. experiments/fashion_ablation.yaml")
    parser.add_argument("--cell", default="0", help="cell index in the grid or a unique id prefix (default 0)")
    parser.add_argument("--levers", type=_levers, default=["base", "channels_last", "tensors"],
                        help=f"comma-separated, from {', '.join(LEVERS)} (default base,channels_last,tensors)")
    parser.add_argument("--batch-sizes", type=_int_list, default=None, help="default: the cell's batch size")
    parser.add_argument("--threads", type=_int_list, default=[2], help="comma-separated (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per variant (default 3)")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps before each round (default 3)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round (default 10)")
    parser.add_argument("--out", type=Path, default=None, help="folder for train_speed.json and train_speed.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        cell = pick_cell(args.grid, args.cell)
        batches = args.batch_sizes or [int(cell.get("train", {}).get("batch_size", TrainConfig().batch_size))]
        env = {"load_start": os.getloadavg()}
        rows = run(cell, args.levers, batches, args.threads, args.rounds, args.warmup_steps, args.steps)
    except UsageError as exc:
        print(f"bench_train_speed: error: {exc}", file=sys.stderr)
        return 2
    env["load_end"] = os.getloadavg()
    text = markdown(cell, rows, env)
    sys.stdout.write(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "train_speed.json").write_text(json.dumps({"cell": cell, "env": env, "rows": rows}, indent=1) + "\n")
        (args.out / "train_speed.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
